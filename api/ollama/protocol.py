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
- An empty prompt (or no messages) only loads the model: `done_reason: "load"`.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime, timezone
from typing import Any, Iterator, Sequence

from api.body import Fields
from api.errors import BadRequest, NotSupported
from api.runs import Choice, Collected
from api.sampling_fields import finite_logprob, generation_request, reject_present, sampling_params
from api.settings import ServerSettings
from api.framing import NDJSON_KEEPALIVE, ndjson_line
from runtime.events import Delta, Event, Finish, KeepAlive, TokenChoice, TokenLogprobs
from runtime.generation import CONTEXT_ERROR, CONTEXT_TRUNCATE
from runtime.sampling import MAX_TOP_LOGPROBS, SamplingParams

# Ollama's default options (its api/types.go DefaultOptions).
OLLAMA_DEFAULTS = SamplingParams(temperature=0.8, top_k=40, top_p=0.9, repeat_penalty=1.1, repeat_last_n=64)
# The Ollama API version whose routes and fields this server follows (`/api/version`).
OLLAMA_API_VERSION = "0.12.6"
# Models stay loaded for the server's lifetime: `expires_at` is never.
NEVER = "9999-12-31T23:59:59Z"


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


def _options(f: Fields, logprobs: bool, top_logprobs: int) -> tuple[SamplingParams, int | None, int | None, tuple[str, ...]]:
    options = f.obj("options")
    sampling = sampling_params(options, OLLAMA_DEFAULTS, logprobs, top_logprobs)
    num_predict = options.integer("num_predict", -1, minimum=-2)
    num_ctx = options.integer("num_ctx", None, minimum=1)
    return sampling, (None if num_predict < 0 else num_predict), num_ctx, options.strings("stop")


def _unsupported(f: Fields) -> None:
    format_value = f.data.get("format")
    if format_value not in (None, ""):
        raise NotSupported("'format' (JSON output) is not supported yet: it needs constrained decoding", param="format")
    if f.data.get("think") not in (None, False):
        raise NotSupported("'think' is not supported: this model has no thinking mode", param="think")
    reject_present(f, "images", "this engine reads text only")
    reject_present(f, "tools", "tool calling needs constrained decoding, which this server does not have")
    reject_present(f, "template", "custom prompt templates are not supported; the model's own chat template is used (or send raw: true)")
    reject_present(f, "suffix", "fill-in-the-middle needs a model and template that support it")


def _request(f: Fields, prompt: tuple[int, ...], chat: bool, model: str) -> Plan:
    logprobs = f.boolean("logprobs", False)
    top_logprobs = f.integer("top_logprobs", 0, minimum=0, maximum=MAX_TOP_LOGPROBS)
    sampling, max_tokens, num_ctx, stop = _options(f, logprobs, top_logprobs)
    request = generation_request(f, prompt, sampling, max_tokens, stop, context_length=num_ctx)
    policy = CONTEXT_TRUNCATE if f.boolean("truncate", True) else CONTEXT_ERROR
    request = replace(request, context_policy=policy)
    return Plan(model, Choice(0, 0, request), f.boolean("stream", True), logprobs, top_logprobs, chat)


def parse_generate(body: dict[str, Any], generator: Any, settings: ServerSettings) -> Plan:
    """A /api/generate body → what to run (or a load-only plan for an empty prompt)."""
    f = Fields(body)
    model = f.string("model", required=True)
    _unsupported(f)
    prompt = f.string("prompt", "")
    system = f.string("system")
    raw = f.boolean("raw", False)
    context = f.token_ids("context")
    f.obj("options")  # checked even when only loading
    if not prompt and not context:
        return Plan(model, None, f.boolean("stream", True), False, 0, chat=False)
    if raw or not generator.has_chat_template:
        ids = generator.tokenize(prompt) if prompt else []
    else:
        messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": prompt}]
        ids = generator.chat_prompt_ids(messages)
    return _request(f, tuple(context) + tuple(ids), chat=False, model=model)


def parse_chat(body: dict[str, Any], generator: Any, settings: ServerSettings) -> Plan:
    """A /api/chat body → what to run (or a load-only plan for no messages)."""
    f = Fields(body)
    model = f.string("model", required=True)
    _unsupported(f)
    messages = f.array("messages", max_items=settings.max_messages) or []
    f.obj("options")
    if not messages:
        return Plan(model, None, f.boolean("stream", True), False, 0, chat=True)
    for index, message in enumerate(messages):
        if isinstance(message, dict) and message.get("images"):
            raise NotSupported(f"messages[{index}]: images are not supported; this engine reads text only", param="messages")
    return _request(f, tuple(generator.chat_prompt_ids(messages)), chat=True, model=model)


# -- rendering -------------------------------------------------------------------------


def _entry(choice: TokenChoice) -> dict[str, Any]:
    return {"token": choice.token, "logprob": finite_logprob(choice.logprob), "bytes": list(choice.bytes)}


def logprobs_list(records: Sequence[TokenLogprobs]) -> list[dict[str, Any]]:
    return [{**_entry(r.chosen), "top_logprobs": [_entry(t) for t in r.top]} for r in records]


def _body(plan: Plan, text: str, created_at: str) -> dict[str, Any]:
    if plan.chat:
        return {"model": plan.model, "created_at": created_at, "message": {"role": "assistant", "content": text}}
    return {"model": plan.model, "created_at": created_at, "response": text}


