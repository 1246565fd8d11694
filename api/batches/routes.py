"""The Files and Batch APIs: /v1/files[/{id}[/content]], /v1/batches[/{id}[/cancel]].

Uploads are multipart (`file`, `purpose` "batch"), streamed to the files folder and bounded
by `--files-max-bytes` rather than `--max-body-bytes`: a batch's input is far larger than a
chat request. A batch's input is checked when the batch is created: a file with problems
gives a batch that has `failed` at once, its `errors` naming each problem's line, as OpenAI
does. Otherwise the batch is `in_progress` at once, and a worker's runner takes it
(api/batches/runner.py).
"""

from __future__ import annotations

import falcon
from msgspec.structs import replace

from api.batches.bodies import Batch, BatchCreateRequest, BatchErrors, BatchList, BatchRequestCounts, FileDeleted, FileList
from api.batches.lines import read_input, unsupported_endpoint
from api.context import ServerContext
from api.errors import BadRequest, BodyTooLarge, NotSupported
from api.framing import read_request, send_json

# The one completion window OpenAI offers, in seconds.
COMPLETION_WINDOWS = {"24h": 24 * 3600}
# What a multipart body may add to its file (boundaries, part headers, the purpose field).
MULTIPART_OVERHEAD = 64 * 1024
# Purposes of the files this server keeps: uploads for batches; batch results are "batch_output".
PURPOSES = ("batch",)


def _not_on_ray(ctx: ServerContext) -> None:
    """Ray's replicas share no files folder and run no batch runner: refuse rather than keep a batch that never runs."""
    if ctx.settings.ray:
        raise NotSupported("the Files and Batch APIs are not available on a --ray server yet; serve with gunicorn (without --ray) to run batches")


def _limit(req: falcon.Request, most: int, default: int) -> int:
    try:
        limit = req.get_param_as_int("limit", min_value=1, max_value=most)
    except falcon.HTTPBadRequest:
        raise BadRequest(f"'limit' must be a whole number from 1 to {most}", param="limit") from None
    return default if limit is None else limit


class Files:
    """POST /v1/files (upload) and GET /v1/files (list: `purpose`, `limit`, `after`, `order`)."""

    def __init__(self, ctx: ServerContext) -> None:
        self.ctx = ctx

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        _not_on_ray(self.ctx)
        store = self.ctx.files
        if req.content_length is not None and req.content_length > store.max_file_bytes + MULTIPART_OVERHEAD:
            raise BodyTooLarge(f"the upload has {req.content_length} bytes; this server's limit is {store.max_file_bytes} bytes per file (serve --files-max-bytes)")
        if not (req.content_type or "").startswith("multipart/form-data"):
            raise BadRequest("upload a file as multipart/form-data with the fields 'file' and 'purpose'")
        received, filename, purpose = None, "", None
        try:
            for part in req.get_media():
                if part.name == "file":
                    if received is not None:
                        raise BadRequest("the upload has more than one 'file' field", param="file")
                    received, filename = store.receive(part.stream.read), part.secure_filename if part.filename else "upload.jsonl"
                elif part.name == "purpose":
                    purpose = part.text.strip()
            if received is None:
                raise BadRequest("the upload has no 'file' field", param="file")
            if purpose not in PURPOSES:
                raise BadRequest(f"this server keeps files for the Batch API only: 'purpose' must be 'batch' (got {purpose!r})", param="purpose")
            send_json(resp, store.keep(received, filename, purpose))
        finally:
            if received is not None:
                store.discard(received)

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        order = req.get_param("order") or "desc"
        if order not in ("asc", "desc"):
            raise BadRequest("'order' must be 'asc' or 'desc'", param="order")
        files, more = self.ctx.files.files(req.get_param("purpose"), _limit(req, 10000, 10000), req.get_param("after"), order)
        send_json(resp, FileList(data=files, first_id=files[0].id if files else None, last_id=files[-1].id if files else None, has_more=more))


