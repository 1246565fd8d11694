"""The Responses API's request and answer bodies (POST /v1/responses, GET/DELETE /v1/responses/{id}).

Requests declare every field of OpenAI's schema; those this server cannot honour are in the
`refused` tables (a 400 naming them). The sampling extras of llama.cpp-style servers
(`top_k`, `min_p`, `seed`, `grammar`, ...) are accepted as on chat completions.

Input items are decoded loosely (a message may omit its `type`) and checked item by item in
`api/openai/responses.py`, so that an error names the item: `input[2].content[0].type`.
"""

from __future__ import annotations

from typing import Annotated, Any, ClassVar, Literal

from msgspec import Meta

from api.generation.fields import GenerationExtras
from api.openai.bodies import MAX_TOP_LOGPROBS, JsonSchema, TokenLogprob
from api.wire import UNSET, Body, Refused, Reply, UnsetType

# What `include` may ask for: the only extra output a text model has.
INCLUDE_LOGPROBS = "message.output_text.logprobs"


def _no_reasoning(value: object) -> bool:
    """`reasoning` with nothing asked ({"effort": null}) is harmless."""
    return isinstance(value, dict) and all(v is None for v in value.values())


def _only_logprobs(value: object) -> bool:
    return isinstance(value, list) and all(item == INCLUDE_LOGPROBS for item in value)


class InputPart(Body, kw_only=True):
    """A part of a message's content: input_text / output_text (read), or a kind this server refuses."""

    type: str
    text: str | None = None
    refusal: str | None = None
    annotations: list[object] | None = None
    logprobs: list[object] | None = None


class InputItem(Body, kw_only=True):
    """One item of `input`: a message, a function call the model made, or a function call's output."""

    type: str | None = None  # "message" when left out
    role: Literal["user", "assistant", "system", "developer"] | None = None
    content: str | list[InputPart] | None = None
    # function_call and function_call_output items.
    call_id: str | None = None
    name: str | None = None
    arguments: str | None = None
    output: str | list[InputPart] | None = None
    # Ids and statuses that items copied from an earlier answer carry.
    id: str | None = None
    status: str | None = None
    phase: str | None = None


class TextFormat(Body, kw_only=True):
    """`text.format`: plain text, any JSON object, or JSON valid against `schema`."""

    type: Literal["text", "json_object", "json_schema"] = "text"
    name: str | None = None
    schema: JsonSchema | None = None
    strict: bool | None = None
    description: str | None = None


class TextConfig(Body, kw_only=True):
    format: TextFormat | None = None
    verbosity: str | None = None

    refused: ClassVar[dict[str, Refused]] = {
        "verbosity": Refused("this model has no verbosity control", harmless=("medium",)),
    }


class FunctionTool(Body, kw_only=True):
    """A function the model may call (`type` "function"; the hosted tools are refused by name)."""

    type: str
    name: Annotated[str, Meta(max_length=64)] | None = None
    description: str | None = None
    parameters: JsonSchema | None = None
    strict: bool | None = None


class FunctionChoice(Body, kw_only=True):
    type: str
    name: str | None = None


class ResponseStreamOptions(Body, kw_only=True):
    include_obfuscation: bool | None = None

    refused: ClassVar[dict[str, Refused]] = {
        "include_obfuscation": Refused("stream obfuscation padding is not implemented", harmless=(False,)),
    }


class ResponseRequest(GenerationExtras, kw_only=True):
    """POST /v1/responses."""

    model: str
    input: str | list[InputItem] | None = None
    instructions: str | None = None
    max_output_tokens: Annotated[int, Meta(ge=1)] | None = None
    stream: bool | None = None
    stream_options: ResponseStreamOptions | None = None
    previous_response_id: str | None = None
    store: bool | None = None
    text: TextConfig | None = None
    tools: list[FunctionTool] | None = None
    tool_choice: Literal["none", "auto", "required"] | FunctionChoice | None = None
    parallel_tool_calls: bool | None = None
    top_logprobs: Annotated[int, Meta(ge=0, le=MAX_TOP_LOGPROBS)] | None = None
    include: list[str] | None = None
    truncation: Literal["auto", "disabled"] | None = None
    metadata: Annotated[dict[str, Annotated[str, Meta(max_length=512)]], Meta(max_length=16)] | None = None
    # Identifiers for the caller's own bookkeeping, echoed on the response: nothing here depends on them.
    user: str | None = None
    safety_identifier: str | None = None
    prompt_cache_key: str | None = None
    service_tier: str | None = None
    prompt_cache_retention: str | None = None
    reasoning: dict[str, object] | None = None
    background: bool | None = None
    conversation: object = None
    prompt: object = None
    max_tool_calls: int | None = None
    context_management: object = None
    moderation: object = None
    prompt_cache_options: object = None

    refused: ClassVar[dict[str, Refused]] = {
        **GenerationExtras.refused,
        "include": Refused(f"a text model has no other outputs to include than {INCLUDE_LOGPROBS!r}", allows=_only_logprobs),
        "reasoning": Refused("this model has no reasoning mode", allows=_no_reasoning),
        "background": Refused("background responses are not supported; stream the response instead", harmless=(False,)),
        "conversation": Refused("the Conversations API is not implemented; continue with previous_response_id"),
        "prompt": Refused("stored prompt templates are not implemented; send input and instructions"),
        "max_tool_calls": Refused("the number of calls is set by parallel_tool_calls (one call, or several)"),
        "service_tier": Refused("this server has one service tier", harmless=("auto", "default")),
        "prompt_cache_retention": Refused("the prefix cache lives in memory only", harmless=("in_memory",)),
        "context_management": Refused("server-side context compaction is not implemented"),
        "moderation": Refused("this server runs no moderation model"),
        "prompt_cache_options": Refused("the prefix cache is automatic and has no options here"),
    }


