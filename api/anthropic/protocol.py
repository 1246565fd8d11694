"""Anthropic's Messages API as a translation onto chat completions, and its answers.

A /v1/messages body becomes a chat completion request — `system` the first system message,
text blocks message content, `tool_use` blocks an assistant's tool calls, `tool_result`
blocks tool messages answering them, `tools[].input_schema` function parameters,
`tool_choice` auto/any/tool/none as auto/required/a named function/none,
`output_config.format` a JSON Schema response format, `stop_sequences` stop strings — and
runs through the same parser, tool machinery (constrained decoding) and scheduler as
/v1/chat/completions. Errors name the Messages field (`max_tokens`, `stop_sequences`,
`tools[0].input_schema`), not the chat field it was checked as.

Differences from the chat route, each Anthropic's own behaviour:

- `max_tokens` is required and is an upper bound: a completion that runs out of context
  first ends with stop_reason `model_context_window_exceeded` (a prompt that leaves no room
  is a 400 "prompt is too long").
- A final assistant message is a prefill: the answer continues from its text (the prefill
  is not repeated in the answer). Not together with tools or an output format, whose
  grammar starts the answer afresh.
- Several tool calls in one answer only when `disable_parallel_tool_use` is explicitly
  false: small models given the choice repeat one call until max_tokens (the chat route's
  `parallel_tool_calls` default is the same).
- `usage.input_tokens` counts the prompt tokens evaluated; those reused from the prefix
  cache are `cache_read_input_tokens`, as Anthropic splits them.

Streams are typed SSE events: message_start, then per content block content_block_start,
content_block_delta (`text_delta`, or `input_json_delta` for a tool call's arguments as they
are written) and content_block_stop; then message_delta (stop_reason, final usage) and
message_stop. Keep-alives are `ping` events; a failure after the first byte is an `error` event.
"""

from __future__ import annotations

import json
import logging
import secrets
from collections.abc import Iterator
from contextlib import closing
from dataclasses import dataclass, replace
from typing import Any

import api.openai.bodies as m
import api.openai.protocol as protocol
from api.anthropic import bodies as a
from api.errors import ApiError, BadRequest, NotSupported
from api.framing import describe_error
from api.generation.runs import Choice, Collected
from api.models.registry import ModelInfo, TextModel
from api.settings import ServerSettings
from api.tools.readers import ReaderUpdate
from api.wire import TEXT_ONLY, encode
from runtime.errors import ContextLengthError
from runtime.events import FINISH_LENGTH, Delta, Event, Finish, KeepAlive
from runtime.manifest import TASK_TEXT_GENERATION

# Anthropic's error `type` for each status we answer with.
ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    405: "invalid_request_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    503: "overloaded_error",
    504: "timeout_error",
}

# Chat fields the request was checked as → the Messages field a client sent.
_PARAMS = {
    "max_completion_tokens": "max_tokens",
    "stop": "stop_sequences",
    "response_format": "output_config.format",
    "tool_choice": "tool_choice",
}


def error_body(status: int, message: str, param: str | None = None, request_id: str | None = None) -> a.ErrorBody:
    """Anthropic's error object; its message starts with the field at fault (Anthropic's has no `param`)."""
    kind = ERROR_TYPES.get(status, "api_error" if status >= 500 else "invalid_request_error")
    if param and param not in message:
        message = f"{param}: {message}"
    return a.ErrorBody(error=a.ErrorDetail(type=kind, message=message), request_id=request_id if request_id else a.UNSET)


def _renamed(exc: ApiError) -> ApiError:
    param = exc.param
    if not param:
        return exc
    head, dot, rest = param.partition(".")
    base, bracket, index = head.partition("[")
    if base == "tools" and rest.startswith(("function.parameters", "parameters")):
        return exc.about(f"tools{bracket}{index}.input_schema" + rest.removeprefix("function.").removeprefix("parameters"))
    if base == "tools" and rest.startswith("function."):
        return exc.about(f"tools{bracket}{index}." + rest.removeprefix("function."))
    if base == "response_format":
        return exc.about("output_config.format.schema")
    if base in _PARAMS:
        return exc.about(_PARAMS[base] + (bracket + index if bracket else "") + dot + rest, exc.message.replace(f"'{base}'", f"'{_PARAMS[base]}'"))
    return exc


# -- the request -------------------------------------------------------------------------------


def _texts(blocks: str | list[Any] | None, param: str) -> str:
    """Text content: a string, or text blocks joined; any other block is refused by its place."""
    if blocks is None or isinstance(blocks, str):
        return blocks or ""
    texts = []
    for index, block in enumerate(blocks):
        if isinstance(block, a.TextBlock):
            texts.append(block.text)
        else:
            raise _unreadable(block, f"{param}[{index}]")
    return "\n".join(texts)