class File:
    """GET /v1/files/{id} and DELETE /v1/files/{id}."""

    def __init__(self, ctx: ServerContext) -> None:
        self.ctx = ctx

    def on_get(self, req: falcon.Request, resp: falcon.Response, file_id: str) -> None:
        send_json(resp, self.ctx.files.file(file_id))

    def on_delete(self, req: falcon.Request, resp: falcon.Response, file_id: str) -> None:
        self.ctx.files.delete_file(file_id)
        send_json(resp, FileDeleted(id=file_id))


class FileContent:
    """GET /v1/files/{id}/content: the file's bytes as stored."""

    def __init__(self, ctx: ServerContext) -> None:
        self.ctx = ctx

    def on_get(self, req: falcon.Request, resp: falcon.Response, file_id: str) -> None:
        path = self.ctx.files.content_path(file_id)
        resp.content_type = "application/octet-stream"
        resp.set_stream(open(path, "rb"), path.stat().st_size)


class Batches:
    """POST /v1/batches (create: the input is checked now) and GET /v1/batches (list: `limit`, `after`)."""

    def __init__(self, ctx: ServerContext) -> None:
        self.ctx = ctx

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        ctx, store = self.ctx, self.ctx.files
        _not_on_ray(ctx)
        body = read_request(req, ctx.settings, BatchCreateRequest)
        window = COMPLETION_WINDOWS.get(body.completion_window)
        if window is None:
            raise BadRequest(f"'completion_window' must be one of {', '.join(COMPLETION_WINDOWS)} (got {body.completion_window!r})", param="completion_window")
        why = unsupported_endpoint(body.endpoint)
        if why is not None:
            raise NotSupported(why, param="endpoint")
        source = store.file(body.input_file_id)
        if source.purpose != "batch":
            raise BadRequest(f"the file {source.id} has purpose {source.purpose!r}; a batch's input must be uploaded with purpose 'batch'", param="input_file_id")
        lines, errors = read_input(store.content_path(source.id), body.endpoint, ctx)
        now = int(ctx.clock())
        batch = Batch(
            id=ctx.new_id("batch_"), endpoint=body.endpoint, input_file_id=source.id, completion_window=body.completion_window,
            status="in_progress", created_at=now, in_progress_at=now, expires_at=now + window, metadata=body.metadata,
            request_counts=BatchRequestCounts(total=len(lines)),
        )  # fmt: skip
        if errors:
            batch = replace(batch, status="failed", failed_at=now, in_progress_at=None, errors=BatchErrors(data=errors), request_counts=BatchRequestCounts())
        store.add_batch(batch)
        send_json(resp, batch)

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        batches, more = self.ctx.files.batches(_limit(req, 100, 20), req.get_param("after"))
        send_json(resp, BatchList(data=batches, first_id=batches[0].id if batches else None, last_id=batches[-1].id if batches else None, has_more=more))


class BatchResource:
    """GET /v1/batches/{id}."""

    def __init__(self, ctx: ServerContext) -> None:
        self.ctx = ctx

    def on_get(self, req: falcon.Request, resp: falcon.Response, batch_id: str) -> None:
        send_json(resp, self.ctx.files.batch(batch_id))


class BatchCancel:
    """POST /v1/batches/{id}/cancel: cancelling now; cancelled once its running lines stopped."""

    def __init__(self, ctx: ServerContext) -> None:
        self.ctx = ctx

    def on_post(self, req: falcon.Request, resp: falcon.Response, batch_id: str) -> None:
        now = int(self.ctx.clock())

        def cancel(batch: Batch) -> Batch | None:
            if batch.status in ("cancelling", "cancelled"):
                return None
            if batch.status not in ("validating", "in_progress"):
                raise BadRequest(f"batch {batch_id} is {batch.status}; only a batch validating or in progress can be cancelled", param="batch_id")
            return replace(batch, status="cancelling", cancelling_at=now)

        send_json(resp, self.ctx.files.update_batch(batch_id, cancel))
