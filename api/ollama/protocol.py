"""Ollama's wire format, as pure translation: request JSON → runtime requests, events → JSON lines.

Differences from OpenAI that clients rely on:
- `stream` defaults to true; a stream is NDJSON, one object per line, the last with
  `done: true`, `done_reason` and the durations in nanoseconds.
- Sampling controls live in `options`, with Ollama's defaults (temperature 0.8, top_k 40,
  top_p 0.9, repeat_penalty 1.1); `num_predict` is max_tokens (-1, -2: no limit) and
  `num_ctx` a smaller context.
- `/api/generate` wraps the prompt in the model's chat template (with `system` as a system
  message) unless `raw` is true, and returns `context`: the conversation's token ids, which
  the next request may send back.
- A prompt longer than the context is cut at its start, as Ollama does (`"truncate": false`
  refuses it instead).
- An empty prompt (or no messages) only loads the model: `done_reason: "load"`; with
  `keep_alive: 0` it unloads it instead: `done_reason: "unload"`.
- `keep_alive` (a duration like "5m", seconds, negative for ever) is how long the model
  stays loaded after the request; a request that had to load it again says so in its
  `load_duration`.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

import msgspec

from api.errors import BadRequest, NotSupported
from api.framing import NDJSON_KEEPALIVE, ndjson_line
from api.generation.fields import SamplingFields, check_limit, finite_logprob
from api.generation.fim import fim_prompt
from api.generation.grammars import schema_grammar
from api.generation.runs import Choice, Collected
from api.models.pulls import Status
from api.models.registry import ModelInfo, TextModel
from api.models.residency import FOREVER
from api.ollama import bodies as m
from api.settings import ServerSettings, keep_alive
from api.tools.plan import AUTO, GENERIC, NO_PARAMETERS, Tool, ToolPlan, check_tools, history_message, tool_format
from api.tools.readers import Call
from api.wire import stop_tuple
from runtime.events import Delta, Event, Finish, KeepAlive, TokenChoice, TokenLogprobs
from runtime.grammar import Grammar
from runtime.request import CONTEXT_ERROR, CONTEXT_TRUNCATE
from runtime.sampling import SamplingParams

# Ollama's default options (its api/types.go DefaultOptions).
OLLAMA_DEFAULTS = SamplingParams(temperature=0.8, top_k=40, top_p=0.9, repeat_penalty=1.1, repeat_last_n=64)
# The Ollama API version whose routes and fields this server follows (`/api/version`).
OLLAMA_API_VERSION = "0.12.6"
# What Ollama's /api/ps adds to now for a model kept loaded for ever: the longest Go duration
# (math.MaxInt64 nanoseconds, about 292 years), so "for ever" reads as a date in 2318.
FOREVER_S = (2**63 - 1) / 1e9


def timestamp(seconds: float) -> str:
    """Ollama's created_at: RFC 3339 in UTC with fractional seconds."""
    return datetime.fromtimestamp(seconds, timezone.utc).isoformat().replace("+00:00", "Z")


@dataclass
class Plan:
    model: str
    choice: Choice | None  # None: only load the model
    stream: bool
    logprobs: bool
    top_logprobs: int
    chat: bool
    # /api/chat with tools: the answer is a tool envelope (api/tools/plan.py).
    tools: ToolPlan | None = None
    # Nanoseconds this request waited for the model to load (it had been unloaded), for load_duration.
    load_ns: int = 0


def keep_alive_seconds(value: str | float | None) -> float | None:
    """A request's keep_alive in seconds (FOREVER for a negative one); None when it sent none."""
    if value is None:
        return None
    try:
        seconds = keep_alive(value) if isinstance(value, str) else keep_alive(repr(float(value)))
    except ValueError as exc:
        raise BadRequest(f"'keep_alive': {exc}", param="keep_alive") from None
    return FOREVER if seconds < 0 else seconds


def unloads(body: m.GenerateRequest | m.ChatRequest) -> bool:
    """Ollama's unload call: nothing to generate and keep_alive 0."""
    empty = not body.messages if isinstance(body, m.ChatRequest) else not body.prompt and not body.context
    return empty and keep_alive_seconds(body.keep_alive) == 0


def format_grammar(value: str | dict[str, object] | None) -> Grammar | None:
    """`format`: "json" for a JSON object, a JSON Schema for JSON valid against it, "" or none for text."""
    if value is None or value == "":
        return None
    if value == "json":
        return Grammar.json_object()
    return schema_grammar(value, "format")


