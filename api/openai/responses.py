"""The Responses API (POST /v1/responses) as a translation onto chat completions.

A request becomes a chat completion request — `input` items become chat messages,
`instructions` the first system message, `text.format` the response format,
`max_output_tokens` max_completion_tokens — and runs through the same parser, tool
machinery and scheduler as /v1/chat/completions. Errors name the Responses field
(`input`, `text.format`, `max_output_tokens`), not the chat field they were checked as.

`previous_response_id` continues a stored conversation: the chain of stored turns
(api/response_store.py) is replayed as the history before this request's input. As at
OpenAI, the earlier turns' `instructions` are not carried over; this request's apply.

Streams are typed SSE events (`event: <type>` and `data: {..., "sequence_number": n}`):
response.created, response.in_progress, then per output item output_item.added,
content_part.added, output_text.delta…, output_text.done, content_part.done,
output_item.done (function calls: function_call_arguments.delta/.done), and last
response.completed (response.incomplete when max_output_tokens cut it, or an `error`
event and response.failed when generation failed). There is no `[DONE]`.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterator, Sequence
from contextlib import closing
from dataclasses import dataclass, field
from typing import Any, Literal

import msgspec

from api.errors import ApiError, BadRequest, NotFound, NotSupported
from api.framing import SSE_KEEPALIVE, describe_error
from api.generation.fields import GenerationExtras
from api.generation.runs import Choice, Collected, total_usage
from api.models.registry import TextModel
from api.openai import bodies as m
from api.openai import protocol
from api.openai import response_bodies as r
from api.response_store import ResponseStore, StoredResponse
from api.settings import ServerSettings
from api.tools.plan import NO_PARAMETERS
from api.wire import TEXT_ONLY, encode
from runtime.events import Delta, Event, Finish, KeepAlive, TokenLogprobs
from runtime.request import CONTEXT_TRUNCATE

# Chat fields the request was checked as → the Responses field a client sent.
_PARAMS = {
    "messages": "input",
    "response_format": "text.format",
    "max_completion_tokens": "max_output_tokens",
    "max_tokens": "max_output_tokens",
    "top_logprobs": "top_logprobs",
}
_TOOL_NAME = re.compile(r"^[a-zA-Z0-9_.-]{1,64}$")
_TEXT_PARTS = ("input_text", "output_text")
_ID_PREFIXES = {"message": "msg_", "function_call": "fc_", "function_call_output": "fco_"}


@dataclass
class ResponsePlan:
    """A validated request: the chat plan it runs as, and what is stored and echoed."""

    body: r.ResponseRequest
    chat: protocol.Plan
    response_id: str
    created: int
    # This turn's input items (ids filled in) and the chat messages they became.
    input_items: list[dict[str, Any]]
    turn_messages: list[m.ChatMessage]
    logprobs: bool
    new_id: Callable[[str], str]
    output: list[r.OutputItem] = field(default_factory=list)


def _renamed(exc: ApiError) -> ApiError:
    """An error found while checking the chat request, made anew with the Responses field names."""
    param = exc.param
    if param and param.startswith("response_format.json_schema."):  # json_schema's fields sit in text.format itself
        return exc.about("text.format." + param.removeprefix("response_format.json_schema."))
    if param:
        head, dot, rest = param.partition(".")
        base, bracket, index = head.partition("[")
        if base in _PARAMS:
            return exc.about(_PARAMS[base] + (bracket + index if bracket else "") + dot + rest, exc.message.replace(f"'{base}'", f"'{_PARAMS[base]}'"))
    return exc


def _part_text(parts: str | list[r.InputPart] | None, param: str) -> str:
    if parts is None or isinstance(parts, str):
        return parts or ""
    texts = []
    for index, part in enumerate(parts):
        if part.type in _TEXT_PARTS:
            texts.append(part.text or "")
        elif part.type == "refusal":
            raise NotSupported("an earlier refusal cannot be rendered by the chat template; send it as output_text", param=f"{param}[{index}]")
        else:
            raise NotSupported(f"content parts of type {part.type!r} are not supported: {TEXT_ONLY}", param=f"{param}[{index}].type")
    return "\n".join(texts)


def input_messages(value: str | list[r.InputItem] | None, new_id: Callable[[str], str]) -> tuple[list[m.ChatMessage], list[dict[str, Any]]]:
    """`input` as chat messages, and as the items GET .../input_items lists (each with an id).

    A function_call item joins the assistant message before it (calls made in one turn),
    a function_call_output becomes a tool message answering its call_id.
    """
    if value is None:
        return [], []
    if isinstance(value, str):
        listed = {"type": "message", "id": new_id("msg_"), "role": "user", "content": [{"type": "input_text", "text": value}], "status": "completed"}
        return [m.ChatMessage(role="user", content=value)], [listed]
    messages: list[m.ChatMessage] = []
    items: list[dict[str, Any]] = []
    for index, item in enumerate(value):
        param = f"input[{index}]"
        kind = item.type or "message"
        if kind == "message":
            if item.role is None:
                raise BadRequest("a message item needs a 'role'", param=f"{param}.role")
            messages.append(m.ChatMessage(role=item.role, content=_part_text(item.content, f"{param}.content")))
        elif kind == "function_call":
            if not item.call_id or not item.name:
                raise BadRequest("a function_call item needs 'call_id' and 'name'", param=f"{param}.call_id" if not item.call_id else f"{param}.name")
            call = m.ToolCall(id=item.call_id, function=m.FunctionCall(name=item.name, arguments=item.arguments or ""))
            last = messages[-1] if messages else None
            if last is not None and last.role == "assistant":  # the turn's words, or its earlier calls
                last.tool_calls = [*(last.tool_calls or ()), call]
            else:
                messages.append(m.ChatMessage(role="assistant", content=None, tool_calls=[call]))
        elif kind == "function_call_output":
            if not item.call_id:
                raise BadRequest("a function_call_output item needs the 'call_id' it answers", param=f"{param}.call_id")
            messages.append(m.ChatMessage(role="tool", content=_part_text(item.output, f"{param}.output"), tool_call_id=item.call_id))
        else:
            raise NotSupported(f"input items of type {kind!r} are not supported: messages, function_call and function_call_output are", param=f"{param}.type")
        listed = {k: v for k, v in msgspec.to_builtins(item).items() if v is not None}
        listed["type"] = kind
        listed.setdefault("id", new_id(_ID_PREFIXES[kind]))
        if kind == "message" and isinstance(item.content, str):
            listed["content"] = [{"type": "output_text" if item.role == "assistant" else "input_text", "text": item.content}]
        items.append(listed)
    return messages, items


def _tools(body: r.ResponseRequest) -> tuple[list[m.ToolDefinition] | None, Any]:
    """`tools` and `tool_choice` in chat terms; hosted tools are refused by name."""
    definitions = None
    if body.tools is not None:
        definitions = []
        for index, tool in enumerate(body.tools):
            if tool.type != "function":
                raise NotSupported(f"tools of type {tool.type!r} are hosted tools this server does not have; only 'function' tools are", param=f"tools[{index}].type")
            if tool.name is None or not _TOOL_NAME.match(tool.name):
                raise BadRequest("a function tool needs a 'name' of letters, digits, '_', '.' or '-' (at most 64)", param=f"tools[{index}].name")
            parameters = tool.parameters if isinstance(tool.parameters, dict) else None
            definitions.append(m.ToolDefinition(function=m.FunctionDefinition(name=tool.name, description=tool.description, parameters=parameters, strict=tool.strict)))
    choice: Any = body.tool_choice
    if isinstance(choice, r.FunctionChoice):
        if choice.type != "function":
            raise NotSupported(f"tool_choice of type {choice.type!r} is not supported: 'none', 'auto', 'required' or a function", param="tool_choice.type")
        if not choice.name:
            raise BadRequest("a function tool_choice needs the function's 'name'", param="tool_choice.name")
        choice = m.NamedToolChoice(function=m.FunctionName(name=choice.name))
    return definitions, choice


def _format(body: r.ResponseRequest) -> m.ResponseFormat | None:
    spec = body.text.format if body.text is not None else None
    if spec is None or spec.type == "text":
        return None
    if spec.type == "json_object":
        return m.ResponseFormat(type="json_object")
    if spec.schema is None:
        raise BadRequest("text.format of type json_schema needs a 'schema'", param="text.format.schema")
    return m.ResponseFormat(type="json_schema", json_schema=m.JsonSchemaFormat(name=spec.name, schema=spec.schema, strict=spec.strict, description=spec.description))


def history(store: ResponseStore, previous_id: str, limit: int) -> list[m.ChatMessage]:
    """The stored conversation `previous_id` ends, as chat messages."""
    try:
        turns = store.chain(previous_id, limit)
    except LookupError as exc:
        missing = exc.args[0]
        if missing == previous_id:
            raise NotFound(f"no stored response with id {previous_id!r} (it was never stored, was deleted, or expired)", param="previous_response_id") from None
        raise NotFound(
            f"response {previous_id!r} continues {missing!r}, which is no longer stored (deleted or expired): the conversation cannot be rebuilt",
            param="previous_response_id",
        ) from None
    except ValueError:
        raise BadRequest(f"the conversation of {previous_id!r} has more than {limit} turns", param="previous_response_id") from None
    return [msgspec.convert(message, m.ChatMessage) for turn in turns for message in turn.messages]


def parse(
    body: r.ResponseRequest, generator: TextModel, settings: ServerSettings, store: ResponseStore, new_id: Callable[[str], str], created: int
) -> ResponsePlan:
    """A /v1/responses body → the chat plan it runs as."""
    if body.input is None or body.input == []:
        raise BadRequest("'input' is required: a string or a list of input items", param="input")
    turn, items = input_messages(body.input, new_id)
    earlier = history(store, body.previous_response_id, settings.max_messages) if body.previous_response_id else []
    system = [m.ChatMessage(role="system", content=body.instructions)] if body.instructions else []
    logprobs = body.top_logprobs is not None or r.INCLUDE_LOGPROBS in (body.include or ())
    tools, tool_choice = _tools(body)
    extras = {name: getattr(body, name) for name in GenerationExtras.__struct_fields__}
    if body.truncation == "auto" and extras["context_length_exceeded_behavior"] is None:
        extras["context_length_exceeded_behavior"] = CONTEXT_TRUNCATE
    chat = m.ChatCompletionRequest(
        **extras,
        model=body.model,
        messages=[*system, *earlier, *turn],
        max_completion_tokens=body.max_output_tokens,
        stream=body.stream,
        logprobs=logprobs or None,
        top_logprobs=body.top_logprobs,
        tools=tools,
        tool_choice=tool_choice,
        parallel_tool_calls=body.parallel_tool_calls,
        response_format=_format(body),
        user=body.user,
    )
    try:
        plan = protocol.parse_chat(chat, generator, settings)
    except ApiError as exc:
        raise _renamed(exc) from None
    return ResponsePlan(body, plan, new_id("resp_"), created, items, turn, logprobs, new_id)


# -- the response object -----------------------------------------------------------------------


def _tool_replies(body: r.ResponseRequest) -> list[r.FunctionToolReply]:
    return [
        r.FunctionToolReply(name=t.name or "", description=t.description, parameters=t.parameters if t.parameters is not None else dict(NO_PARAMETERS), strict=bool(t.strict))
        for t in body.tools or ()
    ]


def _text_reply(body: r.ResponseRequest) -> r.TextConfigReply:
    spec = body.text.format if body.text is not None else None
    if spec is None or spec.type != "json_schema":
        return r.TextConfigReply(format=r.TextFormatReply(type=spec.type if spec is not None else "text"))
    return r.TextConfigReply(
        format=r.TextFormatReply(
            type="json_schema", name=spec.name or "response", schema=spec.schema, strict=bool(spec.strict),
            **({"description": spec.description} if spec.description is not None else {}),
        )
    )


def _choice_reply(body: r.ResponseRequest) -> Any:
    choice = body.tool_choice
    if isinstance(choice, r.FunctionChoice):
        return r.FunctionChoiceReply(name=choice.name or "")
    return choice or "auto"


def response_object(
    plan: ResponsePlan, status: str, usage: r.ResponseUsage | None = None, incomplete: bool = False,
    error: r.ResponseError | None = None, completed_at: int | None = None,
) -> r.Response:
    body = plan.body
    sampling = plan.chat.choices[0].request.sampling
    return r.Response(
        id=plan.response_id,
        created_at=plan.created,
        status=status,  # type: ignore[arg-type]
        error=error,
        incomplete_details=r.IncompleteDetails(reason="max_output_tokens") if incomplete else None,
        instructions=body.instructions,
        max_output_tokens=body.max_output_tokens,
        model=body.model,
        output=list(plan.output),
        parallel_tool_calls=bool(plan.chat.tools.parallel) if plan.chat.tools is not None else bool(body.parallel_tool_calls),
        previous_response_id=body.previous_response_id,
        prompt_cache_key=body.prompt_cache_key,
        reasoning=r.ReasoningReply(),
        safety_identifier=body.safety_identifier,
        store=body.store is not False,
        temperature=sampling.temperature,
        text=_text_reply(body),
        tool_choice=_choice_reply(body),
        tools=_tool_replies(body),
        top_logprobs=body.top_logprobs or 0,
        top_p=sampling.top_p,
        truncation=body.truncation or "disabled",
        usage=usage,
        user=body.user,
        metadata=dict(body.metadata or {}),
        completed_at=completed_at,
    )


def _usage(choice: Choice, finish: Finish) -> r.ResponseUsage:
    usage = total_usage([(choice, finish)])
    return r.ResponseUsage(
        input_tokens=usage.prompt_tokens,
        input_tokens_details=r.InputTokensDetails(cached_tokens=usage.cached_tokens),
        output_tokens=usage.completion_tokens,
        output_tokens_details=r.OutputTokensDetails(),
        total_tokens=usage.total_tokens,
    )


def _logprobs(plan: ResponsePlan, records: Sequence[TokenLogprobs]) -> list[m.TokenLogprob]:
    if not plan.logprobs or plan.chat.tools is not None:
        return []
    return protocol.chat_logprobs(records).content


def _assistant_message(items: Sequence[r.OutputItem]) -> m.ChatMessage:
    """This turn's output as the assistant message a later turn replays."""
    text = "".join(part.text for item in items if isinstance(item, r.OutputMessage) for part in item.content)
    calls = [m.ToolCall(id=item.call_id, function=m.FunctionCall(name=item.name, arguments=item.arguments)) for item in items if isinstance(item, r.FunctionCallItem)]
    return m.ChatMessage(role="assistant", content=text if text or not calls else None, tool_calls=calls or None)