def _unreadable(block: Any, param: str) -> ApiError:
    kind = type(block).__struct_config__.tag
    why = a.UNREADABLE_BLOCKS.get(type(block), TEXT_ONLY)
    return NotSupported(f"content blocks of type {kind!r} are not supported here: {why}", param=f"{param}.type")


def _system(body: a.CountTokensRequest) -> list[m.ChatMessage]:
    text = _texts(body.system, "system")
    return [m.ChatMessage(role="system", content=text)] if text else []


def chat_messages(messages: list[a.InputMessage]) -> list[m.ChatMessage]:
    """Anthropic's turns as chat messages: a user turn's tool results first (one tool message
    each, in order), then its text; an assistant turn's text with its tool calls."""
    result: list[m.ChatMessage] = []
    for index, message in enumerate(messages):
        param = f"messages[{index}].content"
        if isinstance(message.content, str):
            result.append(m.ChatMessage(role=message.role, content=message.content))
            continue
        texts: list[str] = []
        calls: list[m.ToolCall] = []
        for number, block in enumerate(message.content):
            place = f"{param}[{number}]"
            if isinstance(block, a.TextBlock):
                texts.append(block.text)
            elif isinstance(block, a.ToolUseBlock):
                if message.role != "assistant":
                    raise BadRequest("tool_use blocks belong in assistant messages; answer them with tool_result blocks in the next user message", param=place)
                calls.append(m.ToolCall(id=block.id, function=m.FunctionCall(name=block.name, arguments=json.dumps(block.input, ensure_ascii=False))))
            elif isinstance(block, a.ToolResultBlock):
                if message.role != "user":
                    raise BadRequest("tool_result blocks belong in user messages", param=place)
                text = _texts(block.content, f"{place}.content")
                if block.is_error:
                    text = f"Error: {text}" if text else "Error"
                result.append(m.ChatMessage(role="tool", content=text, tool_call_id=block.tool_use_id))
            else:
                raise _unreadable(block, place)
        if texts or calls or not message.content:
            result.append(m.ChatMessage(role=message.role, content="\n".join(texts) if texts or not calls else None, tool_calls=calls or None))
    return result


def _tools(body: a.CountTokensRequest) -> tuple[list[m.ToolDefinition] | None, Any, bool | None]:
    """`tools` and `tool_choice` in chat terms, and whether parallel calls were asked for."""
    definitions = None
    if body.tools is not None:
        definitions = []
        for index, tool in enumerate(body.tools):
            if tool.type not in (None, "custom"):
                raise NotSupported(
                    f"tools of type {tool.type!r} are server tools this server does not have; only client tools (with an input_schema) are",
                    param=f"tools[{index}].type",
                )
            if tool.input_schema is None:
                raise BadRequest("a client tool needs an 'input_schema'", param=f"tools[{index}].input_schema")
            definitions.append(m.ToolDefinition(function=m.FunctionDefinition(name=tool.name, description=tool.description, parameters=tool.input_schema, strict=tool.strict)))
    choice = body.tool_choice
    if choice is None:
        return definitions, None, None
    parallel = None if choice.disable_parallel_tool_use is None else not choice.disable_parallel_tool_use
    if choice.type == "tool":
        if not choice.name:
            raise BadRequest("a tool_choice of type 'tool' needs the tool's 'name'", param="tool_choice.name")
        return definitions, m.NamedToolChoice(function=m.FunctionName(name=choice.name)), parallel
    if choice.name is not None:
        raise BadRequest(f"'name' is only for a tool_choice of type 'tool' (this one is {choice.type!r})", param="tool_choice.name")
    return definitions, {"auto": "auto", "any": "required", "none": "none"}[choice.type], parallel


def _format(body: a.CountTokensRequest) -> m.ResponseFormat | None:
    spec = body.output_config.format if body.output_config is not None and body.output_config.format is not None else body.output_format
    if spec is None:
        return None
    return m.ResponseFormat(type="json_schema", json_schema=m.JsonSchemaFormat(name="output", schema=spec.schema))


@dataclass
class MessagePlan:
    """A validated request: the chat plan it runs as, and what the answer echoes."""

    body: a.MessagesRequest
    chat: protocol.Plan
    message_id: str
    max_tokens: int
    stop_sequences: tuple[str, ...]

    @property
    def choice(self) -> Choice:
        return self.chat.choices[0]


