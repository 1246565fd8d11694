"""Stream framing: OpenAI's server-sent events and Ollama's newline-delimited JSON.

Each frame is one `bytes` object handed to the WSGI server as soon as it exists; gunicorn
writes it to the socket at once (chunked transfer encoding), so nothing is buffered.

After the first byte the status line is fixed: `guarded` turns an error raised while
streaming into one error frame in the stream's own format, logs it, and ends the stream.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator

import falcon

from api.errors import BodyTooLarge, ollama_error_body, openai_error_body
from api.settings import ServerSettings
from api.wire import B, decode, encode
from runtime.errors import ApplianceError

SSE_CONTENT_TYPE = "text/event-stream; charset=utf-8"
NDJSON_CONTENT_TYPE = "application/x-ndjson"
SSE_DONE = b"data: [DONE]\n\n"
# An SSE comment: clients ignore it; writing it is how a dead connection is noticed while a request waits.
SSE_KEEPALIVE = b": keep-alive\n\n"
# NDJSON has no comments; a space is JSON whitespace, so it only prefixes the next line (which
# every JSON parser reads as before), and it still reaches the socket at once.
NDJSON_KEEPALIVE = b" "


def sse_frame(value: object) -> bytes:
    """One SSE event: `data: {json}` and a blank line."""
    return b"data: " + encode(value) + b"\n\n"


def ndjson_line(value: object) -> bytes:
    return encode(value) + b"\n"


def describe_error(exc: BaseException) -> tuple[int, str, str | None, str | None]:
    """(status, message, param, code) of any exception, without leaking internals for unknown ones."""
    if isinstance(exc, ApplianceError):  # the runtime's errors and the API's own (ApiError)
        return exc.status, exc.message, exc.param, exc.code
    return 500, f"internal error ({type(exc).__name__}); the server log has the details", None, "internal_error"


def openai_error_frames(exc: BaseException) -> bytes:
    status, message, param, code = describe_error(exc)
    return sse_frame(openai_error_body(status, message, param, code)) + SSE_DONE


def ollama_error_line(exc: BaseException) -> bytes:
    return ndjson_line(ollama_error_body(describe_error(exc)[1]))


def guarded(frames: Iterator[bytes], error_frame: Callable[[BaseException], bytes], log: logging.Logger) -> Iterator[bytes]:
    """Yield `frames`; if they raise, yield one error frame instead of breaking the connection."""
    try:
        yield from frames
    except Exception as exc:
        log.error("stream ended by an error: %s", exc, exc_info=not isinstance(exc, ApplianceError))
        yield error_frame(exc)


# -- requests and answers -------------------------------------------------------------------


def read_request(req: falcon.Request, settings: ServerSettings, model: type[B]) -> B:
    """The request body decoded and validated as `model`: a 413 beyond the size limit, a 400 naming the field.

    A declared length over the limit is refused before reading; a chunked body is read at most
    one byte past it, and `decode` judges the length.
    """
    limit = settings.max_body_bytes
    if req.content_length is not None and req.content_length > limit:
        raise BodyTooLarge(f"the request body has {req.content_length} bytes; the limit is {limit}")
    return decode(req.bounded_stream.read(limit + 1), model, max_bytes=limit)


def send_json(resp: falcon.Response, value: object, status: int = 200) -> None:
    resp.status = status
    resp.content_type = "application/json"
    resp.data = encode(value)


def send_stream(resp: falcon.Response, frames: Iterator[bytes], content_type: str) -> None:
    """Stream `frames` as they come: no length, no caching, no proxy buffering."""
    resp.status = 200
    resp.content_type = content_type
    resp.set_header("Cache-Control", "no-cache")
    resp.set_header("X-Accel-Buffering", "no")
    resp.stream = frames
