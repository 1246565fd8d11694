"""A batch's lines: reading and checking its input file, and running one line as its route would.

`read_input` checks what OpenAI checks when a batch is created: every line is a JSON object
with a `custom_id` (unique in the file), `method` "POST", the batch's `url`, and a `body`
naming a model this server serves for that endpoint. Problems come back as `BatchError`s
with their line numbers (the batch then fails at once, as OpenAI's does); everything else
about a body (a bad temperature, a prompt too long) is that line's error when it runs.

`run_line` answers one body with exactly what the endpoint answers (the same parsing and
rendering code as api/openai/routes.py), except that its generations run at background
priority (runtime/scheduler.py) and stop when `stop` is set (`Interrupted`: the line is not
finished and runs again later).
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from api.batches.bodies import BatchError
from api.context import ServerContext
from api.errors import ApiError, NotSupported
from api.generation.runs import Choice, gather, stream_events
from api.models.registry import LoadedModel
from api.openai import bodies as models
from api.openai import protocol
from api.openai.routes import embedding_reply
from api.wire import Reply, decode
from runtime.events import Event
from runtime.manifest import TASK_EMBEDDING, TASK_TEXT_GENERATION
from runtime.request import PRIORITY_BACKGROUND

CHAT = "/v1/chat/completions"
COMPLETIONS = "/v1/completions"
EMBEDDINGS = "/v1/embeddings"
# The endpoints this server runs batches of, and the task of their models.
ENDPOINTS = {CHAT: TASK_TEXT_GENERATION, COMPLETIONS: TASK_TEXT_GENERATION, EMBEDDINGS: TASK_EMBEDDING}
# OpenAI's limit of requests per batch.
MAX_LINES = 50_000
# Most problems listed in a refused batch's `errors` (the first ones, by line).
MAX_ERRORS = 100
# How often a waiting line checks whether it should stop.
CHECK_S = 0.5


@dataclass(frozen=True)
class Line:
    """One request of a batch: its number in the file (from 1), its custom_id and its body."""

    number: int
    custom_id: str
    body: bytes


def unsupported_endpoint(endpoint: str) -> str | None:
    """Why a batch of `endpoint` cannot run here (None: it can)."""
    if endpoint in ENDPOINTS:
        return None
    return f"this server runs batches of {', '.join(ENDPOINTS)} only, not {endpoint!r}"


def read_input(path: Path, endpoint: str, ctx: ServerContext | None = None) -> tuple[list[Line], list[BatchError]]:
    """The lines of a batch's input file, and the problems found (`ctx`: check the models too)."""
    lines: list[Line] = []
    errors: list[BatchError] = []
    seen: set[str] = set()
    tasks: dict[str, str | None] = {}

    def problem(number: int, code: str, message: str, param: str | None = None) -> None:
        if len(errors) < MAX_ERRORS:
            errors.append(BatchError(code=code, message=message, param=param, line=number))

    with open(path, "rb") as source:
        for number, raw in enumerate(source, 1):
            if not raw.strip():
                continue
            if len(lines) >= MAX_LINES:
                problem(number, "too_many_requests", f"a batch holds at most {MAX_LINES} requests")
                break
            try:
                item = json.loads(raw)
            except (ValueError, UnicodeDecodeError) as exc:
                problem(number, "invalid_json_line", f"this line is not JSON: {exc}")
                continue
            if not isinstance(item, dict):
                problem(number, "invalid_json_line", "each line must be a JSON object with custom_id, method, url and body")
                continue
            custom_id, body = item.get("custom_id"), item.get("body")
            if not isinstance(custom_id, str) or not custom_id:
                problem(number, "missing_required_parameter", "the line has no custom_id (a non-empty string)", "custom_id")
                continue
            if custom_id in seen:
                problem(number, "duplicate_custom_id", f"the custom_id {custom_id!r} is used by an earlier line; each must be unique", "custom_id")
                continue
            seen.add(custom_id)
            if item.get("method") != "POST":
                problem(number, "invalid_method", f"the method must be 'POST' (got {item.get('method')!r})", "method")
                continue
            if item.get("url") != endpoint:
                problem(number, "invalid_url", f"the url must be the batch's endpoint {endpoint!r} (got {item.get('url')!r})", "url")
                continue
            if not isinstance(body, dict):
                problem(number, "missing_required_parameter", "the line has no body (a JSON object: the request)", "body")
                continue
            model = body.get("model")
            if not isinstance(model, str) or not model:
                problem(number, "missing_required_parameter", "the body names no model", "body.model")
                continue
            if ctx is not None:
                if model not in tasks:
                    tasks[model] = _task(ctx, model)
                if tasks[model] is None:
                    problem(number, "model_not_found", f"model {model!r} is not served here; GET /v1/models lists the models", "body.model")
                    continue
                if tasks[model] != ENDPOINTS[endpoint]:
                    problem(number, "invalid_model", f"model {model!r} is a {tasks[model]} model and cannot answer {endpoint}", "body.model")
                    continue
            lines.append(Line(number, custom_id, json.dumps(body, ensure_ascii=False).encode()))
    if not lines and not errors:
        errors.append(BatchError(code="empty_file", message="the input file holds no requests", line=None))
    return lines, errors