def _with_top_level_sampling(body: m.GenerateRequest | m.ChatRequest, options: m.Options) -> m.Options:
    """`options` with the sampling controls some clients send at the top level (OpenAI-style) filled in.

    Ollama reads them only from `options`; a top-level `temperature` must not be silently lost,
    so it counts where `options` does not set the same control (`options` wins).
    """
    given = {name: getattr(body, name) for name in SamplingFields.__struct_fields__ if getattr(body, name) is not None and getattr(options, name) is None}
    return msgspec.structs.replace(options, **given) if given else options


def _request(body: m.GenerateRequest | m.ChatRequest, prompt: tuple[int, ...], chat: bool, tools: ToolPlan | None = None, generator: TextModel | None = None) -> Plan:
    logprobs = bool(body.logprobs)
    top_logprobs = body.top_logprobs or 0
    options = _with_top_level_sampling(body, body.options or m.Options())
    # options.logit_bias keys are token strings when the body says logit_bias_type "tokens".
    tokenize = (lambda text: generator.tokenize(text, add_special_tokens=False)) if generator is not None else None
    sampling = options.sampling(OLLAMA_DEFAULTS, logprobs, top_logprobs, body.logit_bias_type, tokenize)
    num_predict = options.num_predict if options.num_predict is not None else -1
    max_tokens = None if num_predict < 0 else num_predict
    policy = CONTEXT_ERROR if body.truncate is False else CONTEXT_TRUNCATE
    grammar = body.constraint(format_grammar(body.format), "format")
    if tools is not None:
        if grammar is not None:
            raise NotSupported("'format' or 'grammar' together with tools is not supported: the tool call envelope is the grammar", param="format")
        grammar = tools.grammar()  # None for a Hermes template with auto: its calls are read afterwards
    request = body.request(prompt, sampling, max_tokens, stop_tuple(options.stop), context_length=options.num_ctx, context_policy=policy, grammar=grammar)
    return Plan(body.model, Choice(0, 0, request), body.stream is not False, logprobs, top_logprobs, chat, tools)


def parse_generate(body: m.GenerateRequest, generator: TextModel, settings: ServerSettings) -> Plan:
    """A /api/generate body → what to run (or a load-only plan for an empty prompt)."""
    prompt = body.prompt or ""
    context = tuple(body.context or ())
    if not prompt and not context:
        return Plan(body.model, None, body.stream is not False, False, 0, chat=False)
    if body.suffix:
        # Fill-in-the-middle: the prompt is the code before, the suffix the code after; the model
        # writes what goes between (no chat template, as Ollama's FIM templates have none).
        if context:
            raise BadRequest("'context' cannot be combined with 'suffix': a fill-in-the-middle prompt starts afresh", param="context")
        return _request(body, fim_prompt(generator, prompt, body.suffix), chat=False, generator=generator)
    if body.raw or not generator.has_chat_template:
        ids = generator.tokenize(prompt) if prompt else []
    else:
        messages = ([{"role": "system", "content": body.system}] if body.system else []) + [{"role": "user", "content": prompt}]
        ids = generator.chat_prompt_ids(messages)
    return _request(body, context + tuple(ids), chat=False, generator=generator)


def parse_chat(body: m.ChatRequest, generator: TextModel, settings: ServerSettings) -> Plan:
    """A /api/chat body → what to run (or a load-only plan for no messages)."""
    messages = body.messages or []
    check_limit("messages", len(messages), settings.max_messages, "messages")
    if not messages:
        return Plan(body.model, None, body.stream is not False, False, 0, chat=True)
    format = tool_format(generator.chat_template_source)
    conversation = [_message(message, index, format) for index, message in enumerate(messages)]
    tools, template_tools = None, None
    if body.tools:
        definitions = [t.function for t in body.tools]
        tools = ToolPlan(tuple(Tool(d.name, d.description, d.parameters or NO_PARAMETERS) for d in definitions), AUTO, parallel=False, format=format)
        check_tools(tools.tools, "tools")
        conversation, template_tools = tools.prompt(conversation)
    return _request(body, tuple(generator.chat_prompt_ids(conversation, tools=template_tools)), chat=True, tools=tools, generator=generator)


