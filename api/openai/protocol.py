"""OpenAI's wire format, as pure translation: typed request bodies → runtime requests, events → reply structs.

Chat completions and (legacy) completions share the generation machinery; they differ in
how the prompt is given, how text and log-probabilities are written, and the object names.
Streams are SSE frames: every chunk carries the same `id`, `created` and `model`; chat
streams open each choice with a `delta.role` chunk; a chunk with `finish_reason` closes
each choice; with `stream_options.include_usage` every chunk has `"usage": null` and a
last chunk with empty `choices` carries the usage; `data: [DONE]` ends the stream.
"""

from __future__ import annotations

import base64
import secrets
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from api.errors import BadRequest, NotSupported
from api.framing import SSE_DONE, SSE_KEEPALIVE, sse_frame
from api.generation.fields import Tokenize, check_limit, finite_logprob, with_choice_seed
from api.generation.fim import fim_prompt
from api.generation.grammars import schema_grammar
from api.generation.runs import Choice, Collected, total_usage
from api.models.registry import ModelInfo, TextModel
from api.openai import bodies as m
from api.settings import ServerSettings
from api.tools.plan import AUTO, GENERIC, NO_PARAMETERS, REQUIRED, Tool, ToolPlan, check_tools, history_message, tool_format
from api.tools.readers import EnvelopeReader, HermesReader, ReaderUpdate
from api.wire import TEXT_ONLY, stop_tuple
from runtime.events import Delta, Event, Finish, KeepAlive, PromptLogprobs, TokenChoice, TokenLogprobs, Usage
from runtime.grammar import Grammar
from runtime.sampling import SamplingParams

# OpenAI's defaults: temperature 1, top_p 1, no penalties.
OPENAI_DEFAULTS = SamplingParams()



@dataclass
class Plan:
    """What a completion request asks for, validated."""

    model: str
    choices: list[Choice]
    stream: bool = False
    include_usage: bool = False
    logprobs: bool = False
    top_logprobs: int = 0
    # Completions only: prompt text to put before each choice's text (echo), by prompt index.
    echo: dict[int, str] = field(default_factory=dict)
    # Chat only: the tools the model may call (its answer is then a tool envelope), and
    # whether they came as the legacy `functions` (answered with `function_call`).
    tools: ToolPlan | None = None
    legacy_functions: bool = False
    # Completions only: choices returned per prompt (n), of best_of generated; the n with the
    # highest sum of their tokens' log-probabilities are returned.
    n: int = 1
    best_of: int = 1


def _n(body: m.ChatCompletionRequest | m.CompletionRequest, settings: ServerSettings) -> int:
    n = body.n or 1
    if n > settings.max_n:
        raise BadRequest(f"'n' must be at most {settings.max_n} (got {n})", param="n")
    return n


def _tokenizer(generator: TextModel) -> Tokenize:
    """How logit_bias keys that are token strings become ids (logit_bias_type "tokens")."""
    return lambda text: generator.tokenize(text, add_special_tokens=False)


def _include_usage(body: m.ChatCompletionRequest | m.CompletionRequest) -> bool:
    return bool(body.stream_options and body.stream_options.include_usage)


def chat_messages(messages: Sequence[m.ChatMessage], format: str = GENERIC) -> list[dict[str, Any]]:
    """The conversation as the runtime's chat template takes it: role, text content, name.

    Earlier tool calls and their results are written in the model's tool format (api/tools/plan.py).
    """
    result = []
    called: dict[str, str] = {}  # call id -> function name, to name the results
    for index, message in enumerate(messages):
        for part_index, part in enumerate(message.content_parts()):
            if isinstance(part, m.NON_TEXT_PARTS):
                kind = type(part).__struct_config__.tag
                raise NotSupported(f"content parts of type {kind!r} are not supported: {TEXT_ONLY}", param=f"messages[{index}].content[{part_index}]")
        content = message.content
        text = content if isinstance(content, str) else "\n".join(p.text for p in message.content_parts() if isinstance(p, m.TextPart))
        calls = [(c.function.name, c.function.arguments) for c in message.tool_calls or ()]
        if message.function_call is not None:
            calls.append((message.function_call.name, message.function_call.arguments))
        if calls:
            if message.role != "assistant":
                raise BadRequest("only assistant messages carry tool calls", param=f"messages[{index}].tool_calls")
            called.update((c.id, c.function.name) for c in message.tool_calls or () if c.id)
            item = history_message("assistant", text, calls, format=format)
        elif message.role in ("tool", "function"):
            if message.role == "tool" and not message.tool_call_id:
                raise BadRequest("a tool message needs the tool_call_id it answers", param=f"messages[{index}].tool_call_id")
            name = message.name if message.role == "function" else called.get(message.tool_call_id or "", message.name)
            item = history_message("tool", text, tool_name=name, call_id=message.tool_call_id, format=format)
        else:
            item = {"role": message.role, "content": text}
        if message.name is not None and message.role not in ("tool", "function"):
            item["name"] = message.name
        result.append(item)
    return result