def _chat_request(body: a.CountTokensRequest, generator: TextModel, settings: ServerSettings) -> tuple[protocol.Plan, str]:
    """The chat plan of a body (max_tokens and sampling left to the caller), and its prefill text."""
    if body.model == "":
        raise BadRequest("'model' must name a served model", param="model")
    turns = chat_messages(body.messages)
    prefill = ""
    last = body.messages[-1]
    if last.role == "assistant" and turns and turns[-1].role == "assistant" and not turns[-1].tool_calls:
        prefill = str(turns.pop().content or "")
    tools, tool_choice, parallel = _tools(body)
    response_format = _format(body)
    if prefill and (tools or response_format is not None):
        raise NotSupported(
            "a final assistant message (prefill) together with tools or an output format is not supported: their grammar starts the answer afresh",
            param=f"messages[{len(body.messages) - 1}]",
        )
    if not turns:
        raise BadRequest("the messages hold nothing before the prefill: give at least one user message", param="messages")
    extras: dict[str, Any] = {}
    if isinstance(body, a.MessagesRequest):
        extras = {
            "temperature": body.temperature, "top_p": body.top_p, "top_k": body.top_k,
            "max_completion_tokens": body.max_tokens, "stop": body.stop_sequences, "stream": body.stream,
            "user": body.metadata.user_id if body.metadata is not None else None,
        }
    chat = m.ChatCompletionRequest(
        model=body.model,
        messages=[*_system(body), *turns],
        tools=tools,
        tool_choice=tool_choice,
        parallel_tool_calls=parallel,
        response_format=response_format,
        **extras,
    )
    try:
        return protocol.parse_chat(chat, generator, settings, lenient_tools=True), prefill
    except ApiError as exc:
        raise _renamed(exc) from None


def _with_prefill(plan: protocol.Plan, prefill: str, generator: TextModel) -> protocol.Plan:
    if not prefill:
        return plan
    extra = tuple(generator.tokenize(prefill, add_special_tokens=False))
    plan.choices = [replace(c, request=replace(c.request, prompt_ids=c.request.prompt_ids + extra)) for c in plan.choices]
    return plan


def parse(body: a.MessagesRequest, generator: TextModel, settings: ServerSettings, context_length: int, message_id: str) -> MessagePlan:
    """A /v1/messages body → the chat plan it runs as; max_tokens is clipped to the context left."""
    plan, prefill = _chat_request(body, generator, settings)
    plan = _with_prefill(plan, prefill, generator)
    prompt = len(plan.choices[0].request.prompt_ids)
    if prompt >= context_length:
        raise ContextLengthError(f"prompt is too long: {prompt} tokens > {context_length - 1} maximum", param="messages")
    room = min(body.max_tokens, context_length - prompt)
    plan.choices = [replace(c, request=replace(c.request, max_tokens=room)) for c in plan.choices]
    return MessagePlan(body, plan, message_id, body.max_tokens, tuple(s for s in body.stop_sequences or () if s))


def count_tokens(body: a.CountTokensRequest, generator: TextModel, settings: ServerSettings) -> a.TokenCount:
    plan, prefill = _chat_request(body, generator, settings)
    plan = _with_prefill(plan, prefill, generator)
    return a.TokenCount(input_tokens=len(plan.choices[0].request.prompt_ids))


def model_info(info: ModelInfo) -> a.ModelInfo:
    return a.ModelInfo(id=info.name, display_name=info.name, created_at=info.modified_at)


def model_list(infos: list[ModelInfo]) -> a.ModelList:
    """The models /v1/messages takes (text generation), in Anthropic's page shape (one page: has_more false)."""
    data = [model_info(info) for info in infos if info.task == TASK_TEXT_GENERATION]
    return a.ModelList(data=data, first_id=data[0].id if data else None, last_id=data[-1].id if data else None)


# -- the answer ------------------------------------------------------------------------------


def tool_use_id() -> str:
    return f"toolu_{secrets.token_urlsafe(18)}"


def _arguments(text: str) -> dict[str, Any]:
    """A call's arguments as the object Anthropic's `input` is; {} for arguments cut short by max_tokens."""
    try:
        value = json.loads(text) if text else {}
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def _stop(plan: MessagePlan, finish: Finish, called: bool) -> tuple[a.StopReason, str | None]:
    if finish.reason == FINISH_LENGTH:
        if finish.usage.completion_tokens < plan.max_tokens:
            return "model_context_window_exceeded", None
        return "max_tokens", None
    if called:
        return "tool_use", None
    if finish.stop_sequence is not None and finish.stop_sequence in plan.stop_sequences:
        return "stop_sequence", finish.stop_sequence
    return "end_turn", None


def _usage(finish: Finish) -> a.MessageUsage:
    usage = finish.usage
    return a.MessageUsage(
        input_tokens=usage.prompt_tokens - usage.cached_tokens, output_tokens=usage.completion_tokens, cache_read_input_tokens=usage.cached_tokens
    )


