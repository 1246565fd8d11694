"""Ollama's request and answer bodies, declared once: decoded from bytes, encoded to bytes, and documented.

Requests list every field of Ollama's API (its api/types.go), the runner options included;
those this server cannot honour are in each class's `refused` table and answered with a
400 naming them.
"""

from __future__ import annotations

from typing import Annotated, ClassVar, Literal

from msgspec import Meta

from api.generation.fields import GenerationExtras, SamplingFields
from api.wire import TEXT_ONLY, UNSET, Body, Refused, Reply, StopStrings, TokenIds, UnsetType

_FIXED = "it is fixed when the server starts (see `appliance serve --help`)"


# keep_alive: how long the model stays loaded after this request (api/models/residency.py).
KeepAlive = Annotated[
    str | float,
    Meta(description='How long the model stays loaded after this request: a duration ("5m", "30s", "1h"), seconds, negative for ever, 0 to unload it.'),
]


class Options(SamplingFields, kw_only=True):
    """`options`: sampling controls with Ollama's defaults, and the runner's settings."""

    num_predict: Annotated[int, Meta(ge=-2, description="Most tokens to generate; -1 or -2: no limit.")] | None = None
    num_ctx: Annotated[int, Meta(ge=1, description="A context smaller than the engine's.")] | None = None
    stop: StopStrings | None = None
    num_keep: int | None = None
    penalize_newline: bool | None = None
    num_batch: int | None = None
    num_gpu: int | None = None
    main_gpu: int | None = None
    num_thread: int | None = None
    low_vram: bool | None = None
    f16_kv: bool | None = None
    logits_all: bool | None = None
    vocab_only: bool | None = None
    use_mmap: bool | None = None
    use_mlock: bool | None = None
    numa: bool | None = None

    refused: ClassVar[dict[str, Refused]] = {
        **SamplingFields.refused,
        "num_keep": Refused("the context is never shifted here, so there is nothing to keep; a full context ends generation ('length')"),
        "penalize_newline": Refused("newlines are not penalised separately; use repeat_penalty", harmless=(False,)),
        **{name: Refused(_FIXED) for name in ("num_batch", "num_gpu", "main_gpu", "num_thread", "low_vram", "f16_kv", "logits_all", "vocab_only", "use_mmap", "use_mlock", "numa")},
    }


class _Generation(GenerationExtras, kw_only=True):
    model: str
    options: Options | None = None
    stream: bool | None = None
    format: Annotated[Literal["json", ""] | dict[str, object], Meta(description='"json" for a JSON object, or a JSON Schema the output must match.')] | None = None
    keep_alive: KeepAlive | None = None
    think: bool | str | None = None
    truncate: bool | None = None
    shift: bool | None = None
    logprobs: bool | None = None
    top_logprobs: Annotated[int, Meta(ge=0, le=20)] | None = None

    refused: ClassVar[dict[str, Refused]] = {
        **GenerationExtras.refused,
        "think": Refused("this model has no thinking mode", harmless=(False,)),
        "shift": Refused("the context is never shifted: a full context ends generation ('length'); send shift false", harmless=(False,)),
    }


class GenerateRequest(_Generation, kw_only=True):
    """POST /api/generate."""

    prompt: str | None = None
    system: str | None = None
    raw: bool | None = None
    context: TokenIds | None = None
    suffix: Annotated[str, Meta(description="Fill-in-the-middle: the text after the completion, for models with FIM tokens (prefix-suffix-middle).")] | None = None
    images: list[str] | None = None
    template: str | None = None

    refused: ClassVar[dict[str, Refused]] = {
        **_Generation.refused,
        "images": Refused(TEXT_ONLY),
        "template": Refused("custom prompt templates are not supported; the model's own chat template is used (or send raw: true)"),
    }


class FunctionCall(Body, kw_only=True):
    index: int | None = None
    name: str
    arguments: dict[str, object] | None = None


class ToolCall(Body, kw_only=True):
    id: str | None = None
    function: FunctionCall


class Message(Body, kw_only=True):
    role: Literal["system", "user", "assistant", "tool", "developer"]
    content: str | None = None
    images: list[str] | None = None
    # An assistant message's calls; a tool message names the tool it answers.
    tool_calls: list[ToolCall] | None = None
    tool_name: str | None = None
    thinking: str | None = None

    refused: ClassVar[dict[str, Refused]] = {
        "images": Refused(TEXT_ONLY),
        "thinking": Refused("this model has no thinking mode"),
    }


class FunctionDefinition(Body, kw_only=True):
    name: Annotated[str, Meta(min_length=1)]
    description: str | None = None
    parameters: dict[str, object] | None = None


class ToolDefinition(Body, kw_only=True):
    type: Literal["function"] = "function"
    function: FunctionDefinition


class ChatRequest(_Generation, kw_only=True):
    """POST /api/chat."""

    messages: list[Message] | None = None
    tools: list[ToolDefinition] | None = None


def _no_options(value: object) -> bool:
    return isinstance(value, Options) and all(getattr(value, name) is None for name in value.__struct_fields__)


_EMBED_OPTIONS = Refused("sampling and runner options do not apply to embeddings", allows=_no_options)