def _tool_plan(body: m.ChatCompletionRequest, format: str, lenient: bool = False) -> tuple[ToolPlan | None, bool]:
    """The tools the model may call, from `tools`/`tool_choice` or the legacy `functions`/`function_call`
    (`lenient`: schema keywords that cannot be enforced are ignored in tools not marked strict)."""
    if body.tools is not None and body.functions is not None:
        raise BadRequest("give 'tools' or the legacy 'functions', not both", param="functions")
    legacy = body.functions is not None
    definitions = body.functions if legacy else [t.function for t in body.tools or ()]
    param, choice_param = ("functions", "function_call") if legacy else ("tools", "tool_choice")
    asked = body.function_call if legacy else body.tool_choice
    named = asked.name if isinstance(asked, m.FunctionName) else asked.function.name if isinstance(asked, m.NamedToolChoice) else None
    if not definitions:
        if named is not None or asked == REQUIRED:
            raise BadRequest(f"'{choice_param}' asks for a tool call but no {param} were given", param=choice_param)
        return None, legacy
    if asked == "none":
        return None, legacy  # the model may not call them: it answers in words, unconstrained
    tools = tuple(
        Tool(d.name, d.description, d.parameters if isinstance(d.parameters, dict) else NO_PARAMETERS, bool(d.strict), lenient=lenient and not d.strict)
        for d in definitions or ()
    )
    check_tools(tools, param)
    if named is not None and named not in {t.name for t in tools}:
        raise BadRequest(f"'{choice_param}' names {named!r}, which is not among the {param}", param=f"{choice_param}.name" if legacy else f"{choice_param}.function.name")
    choice = named or (REQUIRED if asked == REQUIRED else AUTO)
    # One call per answer unless several are asked for (llama.cpp's default too): small models
    # given the choice repeat the same call until max_tokens.
    parallel = not legacy and body.parallel_tool_calls is True
    return ToolPlan(tools, choice, parallel, format), legacy


def format_grammar(response_format: m.ResponseFormat | None) -> Grammar | None:
    """The grammar `response_format` asks for (None for text)."""
    if response_format is None or response_format.type == "text":
        return None
    if response_format.type == "json_object":
        if response_format.schema is not None:  # Fireworks' form
            return schema_grammar(response_format.schema, "response_format.schema")
        return Grammar.json_object()
    spec = response_format.json_schema
    if spec is None or spec.schema is None:
        raise BadRequest("response_format of type json_schema needs json_schema.schema", param="response_format.json_schema")
    return schema_grammar(spec.schema, "response_format.json_schema.schema", strict=bool(spec.strict))


def _max_tokens(body: m.ChatCompletionRequest) -> int | None:
    return body.max_completion_tokens if body.max_completion_tokens is not None else body.max_tokens