def message(plan: MessagePlan, result: Collected) -> a.Message:
    """The whole answer of a non-streamed request."""
    content: list[a.ContentReply] = []
    text, calls = result.text, []
    if plan.chat.tools is not None:
        reader = plan.chat.tools.reader()
        reader.feed(text)
        reader.finish()
        text, calls = reader.content, reader.calls
    if text or not calls:
        content.append(a.TextReply(text=text))
    content.extend(a.ToolUseReply(id=tool_use_id(), name=call.name, input=_arguments(call.arguments)) for call in calls)
    stop_reason, stop_sequence = _stop(plan, result.finish, bool(calls))
    return a.Message(id=plan.message_id, model=plan.body.model, content=content, stop_reason=stop_reason, stop_sequence=stop_sequence, usage=_usage(result.finish))


# -- streaming -------------------------------------------------------------------------------


def sse_event(event: Any) -> bytes:
    """One typed SSE event: its type as the event name, the whole event as data."""
    return b"event: " + event.type.encode() + b"\ndata: " + encode(event) + b"\n\n"


PING = sse_event(a.Ping())


class _BlockWriter:
    """Turns generated text (or what the tool reader made of it) into content blocks' events."""

    def __init__(self) -> None:
        self.count = 0  # blocks opened so far
        self.text_open: int | None = None  # the index of the open text block
        self.calls: dict[int, int] = {}  # the reader's call index -> the block index of its tool_use block
        self.open_calls: set[int] = set()

    def text(self, piece: str) -> Iterator[bytes]:
        if not piece:
            return
        if self.text_open is None:
            self.text_open = self.count
            self.count += 1
            yield sse_event(a.BlockStart(index=self.text_open, content_block=a.TextReply(text="")))
        yield sse_event(a.BlockDelta(index=self.text_open, delta=a.TextDelta(text=piece)))

    def close_text(self) -> Iterator[bytes]:
        if self.text_open is not None:
            yield sse_event(a.BlockStop(index=self.text_open))
            self.text_open = None

    def update(self, update: ReaderUpdate) -> Iterator[bytes]:
        yield from self.text(update.text)
        for call in update.started:
            yield from self.close_text()
            index = self.calls[call.index] = self.count
            self.count += 1
            self.open_calls.add(index)
            yield sse_event(a.BlockStart(index=index, content_block=a.ToolUseReply(id=tool_use_id(), name=call.name, input={})))
        for call_index, fragment in update.arguments:
            if fragment:
                yield sse_event(a.BlockDelta(index=self.calls[call_index], delta=a.InputJsonDelta(partial_json=fragment)))
        for call in update.completed:
            index = self.calls[call.index]
            if index in self.open_calls:
                self.open_calls.discard(index)
                yield sse_event(a.BlockStop(index=index))

    def close_all(self) -> Iterator[bytes]:
        if self.count == 0:  # nothing was generated: one empty text block, as the whole answer has
            yield sse_event(a.BlockStart(index=0, content_block=a.TextReply(text="")))
            yield sse_event(a.BlockStop(index=0))
            self.count = 1
            return
        yield from self.close_text()
        for index in sorted(self.open_calls):
            yield sse_event(a.BlockStop(index=index))
        self.open_calls.clear()


def stream(plan: MessagePlan, events: Iterator[tuple[Choice, Event]], log: logging.Logger) -> Iterator[bytes]:
    """The SSE events of a streamed message."""
    prompt = len(plan.choice.request.prompt_ids)
    start = a.Message(
        id=plan.message_id, model=plan.body.model, content=[], stop_reason=None, stop_sequence=None, usage=a.MessageUsage(input_tokens=prompt, output_tokens=0)
    )
    yield sse_event(a.MessageStart(message=start))
    writer = _BlockWriter()
    reader = plan.chat.tools.reader() if plan.chat.tools is not None else None
    try:
        with closing(events):  # type: ignore[type-var]
            for _, event in events:
                if isinstance(event, KeepAlive):
                    yield PING
                elif isinstance(event, Delta):
                    if reader is None:
                        yield from writer.text(event.text)
                    else:
                        yield from writer.update(reader.feed(event.text))
                elif isinstance(event, Finish):
                    if reader is not None:
                        yield from writer.update(reader.finish())
                    yield from writer.close_all()
                    stop_reason, stop_sequence = _stop(plan, event, bool(writer.calls))
                    usage = _usage(event)
                    yield sse_event(a.MessageDelta(
                        delta=a.StopDelta(stop_reason=stop_reason, stop_sequence=stop_sequence),
                        usage=a.DeltaUsage(input_tokens=usage.input_tokens, output_tokens=usage.output_tokens, cache_read_input_tokens=usage.cache_read_input_tokens),
                    ))
                    yield sse_event(a.MessageStop())
    except Exception as exc:
        log.error("message stream ended by an error: %s", exc, exc_info=not isinstance(exc, ApiError))
        status, text, param, _ = describe_error(exc)
        yield sse_event(error_body(status, text, param))
