"""Anthropic's Messages API bodies: requests decoded and validated, answers and stream events encoded.

Requests declare every field of Anthropic's schema a client may send; those this server
cannot honour (images, documents, extended thinking, server tools, containers, MCP
servers) are refused with a 400 that names them, as the OpenAI dialect refuses its own.
Content blocks are tagged by `type`; a block type the server does not know at all is a 400
naming its place (`messages[0].content[1].type`).
"""

from __future__ import annotations

from typing import Annotated, Any, ClassVar, Literal

from msgspec import Meta

from api.wire import UNSET, Body, Refused, Reply, Temperature, TopK, TopP, UnsetType

MAX_STOP_SEQUENCES = 32


def _no_thinking_asked(value: object) -> bool:
    """disabled, or adaptive ("the model decides when to think"): a model without thinking never does."""
    return getattr(value, "type", None) in ("disabled", "adaptive")


def _clears_thinking_only(value: object) -> bool:
    """Context edits that clear earlier thinking blocks: with no thinking, there is nothing to clear
    (Claude Code sends them with every request)."""
    if not isinstance(value, dict) or set(value) - {"edits"}:
        return False
    edits = value.get("edits")
    return isinstance(edits, list) and all(isinstance(e, dict) and str(e.get("type", "")).startswith("clear_thinking_") for e in edits)


# -- content blocks of requests --------------------------------------------------------------


class TextBlock(Body, kw_only=True, tag="text", tag_field="type"):
    text: str
    # Prompt caching hints: every prompt prefix is cached here without asking; citations of an
    # earlier answer are part of its history and change nothing.
    cache_control: object = None
    citations: object = None


class ImageBlock(Body, kw_only=True, tag="image", tag_field="type"):
    source: object = None


class DocumentBlock(Body, kw_only=True, tag="document", tag_field="type"):
    source: object = None


class SearchResultBlock(Body, kw_only=True, tag="search_result", tag_field="type"):
    content: object = None


class ThinkingBlock(Body, kw_only=True, tag="thinking", tag_field="type"):
    thinking: object = None


class RedactedThinkingBlock(Body, kw_only=True, tag="redacted_thinking", tag_field="type"):
    data: object = None


class ServerToolUseBlock(Body, kw_only=True, tag="server_tool_use", tag_field="type"):
    name: object = None


class WebSearchToolResultBlock(Body, kw_only=True, tag="web_search_tool_result", tag_field="type"):
    content: object = None


class ToolUseBlock(Body, kw_only=True, tag="tool_use", tag_field="type"):
    """A call the assistant made earlier: its id, the tool's name and the arguments object."""

    id: str
    name: str
    input: dict[str, Any]
    cache_control: object = None


ToolResultContent = TextBlock | ImageBlock | DocumentBlock | SearchResultBlock


class ToolResultBlock(Body, kw_only=True, tag="tool_result", tag_field="type"):
    """The answer to a call, in a user message: text (or text blocks), maybe marked as an error."""

    tool_use_id: str
    content: str | list[ToolResultContent] | None = None
    is_error: bool | None = None
    cache_control: object = None


ContentBlock = (
    TextBlock
    | ImageBlock
    | DocumentBlock
    | SearchResultBlock
    | ThinkingBlock
    | RedactedThinkingBlock
    | ToolUseBlock
    | ToolResultBlock
    | ServerToolUseBlock
    | WebSearchToolResultBlock
)
# Blocks this server cannot read, and why (refused where they are met, with their place).
UNREADABLE_BLOCKS: dict[type, str] = {
    ImageBlock: "this engine reads text only",
    DocumentBlock: "this engine reads text only; send a document's text as a text block",
    SearchResultBlock: "search result blocks (citations) are not supported; send their text as a text block",
    ThinkingBlock: "this model has no extended thinking, so earlier thinking blocks cannot be replayed",
    RedactedThinkingBlock: "this model has no extended thinking, so earlier thinking blocks cannot be replayed",
    ServerToolUseBlock: "this server has no server tools (web search, code execution)",
    WebSearchToolResultBlock: "this server has no server tools (web search, code execution)",
}


