"""OpenAI's request and answer bodies, declared once: decoded from bytes, encoded to bytes, and documented.

Requests list every field of OpenAI's schema (and the llama.cpp / vLLM / Fireworks extras
in `GenerationExtras`); those this server cannot honour yet are in each class's `refused`
table and answered with a 400 naming them. Answers are `Reply` structs: the SSE frames of a
stream are encoded from them token by token.
"""

from __future__ import annotations

from typing import Annotated, ClassVar, Literal

from msgspec import Meta, field

from api.generation.fields import GenerationExtras
from api.wire import UNSET, Body, Refused, Reply, StopStrings, TokenIds, UnsetType
from runtime.sampling import MAX_TOP_LOGPROBS

# Legacy completions return at most this many alternatives per token (OpenAI allows 5; we allow 20).
MAX_COMPLETION_LOGPROBS = MAX_TOP_LOGPROBS

Role = Literal["system", "user", "assistant", "tool", "developer", "function"]
FinishReason = Literal["stop", "length", "tool_calls", "function_call"]


def _text_only(value: object) -> bool:
    return value == ["text"]




class TextPart(Body, kw_only=True, tag="text", tag_field="type"):
    text: str


class ImagePart(Body, kw_only=True, tag="image_url", tag_field="type"):
    image_url: object = None


class AudioPart(Body, kw_only=True, tag="input_audio", tag_field="type"):
    input_audio: object = None


class FilePart(Body, kw_only=True, tag="file", tag_field="type"):
    file: object = None


ContentPart = TextPart | ImagePart | AudioPart | FilePart


class FunctionCall(Body, kw_only=True):
    """A call the assistant made: the function's name and its arguments as JSON text."""

    name: str
    arguments: str = ""


class ToolCall(Body, kw_only=True):
    id: str | None = None
    type: Literal["function"] = "function"
    function: FunctionCall


class ChatMessage(Body, kw_only=True):
    """One message of the conversation; content as a string or text parts."""

    role: Role
    content: str | list[ContentPart] | None = None
    # Passed to the chat template, which may use it (SmolLM2's does not); a function result's function.
    name: str | None = None
    # An assistant message's calls, and a tool message's answer to one of them.
    tool_calls: list[ToolCall] | None = None
    tool_call_id: str | None = None
    # The legacy form of one call (role "function" answers it).
    function_call: FunctionCall | None = None
    audio: object = None
    refusal: str | None = None

    refused: ClassVar[dict[str, Refused]] = {
        "audio": Refused("this server produces and reads text only"),
        "refusal": Refused("an earlier assistant refusal cannot be rendered by the chat template; send it as content"),
    }

    def content_parts(self) -> list[ContentPart]:
        return self.content if isinstance(self.content, list) else []


# The part types we cannot read are refused where they are met (see protocol.chat_messages).
NON_TEXT_PARTS = (ImagePart, AudioPart, FilePart)


class StreamOptions(Body, kw_only=True):
    include_usage: bool | None = None
    include_obfuscation: bool | None = None

    refused: ClassVar[dict[str, Refused]] = {
        "include_obfuscation": Refused("stream obfuscation padding is not implemented", harmless=(False,)),
    }


JsonSchema = Annotated[dict[str, object] | bool, Meta(description="A JSON Schema (draft 2020-12 keywords that llguidance enforces).")]


class JsonSchemaFormat(Body, kw_only=True):
    name: str | None = None
    schema: JsonSchema | None = None
    strict: bool | None = None
    description: str | None = None


class ResponseFormat(Body, kw_only=True):
    """text (no constraint), json_object (any JSON object) or json_schema (JSON valid against the schema)."""

    type: Literal["text", "json_object", "json_schema"] = "text"
    json_schema: JsonSchemaFormat | None = None
    # Fireworks' spelling: {"type": "json_object", "schema": {...}}.
    schema: JsonSchema | None = None


class FunctionDefinition(Body, kw_only=True):
    name: Annotated[str, Meta(min_length=1, max_length=64, pattern="^[a-zA-Z0-9_.-]+$")]
    description: str | None = None
    parameters: JsonSchema | None = None
    strict: bool | None = None