def _task(ctx: ServerContext, model: str) -> str | None:
    try:
        return ctx.registry.info(model).task
    except ApiError as exc:
        if exc.status == 404:
            return None
        raise


class Interrupted(Exception):
    """The line was stopped before it finished (a cancel, the server draining); it runs again later."""


def run_line(ctx: ServerContext, endpoint: str, body: bytes, stop: threading.Event) -> Reply:
    """The answer of `endpoint` to `body`; an ApplianceError (400, 404, ...) as the route would raise it."""
    settings = ctx.settings
    if endpoint == EMBEDDINGS:
        return embedding_reply(ctx, decode(body, models.EmbeddingRequest, max_bytes=settings.max_body_bytes))
    if endpoint == CHAT:
        chat = decode(body, models.ChatCompletionRequest, max_bytes=settings.max_body_bytes)
        model = ctx.registry.get(chat.model, TASK_TEXT_GENERATION)
        plan = protocol.parse_chat(chat, model.text(), settings)
        results = _generate(ctx, model, plan, "messages", stop)
        return protocol.chat_response(plan, results, ctx.new_id("chatcmpl-"), int(ctx.clock()), model.info.digest)
    if endpoint == COMPLETIONS:
        completion = decode(body, models.CompletionRequest, max_bytes=settings.max_body_bytes)
        model = ctx.registry.get(completion.model, TASK_TEXT_GENERATION)
        plan = protocol.parse_completion(completion, model.text(), settings)
        results = _generate(ctx, model, plan, "prompt", stop)
        return protocol.completion_response(plan, results, ctx.new_id("cmpl-"), int(ctx.clock()), model.info.digest)
    raise NotSupported(unsupported_endpoint(endpoint) or endpoint)


def _generate(ctx: ServerContext, model: LoadedModel, plan: protocol.Plan, prompt_param: str, stop: threading.Event) -> list[Any]:
    """Every choice of `plan` to its end, as `collect` runs them, at background priority."""
    if plan.stream:
        raise NotSupported("a batch line cannot stream: its answer goes to the batch's output file; leave 'stream' out", param="stream")
    plan.choices = [replace(c, request=replace(c.request, priority=PRIORITY_BACKGROUND)) for c in plan.choices]
    # Keep-alives let a line that waits for a slot notice `stop`; gather skips them.
    events = stream_events(model, plan.choices, ctx.metrics, CHECK_S, prompt_param)
    return gather(plan.choices, _until(stop, events))


def _until(stop: threading.Event, events: Iterator[tuple[Choice, Event]]) -> Iterator[tuple[Choice, Event]]:
    try:
        for item in events:
            if stop.is_set():
                raise Interrupted()
            yield item
    finally:
        close = getattr(events, "close", None)
        if close is not None:
            close()  # cancels the generations still running