class InputMessage(Body, kw_only=True):
    """A turn; a "system" message mid-conversation (Claude Code sends them) is a system message there."""

    role: Literal["user", "assistant", "system"]
    content: str | list[ContentBlock]


# -- tools -----------------------------------------------------------------------------------


class Tool(Body, kw_only=True):
    """A client tool (type absent or "custom"); server tools (web_search_…, bash_…) are refused where met."""

    name: Annotated[str, Meta(min_length=1, max_length=128)]
    type: str | None = None
    description: str | None = None
    input_schema: dict[str, Any] | None = None
    strict: bool | None = None
    cache_control: object = None
    input_examples: object = None
    defer_loading: bool | None = None
    eager_input_streaming: bool | None = None
    allowed_callers: object = None

    refused: ClassVar[dict[str, Refused]] = {
        "input_examples": Refused("tool input examples are not shown to the model"),
        "defer_loading": Refused("tool search is not implemented; every tool is loaded", harmless=(False,)),
        "allowed_callers": Refused("this server has no code execution tool", allows=lambda v: v == ["direct"]),
    }


class ToolChoice(Body, kw_only=True):
    """auto (the model decides), any (it must call a tool), tool (this `name`), none (no calls)."""

    type: Literal["auto", "any", "tool", "none"]
    name: str | None = None
    disable_parallel_tool_use: bool | None = None


class ThinkingConfig(Body, kw_only=True):
    type: Literal["enabled", "disabled", "adaptive"]
    budget_tokens: int | None = None
    display: object = None


class Metadata(Body, kw_only=True):
    user_id: str | None = None


class OutputFormat(Body, kw_only=True):
    type: Literal["json_schema"]
    schema: dict[str, Any]


class OutputConfig(Body, kw_only=True):
    format: OutputFormat | None = None
    effort: str | None = None

    refused: ClassVar[dict[str, Refused]] = {
        # "high" is Anthropic's default: asking for it asks for nothing different.
        "effort": Refused("this model has no effort setting", harmless=("high",)),
    }


class CountTokensRequest(Body, kw_only=True):
    """POST /v1/messages/count_tokens: what a message request's prompt would be, without generating."""

    model: str
    messages: Annotated[list[InputMessage], Meta(min_length=1)]
    system: str | list[TextBlock] | None = None
    tools: list[Tool] | None = None
    tool_choice: ToolChoice | None = None
    thinking: ThinkingConfig | None = None
    output_config: OutputConfig | None = None
    # Deprecated beta spelling of output_config.format.
    output_format: OutputFormat | None = None
    cache_control: object = None
    mcp_servers: object = None
    context_management: object = None
    container: object = None

    refused: ClassVar[dict[str, Refused]] = {
        "thinking": Refused("this model has no extended thinking mode (disabled and adaptive are accepted)", allows=_no_thinking_asked),
        "mcp_servers": Refused("this server does not connect to MCP servers; give their tools as client tools"),
        "context_management": Refused(
            "server-side context editing is not implemented (edits that only clear thinking blocks are accepted)", allows=_clears_thinking_only
        ),
        "container": Refused("this server has no code execution containers"),
    }


class MessagesRequest(CountTokensRequest, kw_only=True):
    """POST /v1/messages."""

    max_tokens: Annotated[int, Meta(ge=0)]
    stream: bool | None = None
    stop_sequences: Annotated[list[str], Meta(max_length=MAX_STOP_SEQUENCES)] | None = None
    # Older models' sampling controls, and top_k; newer SDKs send them as extra fields.
    temperature: Temperature | None = None
    top_p: TopP | None = None
    top_k: TopK | None = None
    metadata: Metadata | None = None
    service_tier: str | None = None
    speed: str | None = None
    inference_geo: str | None = None
    diagnostics: object = None

    refused: ClassVar[dict[str, Refused]] = {
        **CountTokensRequest.refused,
        "service_tier": Refused("this server has one service tier", harmless=("auto", "standard_only")),
        "speed": Refused("this server has one speed", harmless=("standard",)),
        "inference_geo": Refused("this server runs where it is installed"),
        "diagnostics": Refused("prompt cache diagnostics are not implemented"),
    }


