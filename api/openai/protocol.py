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
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np

from api.errors import BadRequest, NotSupported
from api.framing import SSE_DONE, SSE_KEEPALIVE, sse_frame
from api.openai import models as m
from api.registry import ModelInfo, TextModel
from api.runs import Choice, Collected, total_usage
from api.sampling_fields import check_limit, finite_logprob, with_choice_seed
from api.settings import ServerSettings
from api.wire import NO_TOOLS, TEXT_ONLY, stop_tuple
from runtime.events import Delta, Event, Finish, KeepAlive, TokenChoice, TokenLogprobs, Usage
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


def _n(body: m.ChatCompletionRequest | m.CompletionRequest, settings: ServerSettings) -> int:
    n = body.n or 1
    if n > settings.max_n:
        raise BadRequest(f"'n' must be at most {settings.max_n} (got {n})", param="n")
    return n


def _include_usage(body: m.ChatCompletionRequest | m.CompletionRequest) -> bool:
    return bool(body.stream_options and body.stream_options.include_usage)


def chat_messages(messages: Sequence[m.ChatMessage]) -> list[dict[str, str]]:
    """The conversation as the runtime's chat template takes it: role, text content, name."""
    result = []
    for index, message in enumerate(messages):
        for part_index, part in enumerate(message.content_parts()):
            if isinstance(part, m.NON_TEXT_PARTS):
                kind = type(part).__struct_config__.tag
                raise NotSupported(f"content parts of type {kind!r} are not supported: {TEXT_ONLY}", param=f"messages[{index}].content[{part_index}]")
        content = message.content
        text = content if isinstance(content, str) else "\n".join(p.text for p in message.content_parts() if isinstance(p, m.TextPart))
        item = {"role": message.role, "content": text}
        if message.name is not None:
            item["name"] = message.name
        result.append(item)
    return result


def _max_tokens(body: m.ChatCompletionRequest) -> int | None:
    return body.max_completion_tokens if body.max_completion_tokens is not None else body.max_tokens


def parse_chat(body: m.ChatCompletionRequest, generator: TextModel, settings: ServerSettings) -> Plan:
    """A /v1/chat/completions body → choices to run."""
    check_limit("messages", len(body.messages), settings.max_messages, "messages")
    if body.tools and body.tool_choice != "none":
        raise NotSupported(f"'tools' is not supported yet: {NO_TOOLS} (send tool_choice 'none' to pass them unused)", param="tools")
    logprobs = bool(body.logprobs)
    top_logprobs = body.top_logprobs or 0
    if top_logprobs and not logprobs:
        raise BadRequest("'top_logprobs' needs 'logprobs': true", param="top_logprobs")
    n = _n(body, settings)
    sampling = body.sampling(OPENAI_DEFAULTS, logprobs, top_logprobs)
    prompt = tuple(generator.chat_prompt_ids(chat_messages(body.messages)))
    request = body.request(prompt, sampling, _max_tokens(body), stop_tuple(body.stop))
    choices = [Choice(i, 0, with_choice_seed(request, i)) for i in range(n)]
    return Plan(body.model, choices, bool(body.stream), _include_usage(body), logprobs, top_logprobs)


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


def parse_completion(body: m.CompletionRequest, generator: TextModel, settings: ServerSettings) -> Plan:
    """A /v1/completions body → choices to run."""
    echo = bool(body.echo)
    if echo and body.logprobs is not None:
        raise NotSupported("'echo' with 'logprobs' needs the prompt's log-probabilities, which this server does not compute yet", param="echo")
    n = _n(body, settings)
    if body.best_of is not None and body.best_of != n:
        raise NotSupported("'best_of' other than n is not supported yet", param="best_of")
    prompts = [(tuple(generator.tokenize(p)), p) if isinstance(p, str) else (p, None) for p in prompt_items(body.prompt, "prompt", settings.max_inputs)]
    if len(prompts) * n > settings.max_inputs:
        raise BadRequest(f"{len(prompts)} prompts × n={n} is more than {settings.max_inputs} completions in one request", param="n")
    wants_logprobs = body.logprobs is not None
    sampling = body.sampling(OPENAI_DEFAULTS, wants_logprobs, body.logprobs or 0)
    choices: list[Choice] = []
    texts: dict[int, str] = {}
    for p, (ids, text) in enumerate(prompts):
        request = body.request(ids, sampling, body.max_tokens, stop_tuple(body.stop))
        choices.extend(Choice(p * n + i, p, with_choice_seed(request, i)) for i in range(n))
        if echo:
            texts[p] = text if text is not None else generator.detokenize(ids)
    return Plan(body.model, choices, bool(body.stream), _include_usage(body), wants_logprobs, body.logprobs or 0, texts)