def _save(store: ResponseStore, plan: ResponsePlan, response: r.Response, now: float) -> None:
    if plan.body.store is False:
        return
    messages = [*plan.turn_messages, _assistant_message(plan.output)]
    record = StoredResponse(
        plan.response_id, now, plan.body.previous_response_id, msgspec.to_builtins(response), plan.input_items,
        [msgspec.to_builtins(message) for message in messages],
    )
    store.put(record)


def finished(plan: ResponsePlan, result: Collected, store: ResponseStore, now: float) -> r.Response:
    """The whole answer of a non-streamed request (stored unless `store` is false)."""
    text, records = result.text, [lp for d in result.deltas for lp in d.logprobs]
    incomplete = result.finish.reason == "length"
    item_status: Literal["completed", "incomplete"] = "incomplete" if incomplete else "completed"
    content, calls = text, []
    if plan.chat.tools is not None:
        reader = plan.chat.tools.reader()
        reader.feed(text)
        reader.finish()
        content, calls = reader.content, reader.calls
    if content or not calls:
        message = r.OutputText(text=content, annotations=[], logprobs=_logprobs(plan, records))
        plan.output.append(r.OutputMessage(id=plan.new_id("msg_"), status=item_status, content=[message]))
    for call in calls:
        plan.output.append(r.FunctionCallItem(id=plan.new_id("fc_"), call_id=protocol.call_id(), name=call.name, arguments=call.arguments, status="completed"))
    status = "incomplete" if incomplete else "completed"
    response = response_object(plan, status, _usage(result.choice, result.finish), incomplete, completed_at=int(now))
    _save(store, plan, response, now)
    return response


