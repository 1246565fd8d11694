"""OpenAI's wire format, as pure translation: request JSON → runtime requests, events → JSON.

Chat completions and (legacy) completions share the generation machinery; they differ in
how the prompt is given, how text and log-probabilities are written, and the object names.
Streams are SSE frames: every chunk carries the same `id`, `created` and `model`; chat
streams open each choice with a `delta.role` chunk; a chunk with `finish_reason` closes
each choice; with `stream_options.include_usage` every chunk has `"usage": null` and a
last chunk with empty `choices` carries the usage; `data: [DONE]` ends the stream.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass, field
from typing import Any, Iterator, Sequence

import numpy as np

from api.body import Fields
from api.errors import BadRequest, NotSupported
from api.runs import Choice, Collected, total_usage
from api.sampling_fields import (
    MAX_STOP_STRINGS,
    finite_logprob,
    generation_request,
    reject_present,
    sampling_params,
    with_choice_seed,
)
from api.settings import ServerSettings
from api.framing import SSE_DONE, SSE_KEEPALIVE, sse_frame
from runtime.events import Delta, Event, Finish, KeepAlive, TokenChoice, TokenLogprobs, Usage
from runtime.sampling import MAX_TOP_LOGPROBS, SamplingParams

# OpenAI's defaults: temperature 1, top_p 1, no penalties.
OPENAI_DEFAULTS = SamplingParams()
# Legacy completions return at most this many alternatives per token (OpenAI allows 5; we allow 20).
MAX_COMPLETION_LOGPROBS = MAX_TOP_LOGPROBS


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


def _max_tokens(f: Fields) -> int | None:
    newer = f.integer("max_completion_tokens", None, minimum=0)
    return newer if newer is not None else f.integer("max_tokens", None, minimum=0)


def _common(f: Fields, settings: ServerSettings) -> tuple[int, bool, bool]:
    n = f.integer("n", 1, minimum=1, maximum=settings.max_n)
    stream = f.boolean("stream", False)
    include_usage = f.obj("stream_options").boolean("include_usage", False)
    return n, stream, include_usage


def parse_chat(body: dict[str, Any], generator: Any, settings: ServerSettings) -> Plan:
    """A /v1/chat/completions body → choices to run."""
    f = Fields(body)
    model = f.string("model", required=True)
    messages = f.array("messages", required=True, max_items=settings.max_messages)
    if not messages:
        raise BadRequest("'messages' must hold at least one message", param="messages")
    if f.data.get("tool_choice") != "none":
        reject_present(f, "tools", "tool calling needs constrained decoding, which this server does not have")
    reject_present(f, "functions", "function calling needs constrained decoding, which this server does not have")
    if f.obj("response_format").string("type", "text") != "text":
        raise NotSupported("'response_format' other than text is not supported yet: JSON output needs constrained decoding", param="response_format")
    reject_present(f, "audio", "this server produces text only")
    logprobs = f.boolean("logprobs", False)
    top_logprobs = f.integer("top_logprobs", 0, minimum=0, maximum=MAX_TOP_LOGPROBS)
    if top_logprobs and not logprobs:
        raise BadRequest("'top_logprobs' needs 'logprobs': true", param="top_logprobs")
    n, stream, include_usage = _common(f, settings)
    sampling = sampling_params(f, OPENAI_DEFAULTS, logprobs, top_logprobs)
    stop = f.strings("stop", MAX_STOP_STRINGS)
    prompt = tuple(generator.chat_prompt_ids(messages))
    request = generation_request(f, prompt, sampling, _max_tokens(f), stop)
    choices = [Choice(i, 0, with_choice_seed(request, i)) for i in range(n)]
    return Plan(model, choices, stream, include_usage, logprobs, top_logprobs)


def _prompts(f: Fields, generator: Any, settings: ServerSettings) -> list[tuple[tuple[int, ...], str | None]]:
    """Completions' `prompt`: a string, strings, token ids, or lists of token ids → (ids, text if given as text)."""
    value = f.data.get("prompt")
    if value is None:
        raise BadRequest("'prompt' is required", param="prompt")
    wrong = BadRequest("'prompt' must be a string, an array of strings, an array of token ids or an array of such arrays", param="prompt")
    if isinstance(value, str):
        items: list[Any] = [value]
    elif isinstance(value, list) and value and all(isinstance(i, int) and not isinstance(i, bool) for i in value):
        items = [value]
    elif isinstance(value, list) and value:
        items = value
    else:
        raise BadRequest("'prompt' must not be empty", param="prompt") if value == [] else wrong
    if len(items) > settings.max_inputs:
        raise BadRequest(f"'prompt' has {len(items)} prompts; at most {settings.max_inputs} are accepted", param="prompt")
    prompts = []
    for item in items:
        if isinstance(item, str):
            prompts.append((tuple(generator.tokenize(item)), item))
        elif isinstance(item, list) and item and all(isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in item):
            prompts.append((tuple(item), None))
        else:
            raise wrong
    return prompts