def final_fields(plan: Plan, finish: Finish, context: list[int]) -> dict[str, Any]:
    usage = finish.usage
    fields: dict[str, Any] = {"done": True, "done_reason": finish.reason}
    if not plan.chat:
        fields["context"] = context
    fields.update(
        total_duration=usage.total_duration_ns,
        load_duration=usage.load_duration_ns,
        prompt_eval_count=usage.prompt_tokens,
        prompt_eval_duration=usage.prompt_eval_duration_ns,
        eval_count=usage.completion_tokens,
        eval_duration=usage.eval_duration_ns,
    )
    return fields


def load_response(plan: Plan, created_at: str) -> dict[str, Any]:
    """The answer to an empty prompt: the model is loaded, nothing generated."""
    return {**_body(plan, "", created_at), "done": True, "done_reason": "load"}


def _context(plan: Plan, generated: list[int]) -> list[int]:
    return list(plan.choice.request.prompt_ids) + generated


def response(plan: Plan, result: Collected, created_at: str) -> dict[str, Any]:
    """The whole answer in one object (stream: false)."""
    generated = [t for d in result.deltas for t in d.token_ids]
    body = {**_body(plan, result.text, created_at), **final_fields(plan, result.finish, _context(plan, generated))}
    if plan.logprobs:
        body["logprobs"] = logprobs_list([lp for d in result.deltas for lp in d.logprobs])
    return body


def stream(plan: Plan, events: Iterator[tuple[Choice, Event]], clock: Any) -> Iterator[bytes]:
    """NDJSON lines of a streamed answer: one per token with text, then the final one.

    NDJSON has no comment line (Ollama's clients parse every line as JSON), so a keep-alive
    is one space: JSON whitespace before the next line, which parsers skip.
    """
    generated: list[int] = []
    for _, event in events:
        if isinstance(event, KeepAlive):
            yield NDJSON_KEEPALIVE
            continue
        created_at = timestamp(clock())
        if isinstance(event, Delta):
            generated.extend(event.token_ids)
            if event.text or event.logprobs:
                line = {**_body(plan, event.text, created_at), "done": False}
                if plan.logprobs:
                    line["logprobs"] = logprobs_list(event.logprobs)
                yield ndjson_line(line)
        else:
            yield ndjson_line({**_body(plan, "", created_at), **final_fields(plan, event, _context(plan, generated))})


# -- embeddings and model listings -------------------------------------------------------


def parse_embed(body: dict[str, Any], max_inputs: int, dimension: int) -> tuple[str, list[str], bool]:
    """/api/embed: (model, texts, truncate)."""
    f = Fields(body)
    model = f.string("model", required=True)
    value = f.data.get("input")
    if isinstance(value, str):
        texts = [value]
    elif isinstance(value, list) and all(isinstance(i, str) for i in value):
        texts = list(value)
    elif value is None:
        raise BadRequest("'input' is required", param="input")
    else:
        raise BadRequest("'input' must be a string or an array of strings", param="input")
    if len(texts) > max_inputs:
        raise BadRequest(f"'input' has {len(texts)} entries; at most {max_inputs} are accepted", param="input")
    dimensions = f.integer("dimensions", None, minimum=1)
    if dimensions is not None and dimensions != dimension:
        raise NotSupported(f"'dimensions' must be the model's own {dimension}: this model was not trained for shorter vectors", param="dimensions")
    f.obj("options")
    return model, texts, f.boolean("truncate", True)


def parse_embeddings(body: dict[str, Any]) -> tuple[str, str]:
    """/api/embeddings (the older route): (model, prompt)."""
    f = Fields(body)
    f.obj("options")
    return f.string("model", required=True), f.string("prompt", "")


def details(info: Any) -> dict[str, Any]:
    return {
        "parent_model": "",
        "format": "onnx",
        "family": info.family,
        "families": [info.family],
        "parameter_size": info.parameter_size,
        "quantization_level": info.quantization_level,
    }


def tag_name(name: str) -> str:
    return name if ":" in name else f"{name}:latest"


def tags_entry(info: Any) -> dict[str, Any]:
    name = tag_name(info.name)
    return {"name": name, "model": name, "modified_at": info.modified_at, "size": info.size_bytes, "digest": info.digest, "details": details(info)}


def ps_entry(info: Any) -> dict[str, Any]:
    name = tag_name(info.name)
    return {
        "name": name,
        "model": name,
        "size": info.size_bytes,
        "digest": info.digest,
        "details": details(info),
        "expires_at": NEVER,
        "size_vram": info.size_bytes if any(p != "CPUExecutionProvider" for p in info.providers) else 0,
        "context_length": info.context_length,
    }


def show_response(info: Any) -> dict[str, Any]:
    family = info.family
    model_info: dict[str, Any] = {
        "general.architecture": family,
        "general.parameter_count": info.parameter_count,
        f"{family}.context_length": info.context_length,
        "appliance.precision": info.precision,
        "appliance.execution_providers": list(info.providers),
    }
    if info.embedding_dimension:
        model_info[f"{family}.embedding_length"] = info.embedding_dimension
    capabilities = ["embedding"] if info.embedding_dimension else ["completion"]
    return {
        "license": "",
        "modelfile": f"# ONNX engine {info.name} ({info.architecture}, {info.precision}), exported by the appliance\nFROM {info.name}\n",
        "parameters": "",
        "template": info.chat_template or "",
        "details": details(info),
        "model_info": model_info,
        "capabilities": capabilities,
        "modified_at": info.modified_at,
    }