# -- answers ---------------------------------------------------------------------------------


class TextReply(Reply, kw_only=True, tag="text", tag_field="type"):
    text: str
    citations: None = None


class ToolUseReply(Reply, kw_only=True, tag="tool_use", tag_field="type"):
    id: str
    name: str
    input: dict[str, Any]


ContentReply = TextReply | ToolUseReply
StopReason = Literal["end_turn", "max_tokens", "stop_sequence", "tool_use", "model_context_window_exceeded"]


class MessageUsage(Reply, kw_only=True):
    """Tokens read (`input_tokens` excludes the prompt positions reused from the cache) and written."""

    input_tokens: int
    output_tokens: int
    cache_creation_input_tokens: int = 0
    cache_read_input_tokens: int = 0
    service_tier: Literal["standard"] = "standard"


class Message(Reply, kw_only=True):
    id: str
    type: Literal["message"] = "message"
    role: Literal["assistant"] = "assistant"
    model: str
    content: list[ContentReply]
    stop_reason: StopReason | None
    stop_sequence: str | None
    usage: MessageUsage


class TokenCount(Reply, kw_only=True):
    input_tokens: int


class ModelInfo(Reply, kw_only=True):
    """A GET /v1/models entry as Anthropic's clients read it (asked with an `anthropic-version` header)."""

    type: Literal["model"] = "model"
    id: str
    display_name: str
    created_at: str


class ModelList(Reply, kw_only=True):
    data: list[ModelInfo]
    has_more: bool = False
    first_id: str | None
    last_id: str | None


# -- stream events ----------------------------------------------------------------------------


class MessageStart(Reply, kw_only=True):
    type: Literal["message_start"] = "message_start"
    message: Message


class BlockStart(Reply, kw_only=True):
    type: Literal["content_block_start"] = "content_block_start"
    index: int
    content_block: ContentReply


class TextDelta(Reply, kw_only=True, tag="text_delta", tag_field="type"):
    text: str


class InputJsonDelta(Reply, kw_only=True, tag="input_json_delta", tag_field="type"):
    partial_json: str


class BlockDelta(Reply, kw_only=True):
    type: Literal["content_block_delta"] = "content_block_delta"
    index: int
    delta: TextDelta | InputJsonDelta


class BlockStop(Reply, kw_only=True):
    type: Literal["content_block_stop"] = "content_block_stop"
    index: int


class StopDelta(Reply, kw_only=True):
    stop_reason: StopReason
    stop_sequence: str | None


class DeltaUsage(Reply, kw_only=True):
    """The final counts (message_start had the prompt's length before the cache was looked up)."""

    input_tokens: int
    output_tokens: int
    cache_creation_input_tokens: int = 0
    cache_read_input_tokens: int = 0


class MessageDelta(Reply, kw_only=True):
    type: Literal["message_delta"] = "message_delta"
    delta: StopDelta
    usage: DeltaUsage


class MessageStop(Reply, kw_only=True):
    type: Literal["message_stop"] = "message_stop"


class Ping(Reply, kw_only=True):
    type: Literal["ping"] = "ping"


class ErrorDetail(Reply, kw_only=True):
    type: str
    message: str


class ErrorBody(Reply, kw_only=True):
    """Anthropic's error object, also the `error` event of a stream."""

    type: Literal["error"] = "error"
    error: ErrorDetail
    request_id: str | UnsetType = UNSET