# -- streaming -------------------------------------------------------------------------------


def sse_event(event: Any) -> bytes:
    """One typed SSE event: its type as the SSE event name, the whole event as data."""
    return b"event: " + event.type.encode() + b"\ndata: " + encode(event) + b"\n\n"


class _StreamWriter:
    """Turns generated text into output items and their events, in order, with sequence numbers."""

    def __init__(self, plan: ResponsePlan) -> None:
        self.plan = plan
        self.sequence = 0
        self.message: r.OutputMessage | None = None
        self.calls: dict[int, r.FunctionCallItem] = {}
        self.logprobs: list[m.TokenLogprob] = []

    def _next(self) -> int:
        self.sequence += 1
        return self.sequence - 1

    def whole(self, kind: str, response: r.Response) -> bytes:
        return sse_event(r.ResponseEvent(type=kind, sequence_number=self._next(), response=response))

    def _index(self, item: r.OutputItem) -> int:
        return next(i for i, other in enumerate(self.plan.output) if other is item)

    def text(self, text: str, records: Sequence[TokenLogprobs]) -> Iterator[bytes]:
        logprobs = _logprobs(self.plan, records)
        if not text and not logprobs:
            return
        if self.message is None:
            yield from self._open_message()
        assert self.message is not None
        part = self.message.content[0]
        part.text += text
        part.logprobs.extend(logprobs)
        yield sse_event(r.TextDeltaEvent(
            sequence_number=self._next(), item_id=self.message.id, output_index=self._index(self.message), content_index=0, delta=text, logprobs=logprobs,
        ))

    def _open_message(self) -> Iterator[bytes]:
        self.message = r.OutputMessage(id=self.plan.new_id("msg_"), status="in_progress", content=[])
        self.plan.output.append(self.message)
        index = self._index(self.message)
        yield sse_event(r.ItemEvent(type="response.output_item.added", sequence_number=self._next(), output_index=index, item=self.message))
        self.message.content.append(r.OutputText(text="", annotations=[], logprobs=[]))
        empty = r.OutputText(text="", annotations=[], logprobs=[])
        yield sse_event(r.PartEvent(
            type="response.content_part.added", sequence_number=self._next(), item_id=self.message.id, output_index=index, content_index=0, part=empty,
        ))

    def close_message(self, status: str) -> Iterator[bytes]:
        message = self.message
        if message is None:
            return
        self.message = None
        index, part = self._index(message), message.content[0]
        yield sse_event(r.TextDoneEvent(
            sequence_number=self._next(), item_id=message.id, output_index=index, content_index=0, text=part.text, logprobs=part.logprobs,
        ))
        yield sse_event(r.PartEvent(type="response.content_part.done", sequence_number=self._next(), item_id=message.id, output_index=index, content_index=0, part=part))
        message.status = status  # type: ignore[assignment]
        yield sse_event(r.ItemEvent(type="response.output_item.done", sequence_number=self._next(), output_index=index, item=message))

    def update(self, update: Any) -> Iterator[bytes]:
        """What the tool reader found in a piece of text: words, calls begun, argument text, calls ended."""
        if update.text:
            yield from self.text(update.text, [])
        for call in update.started:
            yield from self.close_message("completed")
            item = r.FunctionCallItem(id=self.plan.new_id("fc_"), call_id=protocol.call_id(), name=call.name, arguments="", status="in_progress")
            self.calls[call.index] = item
            self.plan.output.append(item)
            yield sse_event(r.ItemEvent(type="response.output_item.added", sequence_number=self._next(), output_index=self._index(item), item=item))
        for index, fragment in update.arguments:
            item = self.calls[index]
            item.arguments += fragment
            yield sse_event(r.ArgumentsDeltaEvent(sequence_number=self._next(), item_id=item.id, output_index=self._index(item), delta=fragment))
        for call in update.completed:
            yield from self._close_call(self.calls[call.index], "completed")

    def _close_call(self, item: r.FunctionCallItem, status: str) -> Iterator[bytes]:
        if item.status != "in_progress":
            return
        index = self._index(item)
        yield sse_event(r.ArgumentsDoneEvent(sequence_number=self._next(), item_id=item.id, output_index=index, name=item.name, arguments=item.arguments))
        item.status = status  # type: ignore[assignment]
        yield sse_event(r.ItemEvent(type="response.output_item.done", sequence_number=self._next(), output_index=index, item=item))

    def close_all(self, status: str) -> Iterator[bytes]:
        if not self.plan.output:  # nothing was generated: an empty message, as the whole answer has
            yield from self._open_message()
        yield from self.close_message(status)
        for item in self.calls.values():
            yield from self._close_call(item, status)

    def error(self, exc: BaseException) -> bytes:
        status, message, param, code = describe_error(exc)
        return sse_event(r.ErrorEvent(sequence_number=self._next(), code=code, message=message, param=param))