# -- rendering -------------------------------------------------------------------------


def usage_reply(usage: Usage) -> m.Usage:
    return m.Usage(prompt_tokens=usage.prompt_tokens, completion_tokens=usage.completion_tokens, total_tokens=usage.total_tokens)


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

    def render(self, records: Sequence[TokenLogprobs], top: int) -> m.CompletionLogprobs:
        tokens, offsets = [], []
        for record in records:
            tokens.append(record.chosen.token)
            offsets.append(self.offset)
            self.offset += len(record.chosen.token)
        return m.CompletionLogprobs(
            tokens=tokens,
            token_logprobs=[finite_logprob(r.chosen.logprob) for r in records],
            top_logprobs=[{t.token: finite_logprob(t.logprob) for t in r.top[:top]} for r in records] if top else None,
            text_offset=offsets,
        )


def _fingerprint(digest: str) -> str:
    return f"fp_{digest[:10]}"


def _records(result: Collected) -> list[TokenLogprobs]:
    return [lp for d in result.deltas for lp in d.logprobs]


def _reason(finish: Finish) -> m.FinishReason:
    return "length" if finish.reason == "length" else "stop"


def chat_response(plan: Plan, results: Sequence[Collected], response_id: str, created: int, digest: str) -> m.ChatCompletion:
    choices = [
        m.ChatChoice(
            index=result.choice.index,
            message=m.AssistantMessage(content=result.text),
            logprobs=chat_logprobs(_records(result)) if plan.logprobs else None,
            finish_reason=_reason(result.finish),
        )
        for result in sorted(results, key=lambda r: r.choice.index)
    ]
    usage = usage_reply(total_usage([(r.choice, r.finish) for r in results]))
    return m.ChatCompletion(id=response_id, created=created, model=plan.model, system_fingerprint=_fingerprint(digest), choices=choices, usage=usage)


def completion_response(plan: Plan, results: Sequence[Collected], response_id: str, created: int, digest: str) -> m.Completion:
    choices = []
    for result in sorted(results, key=lambda r: r.choice.index):
        prefix = plan.echo.get(result.choice.prompt_index, "")
        logprobs = CompletionLogprobs(len(prefix)).render(_records(result), plan.top_logprobs) if plan.logprobs else None
        choices.append(m.CompletionChoice(text=prefix + result.text, index=result.choice.index, logprobs=logprobs, finish_reason=_reason(result.finish)))
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
                yield frame(m.ChatChunkChoice(index=choice.index, delta=m.ChatDelta(content=event.text), logprobs=logprobs))
        else:
            finishes.append((choice, event))
            yield frame(m.ChatChunkChoice(index=choice.index, delta=m.ChatDelta(), finish_reason=_reason(event)))
    if plan.include_usage:
        yield sse_frame(m.ChatCompletionChunk(id=response_id, created=created, model=plan.model, system_fingerprint=fingerprint, choices=[], usage=usage_reply(total_usage(finishes))))
    yield SSE_DONE


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
            if prefix:
                yield frame(m.CompletionChoice(text=prefix, index=choice.index, logprobs=None, finish_reason=None))
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
            embedding = [float(x) for x in vector]
        data.append(m.Embedding(index=index, embedding=embedding))
    return m.EmbeddingList(data=data, model=plan.model, usage=m.EmbeddingUsage(prompt_tokens=prompt_tokens, total_tokens=prompt_tokens))


def model_object(info: ModelInfo) -> m.Model:
    """A /v1/models entry: OpenAI's fields, then what this engine is."""
    return m.Model(
        id=info.name,
        created=info.created,
        task="feature-extraction" if info.task == "feature-extraction" else "text-generation",
        context_length=info.context_length,
        precision=info.precision,
        execution_provider=info.providers[0] if info.providers else None,
    )