def parse_chat(body: m.ChatCompletionRequest, generator: TextModel, settings: ServerSettings, lenient_tools: bool = False) -> Plan:
    """A /v1/chat/completions body → choices to run (`lenient_tools`: as Anthropic's Messages API
    treats tools, schema keywords that cannot be enforced are ignored in tools not marked strict)."""
    check_limit("messages", len(body.messages), settings.max_messages, "messages")
    format = tool_format(generator.chat_template_source)
    tools, legacy = _tool_plan(body, format, lenient_tools)
    grammar = body.constraint(format_grammar(body.response_format), "response_format")
    if tools is not None and grammar is not None:
        raise NotSupported("a response format or grammar together with tools is not supported: the tool call envelope is the grammar", param="response_format")
    logprobs = bool(body.logprobs)
    top_logprobs = body.top_logprobs or 0
    if top_logprobs and not logprobs:
        raise BadRequest("'top_logprobs' needs 'logprobs': true", param="top_logprobs")
    n = _n(body, settings)
    sampling = body.sampling(OPENAI_DEFAULTS, logprobs, top_logprobs, tokenize=_tokenizer(generator))
    messages, template_tools = chat_messages(body.messages, format), None
    if tools is not None:
        (messages, template_tools), grammar = tools.prompt(messages), tools.grammar()
    prompt = tuple(generator.chat_prompt_ids(messages, tools=template_tools))
    request = body.request(prompt, sampling, _max_tokens(body), stop_tuple(body.stop), grammar=grammar)
    choices = [Choice(i, 0, with_choice_seed(request, i)) for i in range(n)]
    return Plan(body.model, choices, bool(body.stream), _include_usage(body), logprobs, top_logprobs, tools=tools, legacy_functions=legacy)


_WRONG_PROMPT = "must be a string, an array of strings, an array of token ids or an array of such arrays"


def prompt_items(value: str | list[str | list[int] | int], param: str, max_inputs: int) -> list[str | tuple[int, ...]]:
    """`prompt` / `input`: a text, texts, token ids, or lists of token ids; not a mix."""
    if isinstance(value, str):
        return [value]
    if all(isinstance(i, int) for i in value):
        ids = [i for i in value if isinstance(i, int)]
        if any(i < 0 for i in ids):
            raise BadRequest(f"'{param}' token ids must be integers ≥ 0", param=param)
        return [tuple(ids)]
    items: list[str | tuple[int, ...]] = []
    for index, item in enumerate(value):
        if isinstance(item, str) and all(isinstance(i, str) for i in value):
            items.append(item)
        elif isinstance(item, list) and item and all(isinstance(i, list) for i in value):
            items.append(tuple(item))
        else:
            raise BadRequest(f"'{param}' {_WRONG_PROMPT}", param=f"{param}[{index}]")
    check_limit(param, len(items), max_inputs)
    return items


def _best_of(body: m.CompletionRequest, n: int, settings: ServerSettings) -> int:
    """Candidates generated per prompt: best_of (n by default), at least n, within the server's max_n."""
    best_of = body.best_of if body.best_of is not None else n
    if best_of < n:
        raise BadRequest(f"'best_of' must be at least n ({n}); got {best_of}", param="best_of")
    if best_of > settings.max_n:
        raise BadRequest(f"'best_of' must be at most {settings.max_n} (got {best_of})", param="best_of")
    if best_of > n and body.stream:
        raise BadRequest("'best_of' greater than n cannot be streamed: the best completions are known only when all are done", param="best_of")
    return best_of


def parse_completion(body: m.CompletionRequest, generator: TextModel, settings: ServerSettings) -> Plan:
    """A /v1/completions body → choices to run."""
    echo = bool(body.echo)
    n = _n(body, settings)
    best_of = _best_of(body, n, settings)
    suffix = body.suffix or None
    if suffix is not None and echo:
        raise BadRequest("'echo' cannot be used with 'suffix': the model reads a fill-in-the-middle arrangement of the prompt, not the prompt", param="echo")
    items = prompt_items(body.prompt, "prompt", settings.max_inputs)
    if suffix is not None:
        prompts = [(fim_prompt(generator, p, suffix), p if isinstance(p, str) else None) for p in items]
    else:
        prompts = [(tuple(generator.tokenize(p)), p) if isinstance(p, str) else (p, None) for p in items]
    if len(prompts) * best_of > settings.max_inputs:
        what = "n" if best_of == n else "best_of"
        raise BadRequest(f"{len(prompts)} prompts × {what}={best_of} is more than {settings.max_inputs} completions in one request", param=what)
    wants_logprobs = body.logprobs is not None
    # Ranking best_of candidates needs each token's log-probability, asked for or not.
    sampling = body.sampling(OPENAI_DEFAULTS, wants_logprobs or best_of > n, body.logprobs or 0, tokenize=_tokenizer(generator))
    grammar = body.constraint(format_grammar(body.response_format), "response_format")
    # echo with logprobs: the prompt's tokens get log-probabilities too (the first one none).
    prompt_logprobs = body.logprobs if echo and wants_logprobs else None
    choices: list[Choice] = []
    texts: dict[int, str] = {}
    for p, (ids, text) in enumerate(prompts):
        request = replace(body.request(ids, sampling, body.max_tokens, stop_tuple(body.stop), grammar=grammar), prompt_logprobs=prompt_logprobs)
        choices.extend(Choice(p * best_of + i, p, with_choice_seed(request, i)) for i in range(best_of))
        if echo:
            texts[p] = text if text is not None else generator.detokenize(ids)
    return Plan(body.model, choices, bool(body.stream), _include_usage(body), wants_logprobs, body.logprobs or 0, texts, n=n, best_of=best_of)