# -- answers -------------------------------------------------------------------------------


class OutputText(Reply, kw_only=True):
    type: Literal["output_text"] = "output_text"
    text: str
    annotations: list[object]
    logprobs: list[TokenLogprob]


class OutputMessage(Reply, kw_only=True, tag="message", tag_field="type"):
    id: str
    status: Literal["in_progress", "completed", "incomplete"]
    role: Literal["assistant"] = "assistant"
    content: list[OutputText]


class FunctionCallItem(Reply, kw_only=True, tag="function_call", tag_field="type"):
    id: str
    call_id: str
    name: str
    arguments: str
    status: Literal["in_progress", "completed", "incomplete"]


OutputItem = OutputMessage | FunctionCallItem


class InputTokensDetails(Reply, kw_only=True):
    cached_tokens: int


class OutputTokensDetails(Reply, kw_only=True):
    reasoning_tokens: int = 0


class ResponseUsage(Reply, kw_only=True):
    input_tokens: int
    input_tokens_details: InputTokensDetails
    output_tokens: int
    output_tokens_details: OutputTokensDetails
    total_tokens: int


class IncompleteDetails(Reply, kw_only=True):
    reason: Literal["max_output_tokens", "content_filter"]


class ResponseError(Reply, kw_only=True):
    code: str
    message: str


class TextFormatReply(Reply, kw_only=True):
    type: Literal["text", "json_object", "json_schema"]
    name: str | UnsetType = UNSET
    schema: object = UNSET
    strict: bool | UnsetType = UNSET
    description: str | UnsetType = UNSET


class TextConfigReply(Reply, kw_only=True):
    format: TextFormatReply
    verbosity: str = "medium"


class FunctionToolReply(Reply, kw_only=True):
    type: Literal["function"] = "function"
    name: str
    description: str | None
    parameters: object
    strict: bool


class FunctionChoiceReply(Reply, kw_only=True):
    type: Literal["function"] = "function"
    name: str


class ReasoningReply(Reply, kw_only=True):
    effort: None = None
    summary: None = None


class Response(Reply, kw_only=True):
    """The response object: what POST answers, GET returns, and the stream's first and last events carry."""

    id: str
    object: Literal["response"] = "response"
    created_at: int
    status: Literal["in_progress", "completed", "incomplete", "failed"]
    background: bool = False
    error: ResponseError | None = None
    incomplete_details: IncompleteDetails | None = None
    instructions: str | None
    max_output_tokens: int | None
    max_tool_calls: None = None
    model: str
    output: list[OutputItem]
    parallel_tool_calls: bool
    previous_response_id: str | None
    prompt_cache_key: str | None = None
    reasoning: ReasoningReply
    safety_identifier: str | None = None
    service_tier: str = "default"
    store: bool
    temperature: float
    text: TextConfigReply
    tool_choice: Literal["none", "auto", "required"] | FunctionChoiceReply
    tools: list[FunctionToolReply]
    top_logprobs: int
    top_p: float
    truncation: Literal["auto", "disabled"]
    usage: ResponseUsage | None
    user: str | None = None
    metadata: dict[str, str]
    completed_at: int | None = None


class DeletedResponse(Reply, kw_only=True):
    id: str
    object: Literal["response"] = "response"
    deleted: bool = True


class InputItemList(Reply, kw_only=True):
    """GET /v1/responses/{id}/input_items: the items the response was given, with their ids."""

    object: Literal["list"] = "list"
    data: list[dict[str, Any]]
    first_id: str | None
    last_id: str | None
    has_more: bool


# -- stream events ---------------------------------------------------------------------------


class ResponseEvent(Reply, kw_only=True):
    """response.created / in_progress / completed / incomplete / failed: the whole response."""

    type: str
    sequence_number: int
    response: Response


class ItemEvent(Reply, kw_only=True):
    """response.output_item.added / done."""

    type: str
    sequence_number: int
    output_index: int
    item: OutputItem


class PartEvent(Reply, kw_only=True):
    """response.content_part.added / done."""

    type: str
    sequence_number: int
    item_id: str
    output_index: int
    content_index: int
    part: OutputText


class TextDeltaEvent(Reply, kw_only=True):
    type: Literal["response.output_text.delta"] = "response.output_text.delta"
    sequence_number: int
    item_id: str
    output_index: int
    content_index: int
    delta: str
    logprobs: list[TokenLogprob]


class TextDoneEvent(Reply, kw_only=True):
    type: Literal["response.output_text.done"] = "response.output_text.done"
    sequence_number: int
    item_id: str
    output_index: int
    content_index: int
    text: str
    logprobs: list[TokenLogprob]


class ArgumentsDeltaEvent(Reply, kw_only=True):
    type: Literal["response.function_call_arguments.delta"] = "response.function_call_arguments.delta"
    sequence_number: int
    item_id: str
    output_index: int
    delta: str


class ArgumentsDoneEvent(Reply, kw_only=True):
    type: Literal["response.function_call_arguments.done"] = "response.function_call_arguments.done"
    sequence_number: int
    item_id: str
    output_index: int
    name: str
    arguments: str


class ErrorEvent(Reply, kw_only=True):
    type: Literal["error"] = "error"
    sequence_number: int
    code: str | None
    message: str
    param: str | None
