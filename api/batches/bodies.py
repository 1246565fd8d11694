"""The Files and Batch APIs' wire models: what POST /v1/batches reads, and every object they answer.

Fields and names are OpenAI's (the `openai` SDK's `FileObject`, `Batch`, `BatchRequestCounts`,
`BatchError`, `BatchUsage`); a field without a value is `null`, as OpenAI sends it.
"""

from __future__ import annotations

from typing import Annotated, ClassVar, Literal

from msgspec import Meta, field

from api.wire import Body, Refused, Reply

# The endpoints a batch may name (OpenAI's list; the ones this server runs are in api/batches/lines.py).
BatchEndpoint = Literal["/v1/chat/completions", "/v1/completions", "/v1/embeddings", "/v1/responses", "/v1/moderations"]
Metadata = Annotated[dict[str, Annotated[str, Meta(max_length=512)]], Meta(max_length=16)]


class BatchCreateRequest(Body, kw_only=True):
    """POST /v1/batches."""

    input_file_id: str
    endpoint: str
    completion_window: str
    metadata: Metadata | None = None
    output_expires_after: object = None

    refused: ClassVar[dict[str, Refused]] = {
        "output_expires_after": Refused("result files are kept until deleted (DELETE /v1/files/{id}); they do not expire"),
    }


class FileObject(Reply, kw_only=True):
    """A stored file: an upload (purpose "batch") or a batch's results ("batch_output")."""

    id: str
    object: Literal["file"] = "file"
    bytes: int
    created_at: int
    filename: str
    purpose: str
    status: Literal["uploaded", "processed", "error"] = "processed"
    expires_at: int | None = None
    status_details: str | None = None


class FileList(Reply, kw_only=True):
    """GET /v1/files: a page of files (OpenAI's cursor page: pass the last id as `after`)."""

    object: Literal["list"] = "list"
    data: list[FileObject]
    first_id: str | None = None
    last_id: str | None = None
    has_more: bool = False


class FileDeleted(Reply, kw_only=True):
    id: str
    object: Literal["file"] = "file"
    deleted: bool = True


class BatchError(Reply, kw_only=True):
    """Why a batch's input file was refused: one line's problem (`line` counts from 1)."""

    code: str | None = None
    message: str | None = None
    param: str | None = None
    line: int | None = None


class BatchErrors(Reply, kw_only=True):
    object: Literal["list"] = "list"
    data: list[BatchError]


class BatchRequestCounts(Reply, kw_only=True):
    total: int = 0
    completed: int = 0
    failed: int = 0


class InputTokensDetails(Reply, kw_only=True):
    cached_tokens: int = 0


class OutputTokensDetails(Reply, kw_only=True):
    reasoning_tokens: int = 0


class BatchUsage(Reply, kw_only=True):
    """Tokens of the lines that succeeded, summed."""

    input_tokens: int = 0
    input_tokens_details: InputTokensDetails = field(default_factory=InputTokensDetails)
    output_tokens: int = 0
    output_tokens_details: OutputTokensDetails = field(default_factory=OutputTokensDetails)
    total_tokens: int = 0


BatchStatus = Literal["validating", "failed", "in_progress", "finalizing", "completed", "expired", "cancelling", "cancelled"]


class Batch(Reply, kw_only=True):
    """A batch: its input, its state and timestamps, its progress and its result files."""

    id: str
    object: Literal["batch"] = "batch"
    endpoint: str
    errors: BatchErrors | None = None
    input_file_id: str
    completion_window: str
    status: BatchStatus
    output_file_id: str | None = None
    error_file_id: str | None = None
    created_at: int
    in_progress_at: int | None = None
    expires_at: int | None = None
    finalizing_at: int | None = None
    completed_at: int | None = None
    failed_at: int | None = None
    expired_at: int | None = None
    cancelling_at: int | None = None
    cancelled_at: int | None = None
    request_counts: BatchRequestCounts = field(default_factory=BatchRequestCounts)
    metadata: dict[str, str] | None = None
    usage: BatchUsage | None = None


class BatchList(Reply, kw_only=True):
    """GET /v1/batches: a page of batches, newest first (pass the last id as `after`)."""

    object: Literal["list"] = "list"
    data: list[Batch]
    first_id: str | None = None
    last_id: str | None = None
    has_more: bool = False