def parse_completion(body: dict[str, Any], generator: Any, settings: ServerSettings) -> Plan:
    """A /v1/completions body → choices to run."""
    f = Fields(body)
    model = f.string("model", required=True)
    reject_present(f, "suffix", "fill-in-the-middle needs a model and template that support it")
    logprobs_count = f.integer("logprobs", None, minimum=0, maximum=MAX_COMPLETION_LOGPROBS)
    echo = f.boolean("echo", False)
    if echo and logprobs_count is not None:
        raise NotSupported("'echo' with 'logprobs' needs the prompt's log-probabilities, which this server does not compute yet", param="echo")
    n, stream, include_usage = _common(f, settings)
    best_of = f.integer("best_of", None, minimum=1)
    if best_of is not None and best_of != n:
        raise NotSupported("'best_of' other than n is not supported yet", param="best_of")
    prompts = _prompts(f, generator, settings)
    if len(prompts) * n > settings.max_inputs:
        raise BadRequest(f"{len(prompts)} prompts × n={n} is more than {settings.max_inputs} completions in one request", param="n")
    wants_logprobs = logprobs_count is not None
    sampling = sampling_params(f, OPENAI_DEFAULTS, wants_logprobs, logprobs_count or 0)
    stop, max_tokens = f.strings("stop", MAX_STOP_STRINGS), f.integer("max_tokens", 16, minimum=0)
    choices, texts = [], {}
    for p, (ids, text) in enumerate(prompts):
        request = generation_request(f, ids, sampling, max_tokens, stop)
        choices.extend(Choice(p * n + i, p, with_choice_seed(request, i)) for i in range(n))
        if echo:
            texts[p] = text if text is not None else generator.detokenize(ids)
    return Plan(model, choices, stream, include_usage, wants_logprobs, logprobs_count or 0, texts)


# -- rendering -------------------------------------------------------------------------


def usage_object(usage: Usage) -> dict[str, Any]:
    return {"prompt_tokens": usage.prompt_tokens, "completion_tokens": usage.completion_tokens, "total_tokens": usage.total_tokens}


def _token_entry(choice: TokenChoice) -> dict[str, Any]:
    return {"token": choice.token, "logprob": finite_logprob(choice.logprob), "bytes": list(choice.bytes)}


def chat_logprobs(records: Sequence[TokenLogprobs]) -> dict[str, Any]:
    content = [{**_token_entry(r.chosen), "top_logprobs": [_token_entry(t) for t in r.top]} for r in records]
    return {"content": content, "refusal": None}


class CompletionLogprobs:
    """Legacy completions' log-probabilities, with each token's character offset in the choice's text."""

    def __init__(self, offset: int = 0) -> None:
        self.offset = offset

    def render(self, records: Sequence[TokenLogprobs], top: int) -> dict[str, Any]:
        tokens, offsets = [], []
        for record in records:
            tokens.append(record.chosen.token)
            offsets.append(self.offset)
            self.offset += len(record.chosen.token)
        return {
            "tokens": tokens,
            "token_logprobs": [finite_logprob(r.chosen.logprob) for r in records],
            "top_logprobs": [{t.token: finite_logprob(t.logprob) for t in r.top[:top]} for r in records] if top else None,
            "text_offset": offsets,
        }


