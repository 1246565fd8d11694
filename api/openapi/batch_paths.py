"""The OpenAPI document's paths of the Files and Batch APIs (api/batches/): uploads for batches,
and batches run in the background; laid out with paths.py's helpers."""

from __future__ import annotations

from typing import Any

from api.openapi.paths import Schema, _errors, _obj, _ok, _operation, _string


def _path_id(name: str, what: str) -> list[dict[str, Any]]:
    return [{"name": name, "in": "path", "required": True, "schema": _string(), "description": what}]


def _query(name: str, schema: Schema, description: str) -> dict[str, Any]:
    return {"name": name, "in": "query", "required": False, "schema": schema, "description": description}


_PAGE = (
    _query("limit", {"type": "integer", "minimum": 1}, "Most items in the page (files: up to 10000, the default; batches: up to 100, default 20)."),
    _query("after", _string(), "An id: the page starts after it (the `last_id` of the previous page)."),
)


def batch_paths() -> dict[str, Any]:
    """/v1/files and /v1/batches: uploads for batches, and batches run in the background."""
    errors = _errors("OpenAIError", (400, 401, 404, 500, 503))
    not_found = _errors("OpenAIError", (401, 404, 500))
    upload = _obj(
        {
            "file": {"type": "string", "contentMediaType": "application/octet-stream", "description": "The file: JSONL, one request per line."},
            "purpose": {"type": "string", "enum": ["batch"], "description": "What the file is for; this server keeps files for batches only."},
        },
        ["file", "purpose"],
    )
    create_file = _operation(
        "createFile", "Upload a file (a batch's input)", "OpenAI", _ok("The stored file.", "FileObject"), _errors("OpenAIError", (400, 401, 413, 500)),
        description="multipart/form-data with `file` and `purpose` \"batch\". The file may have up to --files-max-bytes (not "
        "--max-body-bytes); a 413 also when the stored files would pass --files-total-bytes or --files-max-count.",
    )  # fmt: skip
    create_file["requestBody"] = {"required": True, "content": {"multipart/form-data": {"schema": upload}}}
    cancel = _operation(
        "cancelBatch", "Cancel a batch", "OpenAI", _ok("The batch, cancelling (or already cancelled).", "Batch"), errors,
        description="The lines running stop and the rest never start; the batch is then cancelled, its output file holding the "
        "lines that finished. A batch that already ended cannot be cancelled (400).",
    )  # fmt: skip
    return {
        "/v1/files": {
            "post": create_file,
            "get": {
                **_operation("listFiles", "List stored files", "OpenAI", _ok("A page of files.", "FileList"), _errors("OpenAIError", (400, 401, 500))),
                "parameters": [
                    _query("purpose", _string(), "Only files of this purpose (batch, batch_output)."),
                    *_PAGE,
                    _query("order", {"type": "string", "enum": ["asc", "desc"]}, "By creation time: desc (newest first, the default) or asc."),
                ],
            },
        },
        "/v1/files/{file_id}": {
            "parameters": _path_id("file_id", "A file's id (file-...)."),
            "get": _operation("retrieveFile", "A stored file", "OpenAI", _ok("The file.", "FileObject"), not_found),
            "delete": _operation("deleteFile", "Delete a stored file", "OpenAI", _ok("It is gone.", "FileDeleted"), not_found),
        },
        "/v1/files/{file_id}/content": {
            "parameters": _path_id("file_id", "A file's id (file-...)."),
            "get": _operation(
                "downloadFile", "A stored file's content", "OpenAI",
                {"description": "The bytes as stored (a batch's output: JSONL).", "content": {"application/octet-stream": {"schema": {"type": "string", "contentMediaType": "application/octet-stream"}}}},
                not_found,
            ),  # fmt: skip
        },
        "/v1/batches": {
            "post": _operation(
                "createBatch", "Create a batch", "OpenAI", _ok("The batch: in_progress, or failed with `errors` naming each bad line.", "Batch"), errors,
                "BatchCreateRequest",
                "Each line of the input file is a request (custom_id, method POST, url: the batch's endpoint, body); the lines "
                "run in the background at a lower priority than interactive requests, each answered as its route answers it.",
            ),  # fmt: skip
            "get": {**_operation("listBatches", "List batches", "OpenAI", _ok("A page of batches, newest first.", "BatchList"), _errors("OpenAIError", (400, 401, 500))), "parameters": list(_PAGE)},
        },
        "/v1/batches/{batch_id}": {
            "parameters": _path_id("batch_id", "A batch's id (batch_...)."),
            "get": _operation("retrieveBatch", "A batch: its status, progress and result files", "OpenAI", _ok("The batch.", "Batch"), not_found),
        },
        "/v1/batches/{batch_id}/cancel": {"parameters": _path_id("batch_id", "A batch's id (batch_...)."), "post": cancel},
    }