# -- rendering -------------------------------------------------------------------------


def usage_reply(usage: Usage) -> m.Usage:
    return m.Usage(
        prompt_tokens=usage.prompt_tokens, completion_tokens=usage.completion_tokens, total_tokens=usage.total_tokens,
        prompt_tokens_details=m.PromptTokensDetails(cached_tokens=usage.cached_tokens),
    )


def _top(choice: TokenChoice) -> m.TopLogprob:
    return m.TopLogprob(token=choice.token, logprob=finite_logprob(choice.logprob), bytes=list(choice.bytes))


def chat_logprobs(records: Sequence[TokenLogprobs]) -> m.ChatLogprobs:
    content = [
        m.TokenLogprob(token=r.chosen.token, logprob=finite_logprob(r.chosen.logprob), bytes=list(r.chosen.bytes), top_logprobs=[_top(t) for t in r.top])
        for r in records
    ]
    return m.ChatLogprobs(content=content)


class CompletionLogprobs:
    """Legacy completions' log-probabilities, with each token's character offset in the choice's text."""

    def __init__(self, offset: int = 0) -> None:
        self.offset = offset

    def render(self, records: Sequence[TokenLogprobs], top: int, prompt: PromptLogprobs | None = None) -> m.CompletionLogprobs:
        """`records` from the current offset on; with `prompt` (echo), the prompt's tokens first,
        the first one with null log-probabilities as OpenAI and vLLM send it.

        The prompt tokens' offsets are counted back from where the echoed prompt ends (the
        current offset), so that the completion's follow on: a BOS token the tokenizer added,
        which the echoed text does not hold, gets offset 0 like the token after it.
        """
        tokens: list[str] = []
        offsets: list[int] = []
        logprobs: list[float | None] = []
        tops: list[dict[str, float] | None] = []
        if prompt is not None:
            tokens = [prompt.first_token, *(r.chosen.token for r in prompt.rest)]
            after = self.offset
            for token in reversed(tokens):
                after -= len(token)
                offsets.append(max(0, after))
            offsets.reverse()
            logprobs = [None, *(finite_logprob(r.chosen.logprob) for r in prompt.rest)]
            tops = [None, *({t.token: finite_logprob(t.logprob) for t in r.top[:top]} for r in prompt.rest)]
        for record in records:
            tokens.append(record.chosen.token)
            offsets.append(self.offset)
            self.offset += len(record.chosen.token)
            logprobs.append(finite_logprob(record.chosen.logprob))
            tops.append({t.token: finite_logprob(t.logprob) for t in record.top[:top]})
        return m.CompletionLogprobs(tokens=tokens, token_logprobs=logprobs, top_logprobs=tops if top else None, text_offset=offsets)


def _fingerprint(digest: str) -> str:
    return f"fp_{digest[:10]}"


def _records(result: Collected) -> list[TokenLogprobs]:
    return [lp for d in result.deltas for lp in d.logprobs]


def _reason(finish: Finish, plan: Plan | None = None, called: bool = False) -> m.FinishReason:
    """length, stop, or (the model called tools it was free to call) tool_calls / function_call."""
    if finish.reason == "length":
        return "length"
    if called and plan is not None and plan.tools is not None and plan.tools.named is None:
        return "function_call" if plan.legacy_functions else "tool_calls"
    return "stop"


def call_id() -> str:
    return f"call_{secrets.token_urlsafe(18)}"