class ToolDefinition(Body, kw_only=True):
    type: Literal["function"] = "function"
    function: FunctionDefinition


class FunctionName(Body, kw_only=True):
    name: str


class NamedToolChoice(Body, kw_only=True):
    type: Literal["function"] = "function"
    function: FunctionName


class _Generation(GenerationExtras, kw_only=True):
    """What chat completions and completions share."""

    model: str
    n: Annotated[int, Meta(ge=1)] | None = None
    stream: bool | None = None
    stream_options: StreamOptions | None = None
    stop: StopStrings | None = None
    user: str | None = None
    response_format: ResponseFormat | None = None


class ChatCompletionRequest(_Generation, kw_only=True):
    """POST /v1/chat/completions."""

    messages: Annotated[list[ChatMessage], Meta(min_length=1)]
    max_tokens: Annotated[int, Meta(ge=0)] | None = None
    max_completion_tokens: Annotated[int, Meta(ge=0, description="The newer name of max_tokens; it wins when both are given.")] | None = None
    logprobs: bool | None = None
    top_logprobs: Annotated[int, Meta(ge=0, le=MAX_TOP_LOGPROBS)] | None = None
    tools: list[ToolDefinition] | None = None
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = None
    parallel_tool_calls: bool | None = None
    # The legacy form of tools and tool_choice.
    functions: list[FunctionDefinition] | None = None
    function_call: Literal["none", "auto"] | FunctionName | None = None
    audio: object = None
    modalities: list[str] | None = None
    prediction: object = None
    web_search_options: object = None
    reasoning_effort: str | None = None
    verbosity: str | None = None
    store: bool | None = None
    metadata: dict[str, str] | None = None
    service_tier: str | None = None
    # Identifiers for the caller's own bookkeeping: nothing here depends on them.
    prompt_cache_key: str | None = None
    safety_identifier: str | None = None

    refused: ClassVar[dict[str, Refused]] = {
        **_Generation.refused,
        "audio": Refused("this server produces text only"),
        "modalities": Refused("this server produces text only", allows=_text_only),
        "prediction": Refused("predicted outputs are not implemented"),
        "web_search_options": Refused("this server has no web search", empty_asks=True),
        "reasoning_effort": Refused("this model has no reasoning mode"),
        "verbosity": Refused("this model has no verbosity control"),
        "store": Refused("this server does not store completions", harmless=(False,)),
        "metadata": Refused("metadata is kept with stored completions, which this server does not store"),
        "service_tier": Refused("this server has one service tier", harmless=("auto", "default")),
    }


class CompletionRequest(_Generation, kw_only=True):
    """POST /v1/completions."""

    prompt: str | Annotated[list[str | TokenIds | int], Meta(min_length=1)]
    max_tokens: Annotated[int, Meta(ge=0)] | None = 16
    logprobs: Annotated[int, Meta(ge=0, le=MAX_COMPLETION_LOGPROBS)] | None = None
    echo: Annotated[bool, Meta(description="Return the prompt before the completion; with logprobs, the prompt's tokens get theirs too (the first null).")] | None = None
    best_of: Annotated[int, Meta(ge=1, description="Generate this many per prompt (at least n, default n) and return the n with the highest sum of token log-probabilities; not with stream.")] | None = None
    suffix: Annotated[str, Meta(description="Fill-in-the-middle: the text after the completion, for models with FIM tokens (prefix-suffix-middle).")] | None = None


class EmbeddingRequest(Body, kw_only=True):
    """POST /v1/embeddings."""

    model: str
    input: str | Annotated[list[str | TokenIds | int], Meta(min_length=1)]
    encoding_format: Literal["float", "base64"] | None = None
    dimensions: Annotated[int, Meta(ge=1, description="Only the model's own dimension is supported.")] | None = None
    user: str | None = None
    truncate: Annotated[bool, Meta(description="Cut inputs longer than the model's limit instead of refusing them.")] | None = None


# -- answers -------------------------------------------------------------------------------


class PromptTokensDetails(Reply, kw_only=True):
    cached_tokens: int  # prompt tokens served from the prefix cache


class Usage(Reply, kw_only=True):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    prompt_tokens_details: PromptTokensDetails | UnsetType = UNSET