def _message(message: m.Message, index: int, format: str = GENERIC) -> dict[str, Any]:
    """A message for the template; earlier calls and tool results in the generic tool format."""
    content = message.content or ""
    if message.tool_calls:
        if message.role != "assistant":
            raise BadRequest("only assistant messages carry tool calls", param=f"messages[{index}].tool_calls")
        calls = [(c.function.name, json.dumps(c.function.arguments or {}, ensure_ascii=False)) for c in message.tool_calls]
        return history_message("assistant", content, calls, format=format)
    if message.role == "tool":
        return history_message("tool", content, tool_name=message.tool_name, format=format)
    return {"role": message.role, "content": content}


# -- rendering -------------------------------------------------------------------------


def _entry(choice: TokenChoice) -> m.Logprob:
    return m.Logprob(token=choice.token, logprob=finite_logprob(choice.logprob), bytes=list(choice.bytes))


def logprobs_list(records: Sequence[TokenLogprobs]) -> list[m.TokenLogprob]:
    return [
        m.TokenLogprob(token=r.chosen.token, logprob=finite_logprob(r.chosen.logprob), bytes=list(r.chosen.bytes), top_logprobs=[_entry(t) for t in r.top])
        for r in records
    ]


def _call_reply(call: Call) -> m.ToolCallReply:
    try:
        arguments = json.loads(call.arguments)
    except ValueError:  # cut off by num_predict: what was written, as a string
        arguments = {"_incomplete_arguments": call.arguments}
    if not isinstance(arguments, dict):
        arguments = {"value": arguments}
    return m.ToolCallReply(id=f"call_{secrets.token_urlsafe(12)}", function=m.FunctionCallReply(index=call.index, name=call.name, arguments=arguments))


def _answer(plan: Plan, text: str, created_at: str, done: bool, calls: Sequence[Call] = ()) -> m.GenerateResponse | m.ChatResponse:
    if plan.chat:
        message = m.AssistantMessage(content=text)
        if calls:
            message.tool_calls = [_call_reply(c) for c in calls]
        return m.ChatResponse(model=plan.model, created_at=created_at, message=message, done=done)
    return m.GenerateResponse(model=plan.model, created_at=created_at, response=text, done=done)


def _finish(answer: m.GenerateResponse | m.ChatResponse, plan: Plan, finish: Finish, context: list[int]) -> m.GenerateResponse | m.ChatResponse:
    """The final line's fields: why it ended, the context (generate), the counts and durations."""
    usage = finish.usage
    answer.done_reason = finish.reason
    if not plan.chat:
        answer.context = context
    answer.total_duration = usage.total_duration_ns + plan.load_ns
    answer.load_duration = usage.load_duration_ns + plan.load_ns
    answer.prompt_eval_count = usage.prompt_tokens
    answer.prompt_eval_duration = usage.prompt_eval_duration_ns
    answer.eval_count = usage.completion_tokens
    answer.eval_duration = usage.eval_duration_ns
    return answer


def load_response(plan: Plan, created_at: str) -> m.GenerateResponse | m.ChatResponse:
    """The answer to an empty prompt: the model is loaded, nothing generated."""
    answer = _answer(plan, "", created_at, done=True)
    answer.done_reason = "load"
    if plan.load_ns:  # it had been unloaded: this request loaded it
        answer.load_duration = answer.total_duration = plan.load_ns
    return answer


def unload_response(model: str, chat: bool, created_at: str) -> m.GenerateResponse | m.ChatResponse:
    """The answer to Ollama's unload call (keep_alive 0, nothing to generate)."""
    answer = _answer(Plan(model, None, False, False, 0, chat=chat), "", created_at, done=True)
    answer.done_reason = "unload"
    return answer


def _context(plan: Plan, generated: list[int]) -> list[int]:
    prompt = plan.choice.request.prompt_ids if plan.choice is not None else ()
    return list(prompt) + generated


def response(plan: Plan, result: Collected, created_at: str) -> m.GenerateResponse | m.ChatResponse:
    """The whole answer in one object (stream: false)."""
    generated = [t for d in result.deltas for t in d.token_ids]
    text, calls = result.text, []
    if plan.tools is not None:
        reader = plan.tools.reader()
        reader.feed(result.text)
        reader.finish()
        text, calls = reader.content, reader.calls
    answer = _finish(_answer(plan, text, created_at, done=True, calls=calls), plan, result.finish, _context(plan, generated))
    if plan.logprobs:
        answer.logprobs = logprobs_list([lp for d in result.deltas for lp in d.logprobs])
    return answer