def _message(plan: Plan, text: str) -> m.AssistantMessage:
    """The answer's message: its text, or the calls read from its tool envelope."""
    if plan.tools is None:
        return m.AssistantMessage(content=text)
    reader = plan.tools.reader()
    reader.feed(text)
    reader.finish()
    if not reader.calls:
        return m.AssistantMessage(content=reader.content)
    # Words before the calls (the Hermes format allows them) stay the content; none: null, as OpenAI sends.
    content = reader.content or None
    if plan.legacy_functions:
        first = reader.calls[0]
        return m.AssistantMessage(content=content, function_call=m.FunctionCallReply(name=first.name, arguments=first.arguments))
    calls = [m.ToolCallReply(id=call_id(), function=m.FunctionCallReply(name=c.name, arguments=c.arguments)) for c in reader.calls]
    return m.AssistantMessage(content=content, tool_calls=calls)


def chat_response(plan: Plan, results: Sequence[Collected], response_id: str, created: int, digest: str) -> m.ChatCompletion:
    choices = []
    for result in sorted(results, key=lambda r: r.choice.index):
        message = _message(plan, result.text)
        called = bool(message.tool_calls) or message.function_call is not m.UNSET
        choices.append(
            m.ChatChoice(
                index=result.choice.index,
                message=message,
                logprobs=chat_logprobs(_records(result)) if plan.logprobs else None,
                finish_reason=_reason(result.finish, plan, called),
            )
        )
    usage = usage_reply(total_usage([(r.choice, r.finish) for r in results]))
    return m.ChatCompletion(id=response_id, created=created, model=plan.model, system_fingerprint=_fingerprint(digest), choices=choices, usage=usage)


def cumulative_logprob(result: Collected) -> float:
    """The sum of the chosen tokens' log-probabilities: how best_of ranks its candidates (OpenAI's rule)."""
    return sum(record.chosen.logprob for record in _records(result))


def best_results(plan: Plan, results: Sequence[Collected]) -> list[Collected]:
    """Per prompt, the n of best_of candidates with the highest cumulative log-probability, best
    first, numbered as choices p * n + rank."""
    if plan.best_of <= plan.n:
        return list(results)
    chosen = []
    for prompt in sorted({r.choice.prompt_index for r in results}):
        candidates = sorted((r for r in results if r.choice.prompt_index == prompt), key=lambda r: (-cumulative_logprob(r), r.choice.index))
        for rank, result in enumerate(candidates[: plan.n]):
            chosen.append(replace(result, choice=replace(result.choice, index=prompt * plan.n + rank)))
    return chosen


def _prompt_logprobs(result: Collected) -> PromptLogprobs | None:
    return next((d.prompt_logprobs for d in result.deltas if d.prompt_logprobs is not None), None)


def completion_response(plan: Plan, results: Sequence[Collected], response_id: str, created: int, digest: str) -> m.Completion:
    choices = []
    for result in sorted(best_results(plan, results), key=lambda r: r.choice.index):
        prefix = plan.echo.get(result.choice.prompt_index, "")
        logprobs = CompletionLogprobs(len(prefix)).render(_records(result), plan.top_logprobs, _prompt_logprobs(result)) if plan.logprobs else None
        choices.append(m.CompletionChoice(text=prefix + result.text, index=result.choice.index, logprobs=logprobs, finish_reason=_reason(result.finish)))
    # Usage counts every candidate generated, returned or not (best_of).
    usage = usage_reply(total_usage([(r.choice, r.finish) for r in results]))
    return m.Completion(id=response_id, created=created, model=plan.model, system_fingerprint=_fingerprint(digest), choices=choices, usage=usage)