def _fingerprint(digest: str) -> str:
    return f"fp_{digest[:10]}"


def _response(plan: Plan, obj: str, choices: list[dict[str, Any]], results: Sequence[Collected], response_id: str, created: int, digest: str) -> dict[str, Any]:
    """The envelope of a whole (non-streamed) answer."""
    usage = total_usage([(r.choice, r.finish) for r in results])
    head = {"id": response_id, "object": obj, "created": created, "model": plan.model, "system_fingerprint": _fingerprint(digest)}
    return {**head, "choices": choices, "usage": usage_object(usage)}


def _records(result: Collected) -> list[TokenLogprobs]:
    return [lp for d in result.deltas for lp in d.logprobs]


def chat_response(plan: Plan, results: Sequence[Collected], response_id: str, created: int, digest: str) -> dict[str, Any]:
    choices = [
        {
            "index": result.choice.index,
            "message": {"role": "assistant", "content": result.text, "refusal": None},
            "logprobs": chat_logprobs(_records(result)) if plan.logprobs else None,
            "finish_reason": result.finish.reason,
        }
        for result in sorted(results, key=lambda r: r.choice.index)
    ]
    return _response(plan, "chat.completion", choices, results, response_id, created, digest)


def completion_response(plan: Plan, results: Sequence[Collected], response_id: str, created: int, digest: str) -> dict[str, Any]:
    choices = []
    for result in sorted(results, key=lambda r: r.choice.index):
        prefix = plan.echo.get(result.choice.prompt_index, "")
        logprobs = CompletionLogprobs(len(prefix)).render(_records(result), plan.top_logprobs) if plan.logprobs else None
        choices.append({"text": prefix + result.text, "index": result.choice.index, "logprobs": logprobs, "finish_reason": result.finish.reason})
    return _response(plan, "text_completion", choices, results, response_id, created, digest)


class _Chunks:
    """Chunk envelopes of one stream: the same id, created, model and fingerprint on each."""

    def __init__(self, plan: Plan, obj: str, response_id: str, created: int, digest: str) -> None:
        self.plan = plan
        self.head = {"id": response_id, "object": obj, "created": created, "model": plan.model, "system_fingerprint": _fingerprint(digest)}

    def frame(self, choices: list[dict[str, Any]]) -> bytes:
        chunk = {**self.head, "choices": choices}
        if self.plan.include_usage:
            chunk["usage"] = None
        return sse_frame(chunk)

    def usage_frame(self, finishes: list[tuple[Choice, Finish]]) -> bytes:
        return sse_frame({**self.head, "choices": [], "usage": usage_object(total_usage(finishes))})


def chat_stream(plan: Plan, events: Iterator[tuple[Choice, Event]], response_id: str, created: int, digest: str) -> Iterator[bytes]:
    """SSE frames of a streamed chat completion."""
    chunks = _Chunks(plan, "chat.completion.chunk", response_id, created, digest)
    finishes: list[tuple[Choice, Finish]] = []

    def role_chunk(index: int) -> bytes:
        return chunks.frame([{"index": index, "delta": {"role": "assistant", "content": ""}, "logprobs": None, "finish_reason": None}])

    # The first choice's role chunk goes out before its prompt is evaluated; later ones as they start.
    opened = {plan.choices[0].index}
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
                yield chunks.frame([{"index": choice.index, "delta": {"content": event.text}, "logprobs": logprobs, "finish_reason": None}])
        else:
            finishes.append((choice, event))
            yield chunks.frame([{"index": choice.index, "delta": {}, "logprobs": None, "finish_reason": event.reason}])
    if plan.include_usage:
        yield chunks.usage_frame(finishes)
    yield SSE_DONE