class EmbedRequest(Body, kw_only=True):
    """POST /api/embed."""

    model: str
    input: str | list[str]
    truncate: bool | None = None
    dimensions: Annotated[int, Meta(ge=1)] | None = None
    options: Options | None = None
    keep_alive: KeepAlive | None = None

    refused: ClassVar[dict[str, Refused]] = {"options": _EMBED_OPTIONS}


class EmbeddingsRequest(Body, kw_only=True):
    """POST /api/embeddings (the older route)."""

    model: str
    prompt: str | None = None
    options: Options | None = None
    keep_alive: KeepAlive | None = None

    refused: ClassVar[dict[str, Refused]] = {"options": _EMBED_OPTIONS}


class ShowRequest(Body, kw_only=True):
    """POST /api/show; older clients send `name`."""

    model: str | None = None
    name: str | None = None
    verbose: bool | None = None

    refused: ClassVar[dict[str, Refused]] = {"verbose": Refused("the verbose tensor and tokenizer listing is not available", harmless=(False,))}


class PullRequest(Body, kw_only=True):
    """POST /api/pull; older clients send `name`."""

    model: str | None = None
    name: str | None = None
    insecure: bool | None = None
    stream: bool | None = None
    username: str | None = None
    password: str | None = None

    refused: ClassVar[dict[str, Refused]] = {
        "insecure": Refused("pulls fetch from PyPI over TLS and check each package's sha256; there is no insecure mode", harmless=(False,)),
        "username": Refused("pulls fetch public packages from PyPI: there is no registry to sign in to"),
        "password": Refused("pulls fetch public packages from PyPI: there is no registry to sign in to"),
    }


class DeleteRequest(Body, kw_only=True):
    """DELETE /api/delete; older clients send `name`."""

    model: str | None = None
    name: str | None = None


class CopyRequest(Body, kw_only=True):
    """POST /api/copy."""

    source: str
    destination: str


# -- answers -------------------------------------------------------------------------------


class ProgressResponse(Reply, kw_only=True):
    """/api/pull: one status line of a stream (the last is `{"status": "success"}`), or that last one alone."""

    status: str
    digest: str | UnsetType = UNSET
    total: int | UnsetType = UNSET
    completed: int | UnsetType = UNSET


class Logprob(Reply, kw_only=True):
    token: str
    logprob: float
    bytes: list[int]


class TokenLogprob(Logprob, kw_only=True):
    top_logprobs: list[Logprob]


class FunctionCallReply(Reply, kw_only=True):
    index: int
    name: str
    arguments: dict[str, object]


class ToolCallReply(Reply, kw_only=True):
    id: str
    function: FunctionCallReply


class AssistantMessage(Reply, kw_only=True):
    role: Literal["assistant"] = "assistant"
    content: str
    # Each call comes whole, in one line of a stream.
    tool_calls: list[ToolCallReply] | UnsetType = UNSET


class _Answer(Reply, kw_only=True):
    """A generate or chat line: `response` (generate) or `message` (chat), then the final fields when done."""

    model: str
    created_at: str
    response: str | UnsetType = UNSET
    message: AssistantMessage | UnsetType = UNSET
    done: bool
    done_reason: str | UnsetType = UNSET
    context: list[int] | UnsetType = UNSET
    total_duration: int | UnsetType = UNSET
    load_duration: int | UnsetType = UNSET
    prompt_eval_count: int | UnsetType = UNSET
    prompt_eval_duration: int | UnsetType = UNSET
    eval_count: int | UnsetType = UNSET
    eval_duration: int | UnsetType = UNSET
    logprobs: list[TokenLogprob] | UnsetType = UNSET


class GenerateResponse(_Answer, kw_only=True):
    """/api/generate: the whole answer, or one NDJSON line of a stream."""


class ChatResponse(_Answer, kw_only=True):
    """/api/chat: the whole answer, or one NDJSON line of a stream."""


class EmbedResponse(Reply, kw_only=True):
    model: str
    embeddings: list[list[float]]
    total_duration: int
    load_duration: int
    prompt_eval_count: int


class EmbeddingsResponse(Reply, kw_only=True):
    embedding: list[float]


class Details(Reply, kw_only=True):
    parent_model: str = ""
    format: str = "onnx"
    family: str
    families: list[str]
    parameter_size: str
    quantization_level: str


class Tag(Reply, kw_only=True):
    """An /api/tags entry, in Ollama's field order."""

    name: str
    model: str
    modified_at: str
    size: int
    digest: str
    details: Details


class TagList(Reply, kw_only=True):
    models: list[Tag]


class Running(Reply, kw_only=True):
    """An /api/ps entry, in Ollama's field order."""

    name: str
    model: str
    size: int
    digest: str
    details: Details
    expires_at: str
    size_vram: int
    context_length: int


class RunningList(Reply, kw_only=True):
    models: list[Running]


class ShowResponse(Reply, kw_only=True):
    license: str = ""
    modelfile: str
    parameters: str = ""
    template: str
    details: Details
    model_info: dict[str, str | int | list[str]]
    capabilities: list[str]
    modified_at: str


class Version(Reply, kw_only=True):
    version: str
    appliance: str
