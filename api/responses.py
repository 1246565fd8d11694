"""Small helpers the routes share: read a JSON body, answer JSON, start a stream."""

from __future__ import annotations

from typing import Any, Iterator

import falcon

from api.body import read_json_object
from api.settings import ServerSettings
from api.streaming import dumps


def read_body(req: falcon.Request, settings: ServerSettings) -> dict[str, Any]:
    return read_json_object(req.bounded_stream, req.content_length, settings.max_body_bytes)


def send_json(resp: falcon.Response, value: Any, status: int = 200) -> None:
    resp.status = status
    resp.content_type = "application/json"
    resp.text = dumps(value)


def send_stream(resp: falcon.Response, frames: Iterator[bytes], content_type: str) -> None:
    """Stream `frames` as they come: no length, no caching, no proxy buffering."""
    resp.status = 200
    resp.content_type = content_type
    resp.set_header("Cache-Control", "no-cache")
    resp.set_header("X-Accel-Buffering", "no")
    resp.stream = frames