def chat_stream(plan: Plan, events: Iterator[tuple[Choice, Event]], response_id: str, created: int, digest: str) -> Iterator[bytes]:
    """SSE frames of a streamed chat completion."""
    fingerprint = _fingerprint(digest)
    usage: m.Usage | None | m.UnsetType = None if plan.include_usage else m.UNSET
    finishes: list[tuple[Choice, Finish]] = []

    def frame(choice: m.ChatChunkChoice) -> bytes:
        chunk = m.ChatCompletionChunk(id=response_id, created=created, model=plan.model, system_fingerprint=fingerprint, choices=[choice], usage=usage)
        return sse_frame(chunk)

    def role_chunk(index: int) -> bytes:
        return frame(m.ChatChunkChoice(index=index, delta=m.ChatDelta(role="assistant", content="")))

    # The first choice's role chunk goes out before its prompt is evaluated; later ones as they start.
    opened = {plan.choices[0].index}
    readers: dict[int, ToolDeltas] = {}
    yield role_chunk(plan.choices[0].index)
    for choice, event in events:
        if isinstance(event, KeepAlive):
            yield SSE_KEEPALIVE
            continue
        if choice.index not in opened:
            opened.add(choice.index)
            yield role_chunk(choice.index)
        if isinstance(event, Delta):
            if event.text or event.logprobs:
                logprobs = chat_logprobs(event.logprobs) if plan.logprobs else None
                delta: m.ChatDelta | None
                if plan.tools is None:
                    delta = m.ChatDelta(content=event.text)
                else:
                    delta = readers.setdefault(choice.index, ToolDeltas(plan.tools.reader(), plan.legacy_functions)).delta(event.text)
                if delta is not None or logprobs is not None:
                    yield frame(m.ChatChunkChoice(index=choice.index, delta=delta or m.ChatDelta(), logprobs=logprobs))
        else:
            finishes.append((choice, event))
            held = readers[choice.index].finish() if choice.index in readers else None
            if held is not None:
                yield frame(m.ChatChunkChoice(index=choice.index, delta=held))
            called = choice.index in readers and readers[choice.index].called
            yield frame(m.ChatChunkChoice(index=choice.index, delta=m.ChatDelta(), finish_reason=_reason(event, plan, called)))
    if plan.include_usage:
        yield sse_frame(m.ChatCompletionChunk(id=response_id, created=created, model=plan.model, system_fingerprint=fingerprint, choices=[], usage=usage_reply(total_usage(finishes))))
    yield SSE_DONE


class ToolDeltas:
    """One streamed choice's tool envelope → chat deltas: words as content, calls as tool_calls deltas."""

    def __init__(self, reader: EnvelopeReader | HermesReader, legacy_functions: bool) -> None:
        self.reader = reader
        self.legacy = legacy_functions

    @property
    def called(self) -> bool:
        return bool(self.reader.calls)

    def delta(self, text: str) -> m.ChatDelta | None:
        return self._render(self.reader.feed(text))

    def finish(self) -> m.ChatDelta | None:
        """Words held back until the end (they might have begun a call), if any."""
        return self._render(self.reader.finish())

    def _render(self, update: ReaderUpdate) -> m.ChatDelta | None:
        if self.legacy:
            return self._function_delta(update)
        parts: dict[int, m.ToolCallDelta] = {}
        for call in update.started:
            parts[call.index] = m.ToolCallDelta(index=call.index, id=call_id(), type="function", function=m.FunctionCallDelta(name=call.name))
        for index, fragment in update.arguments:
            part = parts.setdefault(index, m.ToolCallDelta(index=index, function=m.FunctionCallDelta()))
            part.function.arguments += fragment
        if parts:
            return m.ChatDelta(tool_calls=[parts[i] for i in sorted(parts)])
        return m.ChatDelta(content=update.text) if update.text else None

    def _function_delta(self, update: ReaderUpdate) -> m.ChatDelta | None:
        # The legacy form carries one call: the first.
        started = [c for c in update.started if c.index == 0]
        fragment = "".join(f for i, f in update.arguments if i == 0)
        if started or fragment:
            name: str | m.UnsetType = started[0].name if started else m.UNSET
            return m.ChatDelta(function_call=m.FunctionCallDelta(name=name, arguments=fragment))
        return m.ChatDelta(content=update.text) if update.text else None