class TopLogprob(Reply, kw_only=True):
    token: str
    logprob: float
    bytes: list[int]


class TokenLogprob(Reply, kw_only=True):
    token: str
    logprob: float
    bytes: list[int]
    top_logprobs: list[TopLogprob]


class ChatLogprobs(Reply, kw_only=True):
    content: list[TokenLogprob]
    refusal: None = None


class CompletionLogprobs(Reply, kw_only=True):
    tokens: list[str]
    # null for the first prompt token when the prompt is echoed (nothing precedes it)
    token_logprobs: list[float | None]
    top_logprobs: list[dict[str, float] | None] | None
    text_offset: list[int]


class FunctionCallReply(Reply, kw_only=True):
    name: str
    arguments: str


class ToolCallReply(Reply, kw_only=True):
    id: str
    type: Literal["function"] = "function"
    function: FunctionCallReply


class AssistantMessage(Reply, kw_only=True):
    """The answer: text, or (content null) the tool calls the model made."""

    role: Literal["assistant"] = "assistant"
    content: str | None = ""
    refusal: None = None
    tool_calls: list[ToolCallReply] | UnsetType = UNSET
    # The legacy form, when the request gave `functions`.
    function_call: FunctionCallReply | UnsetType = UNSET


class ChatChoice(Reply, kw_only=True):
    index: int
    message: AssistantMessage
    logprobs: ChatLogprobs | None
    finish_reason: FinishReason


class ChatCompletion(Reply, kw_only=True):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    system_fingerprint: str
    choices: list[ChatChoice]
    usage: Usage


class FunctionCallDelta(Reply, kw_only=True):
    name: str | UnsetType = UNSET
    arguments: str = ""


class ToolCallDelta(Reply, kw_only=True):
    """A piece of one call: id, type and name in its first delta only, then arguments text."""

    index: int
    id: str | UnsetType = UNSET
    type: Literal["function"] | UnsetType = UNSET
    function: FunctionCallDelta


class ChatDelta(Reply, kw_only=True):
    """The first chunk of a choice carries the role; the last an empty delta."""

    role: Literal["assistant"] | UnsetType = UNSET
    content: str | UnsetType = UNSET
    tool_calls: list[ToolCallDelta] | UnsetType = UNSET
    function_call: FunctionCallDelta | UnsetType = UNSET


class ChatChunkChoice(Reply, kw_only=True):
    index: int
    delta: ChatDelta
    logprobs: ChatLogprobs | None = None
    finish_reason: FinishReason | None = None


class ChatCompletionChunk(Reply, kw_only=True):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    system_fingerprint: str
    choices: list[ChatChunkChoice]
    # With stream_options.include_usage: null on every chunk but the last, whose `choices` is empty.
    usage: Usage | None | UnsetType = UNSET


class CompletionChoice(Reply, kw_only=True):
    text: str
    index: int
    logprobs: CompletionLogprobs | None
    finish_reason: FinishReason | None


class _CompletionHead(Reply, kw_only=True):
    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    system_fingerprint: str
    choices: list[CompletionChoice]


class Completion(_CompletionHead, kw_only=True):
    usage: Usage


class CompletionChunk(_CompletionHead, kw_only=True):
    """A streamed completion frame: same object name, `usage` only with include_usage."""

    usage: Usage | None | UnsetType = UNSET


class Embedding(Reply, kw_only=True):
    object: Literal["embedding"] = "embedding"
    index: int
    # Floats, or with encoding_format base64 little-endian float32 values, base64-encoded.
    embedding: list[float] | str


class EmbeddingUsage(Reply, kw_only=True):
    prompt_tokens: int
    total_tokens: int


class EmbeddingList(Reply, kw_only=True):
    object: Literal["list"] = "list"
    data: list[Embedding]
    model: str
    usage: EmbeddingUsage


class Model(Reply, kw_only=True):
    """A /v1/models entry: OpenAI's fields, then what this engine is."""

    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "appliance"
    task: Literal["text-generation", "feature-extraction", "rerank"]
    context_length: int
    precision: str
    execution_provider: str | None


class ModelList(Reply, kw_only=True):
    object: Literal["list"] = "list"
    data: list[Model] = field(default_factory=list)