def stream(plan: Plan, events: Iterator[tuple[Choice, Event]], clock: Callable[[], float]) -> Iterator[bytes]:
    """NDJSON lines of a streamed answer: one per token with text, then the final one.

    NDJSON has no comment line (Ollama's clients parse every line as JSON), so a keep-alive
    is one space: JSON whitespace before the next line, which parsers skip.
    """
    generated: list[int] = []
    reader = plan.tools.reader() if plan.tools is not None else None
    for _, event in events:
        if isinstance(event, KeepAlive):
            yield NDJSON_KEEPALIVE
            continue
        created_at = timestamp(clock())
        if isinstance(event, Delta):
            generated.extend(event.token_ids)
            text, calls = event.text, []
            if reader is not None:  # words as they come; each call whole, once its arguments end
                update = reader.feed(event.text)
                text, calls = update.text, update.completed
            if text or calls or event.logprobs:
                line = _answer(plan, text, created_at, done=False, calls=calls)
                if plan.logprobs:
                    line.logprobs = logprobs_list(event.logprobs)
                yield ndjson_line(line)
        else:
            # Calls cut off by num_predict were never whole: the last line carries them as they are.
            cut = [c for c in reader.calls if not c.complete] if reader is not None else []
            held = reader.finish().text if reader is not None else ""
            yield ndjson_line(_finish(_answer(plan, held, created_at, done=True, calls=cut), plan, event, _context(plan, generated)))


# -- embeddings and model listings -------------------------------------------------------


def embed_texts(body: m.EmbedRequest, max_inputs: int, dimension: int | None) -> list[str]:
    """/api/embed's inputs, within the server's limit and the model's dimension."""
    texts = [body.input] if isinstance(body.input, str) else list(body.input)
    check_limit("input", len(texts), max_inputs)
    if body.dimensions is not None and body.dimensions != dimension:
        raise NotSupported(f"'dimensions' must be the model's own {dimension}: this model was not trained for shorter vectors", param="dimensions")
    return texts


def details(info: ModelInfo) -> m.Details:
    return m.Details(family=info.family, families=[info.family], parameter_size=info.parameter_size, quantization_level=info.quantization_level)


def tag_name(name: str) -> str:
    return name if ":" in name else f"{name}:latest"


def tags_entry(info: ModelInfo) -> m.Tag:
    name = tag_name(info.name)
    return m.Tag(name=name, model=name, modified_at=info.modified_at, size=info.size_bytes, digest=info.digest, details=details(info))


def ps_entry(info: ModelInfo, expires_in_s: float, now: float) -> m.Running:
    """An /api/ps entry; `expires_in_s` is how long its keep-alive has left (FOREVER: the server's lifetime)."""
    name = tag_name(info.name)
    return m.Running(
        name=name,
        model=name,
        size=info.size_bytes,
        digest=info.digest,
        details=details(info),
        expires_at=timestamp(now + min(expires_in_s, FOREVER_S)),
        size_vram=info.size_bytes if any(p != "CPUExecutionProvider" for p in info.providers) else 0,
        context_length=info.context_length,
    )


def show_response(info: ModelInfo) -> m.ShowResponse:
    family = info.family
    model_info: dict[str, str | int | list[str]] = {
        "general.architecture": family,
        "general.parameter_count": info.parameter_count,
        f"{family}.context_length": info.context_length,
        "appliance.precision": info.precision,
        "appliance.execution_providers": list(info.providers),
    }
    if info.embedding_dimension:
        model_info[f"{family}.embedding_length"] = info.embedding_dimension
    return m.ShowResponse(
        modelfile=f"# ONNX engine {info.name} ({info.architecture}, {info.precision}), exported by the appliance\nFROM {info.name}\n",
        template=info.chat_template or "",
        details=details(info),
        model_info=model_info,
        capabilities=["embedding"] if info.embedding_dimension else [] if info.task == "rerank" else ["completion"],
        modified_at=info.modified_at,
    )


def progress_line(status: Status) -> m.ProgressResponse:
    """One /api/pull status line, as Ollama's clients read them (`total` and `completed` for steps that count)."""
    line = m.ProgressResponse(status=status.status)
    if status.total is not None:
        line.total, line.completed = status.total, status.completed or 0
    return line