def completion_stream(plan: Plan, events: Iterator[tuple[Choice, Event]], response_id: str, created: int, digest: str) -> Iterator[bytes]:
    """SSE frames of a streamed (legacy) completion."""
    fingerprint = _fingerprint(digest)
    usage: m.Usage | None | m.UnsetType = None if plan.include_usage else m.UNSET
    finishes: list[tuple[Choice, Finish]] = []
    offsets: dict[int, CompletionLogprobs] = {}

    def frame(choice: m.CompletionChoice) -> bytes:
        return sse_frame(m.CompletionChunk(id=response_id, created=created, model=plan.model, system_fingerprint=fingerprint, choices=[choice], usage=usage))

    for choice, event in events:
        if isinstance(event, KeepAlive):
            yield SSE_KEEPALIVE
            continue
        if choice.index not in offsets:
            prefix = plan.echo.get(choice.prompt_index, "")
            offsets[choice.index] = CompletionLogprobs(len(prefix))
            # The prompt's log-probabilities (echo with logprobs) come first, with the echoed prompt.
            prompt = event.prompt_logprobs if isinstance(event, Delta) else None
            if prefix:
                logprobs = offsets[choice.index].render((), plan.top_logprobs, prompt) if plan.logprobs and prompt is not None else None
                yield frame(m.CompletionChoice(text=prefix, index=choice.index, logprobs=logprobs, finish_reason=None))
            if prompt is not None:
                continue
        if isinstance(event, Delta):
            if event.text or event.logprobs:
                logprobs = offsets[choice.index].render(event.logprobs, plan.top_logprobs) if plan.logprobs else None
                yield frame(m.CompletionChoice(text=event.text, index=choice.index, logprobs=logprobs, finish_reason=None))
        else:
            finishes.append((choice, event))
            yield frame(m.CompletionChoice(text="", index=choice.index, logprobs=None, finish_reason=_reason(event)))
    if plan.include_usage:
        yield sse_frame(m.CompletionChunk(id=response_id, created=created, model=plan.model, system_fingerprint=fingerprint, choices=[], usage=usage_reply(total_usage(finishes))))
    yield SSE_DONE


# -- embeddings and models ------------------------------------------------------------


# Token ids are refused unless the operator says clients send the model's own: ids of another
# tokenizer fall inside the vocabulary often enough to give a 200 with a meaningless vector.
TOKEN_ID_EMBEDDINGS = (
    "'input' holds token ids, which this server refuses by default: it cannot tell which tokenizer made them, and ids "
    "of another vocabulary give a meaningless vector. LangChain's OpenAIEmbeddings sends OpenAI's tiktoken ids unless "
    "it is created with check_embedding_ctx_length=False; set that (or send the texts). If your clients send this "
    "model's own token ids (from /tokenize), the server can be started with --embedding-token-ids."
)


@dataclass
class EmbeddingPlan:
    model: str
    texts: list[str] | None
    token_ids: list[tuple[int, ...]] | None
    base64: bool
    truncate: bool


def parse_embeddings(body: m.EmbeddingRequest, settings: ServerSettings, dimension: int | None) -> EmbeddingPlan:
    items = prompt_items(body.input, "input", settings.max_inputs)
    texts = [i for i in items if isinstance(i, str)] or None
    ids = [i for i in items if isinstance(i, tuple)] or None
    if ids is not None and not settings.embedding_token_ids:
        raise BadRequest(TOKEN_ID_EMBEDDINGS, param="input")
    if body.dimensions is not None and body.dimensions != dimension:
        raise NotSupported(f"'dimensions' must be the model's own {dimension}: this model was not trained for shorter vectors", param="dimensions")
    return EmbeddingPlan(body.model, texts, ids, body.encoding_format == "base64", bool(body.truncate))


def embeddings_response(plan: EmbeddingPlan, vectors: np.ndarray, prompt_tokens: int) -> m.EmbeddingList:
    data = []
    for index, vector in enumerate(vectors):
        embedding: list[float] | str
        if plan.base64:
            embedding = base64.b64encode(np.ascontiguousarray(vector, dtype="<f4").tobytes()).decode("ascii")
        else:
            embedding = vector.tolist()  # the same Python floats as float(x) per element, 4x faster
        data.append(m.Embedding(index=index, embedding=embedding))
    return m.EmbeddingList(data=data, model=plan.model, usage=m.EmbeddingUsage(prompt_tokens=prompt_tokens, total_tokens=prompt_tokens))


def model_object(info: ModelInfo) -> m.Model:
    """A /v1/models entry: OpenAI's fields, then what this engine is."""
    return m.Model(
        id=info.name,
        created=info.created,
        task="feature-extraction" if info.task == "feature-extraction" else "rerank" if info.task == "rerank" else "text-generation",
        context_length=info.context_length,
        precision=info.precision,
        execution_provider=info.providers[0] if info.providers else None,
    )