def completion_stream(plan: Plan, events: Iterator[tuple[Choice, Event]], response_id: str, created: int, digest: str) -> Iterator[bytes]:
    """SSE frames of a streamed (legacy) completion."""
    chunks = _Chunks(plan, "text_completion", response_id, created, digest)
    finishes: list[tuple[Choice, Finish]] = []
    offsets: dict[int, CompletionLogprobs] = {}
    for choice, event in events:
        if isinstance(event, KeepAlive):
            yield SSE_KEEPALIVE
            continue
        if choice.index not in offsets:
            prefix = plan.echo.get(choice.prompt_index, "")
            offsets[choice.index] = CompletionLogprobs(len(prefix))
            if prefix:
                yield chunks.frame([{"text": prefix, "index": choice.index, "logprobs": None, "finish_reason": None}])
        if isinstance(event, Delta):
            if event.text or event.logprobs:
                logprobs = offsets[choice.index].render(event.logprobs, plan.top_logprobs) if plan.logprobs else None
                yield chunks.frame([{"text": event.text, "index": choice.index, "logprobs": logprobs, "finish_reason": None}])
        else:
            finishes.append((choice, event))
            yield chunks.frame([{"text": "", "index": choice.index, "logprobs": None, "finish_reason": event.reason}])
    if plan.include_usage:
        yield chunks.usage_frame(finishes)
    yield SSE_DONE


# -- embeddings and models ------------------------------------------------------------


@dataclass
class EmbeddingPlan:
    model: str
    texts: list[str] | None
    token_ids: list[tuple[int, ...]] | None
    base64: bool
    truncate: bool


def parse_embeddings(body: dict[str, Any], settings: ServerSettings, dimension: int) -> EmbeddingPlan:
    f = Fields(body)
    model = f.string("model", required=True)
    value = f.data.get("input")
    wrong = BadRequest("'input' must be a string, an array of strings, an array of token ids or an array of such arrays", param="input")
    texts: list[str] | None = None
    ids: list[tuple[int, ...]] | None = None
    if isinstance(value, str):
        texts = [value]
    elif isinstance(value, list) and value and all(isinstance(i, str) for i in value):
        texts = list(value)
    elif isinstance(value, list) and value and all(isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in value):
        ids = [tuple(value)]
    elif isinstance(value, list) and value and all(
        isinstance(item, list) and item and all(isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in item) for item in value
    ):
        ids = [tuple(item) for item in value]
    elif value is None:
        raise BadRequest("'input' is required", param="input")
    elif value == []:
        raise BadRequest("'input' must not be empty", param="input")
    else:
        raise wrong
    count = len(texts if texts is not None else ids)
    if count > settings.max_inputs:
        raise BadRequest(f"'input' has {count} entries; at most {settings.max_inputs} are accepted", param="input")
    encoding = f.string("encoding_format", "float")
    if encoding not in ("float", "base64"):
        raise BadRequest(f"'encoding_format' must be 'float' or 'base64' (got {encoding!r})", param="encoding_format")
    dimensions = f.integer("dimensions", None, minimum=1)
    if dimensions is not None and dimensions != dimension:
        raise NotSupported(f"'dimensions' must be the model's own {dimension}: this model was not trained for shorter vectors", param="dimensions")
    f.string("user")
    return EmbeddingPlan(model, texts, ids, encoding == "base64", f.boolean("truncate", False))


def embeddings_response(plan: EmbeddingPlan, vectors: np.ndarray, prompt_tokens: int) -> dict[str, Any]:
    data = []
    for index, vector in enumerate(vectors):
        if plan.base64:
            embedding: Any = base64.b64encode(np.ascontiguousarray(vector, dtype="<f4").tobytes()).decode("ascii")
        else:
            embedding = [float(x) for x in vector]
        data.append({"object": "embedding", "index": index, "embedding": embedding})
    return {"object": "list", "data": data, "model": plan.model, "usage": {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens}}


def model_object(info: Any) -> dict[str, Any]:
    """A /v1/models entry: OpenAI's fields, then what this engine is."""
    return {
        "id": info.name,
        "object": "model",
        "created": info.created,
        "owned_by": "appliance",
        "task": info.task,
        "context_length": info.context_length,
        "precision": info.precision,
        "execution_provider": info.providers[0] if info.providers else None,
    }


def model_name(body: dict[str, Any]) -> str:
    return Fields(body).string("model", required=True)