def stream(
    plan: ResponsePlan, events: Iterator[tuple[Choice, Event]], store: ResponseStore, clock: Callable[[], float], log: logging.Logger
) -> Iterator[bytes]:
    """The SSE events of a streamed response; the finished response is stored before the last event."""
    writer = _StreamWriter(plan)
    reader = plan.chat.tools.reader() if plan.chat.tools is not None else None
    yield writer.whole("response.created", response_object(plan, "in_progress"))
    yield writer.whole("response.in_progress", response_object(plan, "in_progress"))
    try:
        with closing(events):  # type: ignore[type-var]
            for choice, event in events:
                if isinstance(event, KeepAlive):
                    yield SSE_KEEPALIVE
                elif isinstance(event, Delta):
                    if reader is None:
                        yield from writer.text(event.text, event.logprobs)
                    else:
                        yield from writer.update(reader.feed(event.text))
                elif isinstance(event, Finish):
                    if reader is not None:
                        yield from writer.update(reader.finish())
                    incomplete = event.reason == "length"
                    yield from writer.close_all("incomplete" if incomplete else "completed")
                    now = clock()
                    response = response_object(plan, "incomplete" if incomplete else "completed", _usage(choice, event), incomplete, completed_at=int(now))
                    _save(store, plan, response, now)
                    yield writer.whole("response.incomplete" if incomplete else "response.completed", response)
    except Exception as exc:
        log.error("response stream ended by an error: %s", exc, exc_info=not isinstance(exc, ApiError))
        yield writer.error(exc)
        status, message, _, code = describe_error(exc)
        yield writer.whole("response.failed", response_object(plan, "failed", error=r.ResponseError(code=code or "server_error", message=message)))


# -- stored responses ------------------------------------------------------------------------


def stored(store: ResponseStore, response_id: str) -> StoredResponse:
    record = store.get(response_id)
    if record is None:
        raise NotFound(f"no stored response with id {response_id!r} (it was never stored, was deleted, or expired)")
    return record


def input_item_list(record: StoredResponse, order: str, limit: int, after: str | None) -> r.InputItemList:
    """GET /v1/responses/{id}/input_items: newest first unless order is asc, paged by `after`."""
    items = list(record.input_items)
    if order == "desc":
        items.reverse()
    if after is not None:
        ids = [item.get("id") for item in items]
        if after not in ids:
            raise BadRequest(f"'after' names {after!r}, which is not an input item of this response", param="after")
        items = items[ids.index(after) + 1 :]
    page = items[:limit]
    return r.InputItemList(
        data=page, first_id=page[0].get("id") if page else None, last_id=page[-1].get("id") if page else None, has_more=len(items) > limit,
    )
