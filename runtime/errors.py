"""Errors raised by the runtime.

Every error carries the HTTP status the API layer should answer with, a message that tells
the user what to do next and, where a request field is to blame, its name (`param`), all set
when the error is made. The API's own errors (api/errors.py `ApiError`) are a branch of this
tree, so the boundary describes every error the same way.

    RuntimeError_ (builtin RuntimeError)
    └── ApplianceError                 status 500; message, param
        ├── EngineLoadError            an engine directory cannot be used
        │   ├── ManifestError          manifest.json missing, unreadable or of another version
        │   └── IntegrityError         a file's sha256 differs from the manifest's
        ├── RequestError               status 400: a request parameter is invalid (names it)
        ├── ContextLengthError         status 400: the prompt does not fit the context
        ├── ChatTemplateError          status 400: the messages cannot be rendered
        ├── QueueFullError             status 429: every slot is busy and the queue is full
        ├── QueueTimeoutError          status 503: the request waited its whole time limit for a slot
        ├── RequestTimeoutError        status 504: the request ran past its wall-clock time limit
        ├── SchedulerStoppedError      status 503: the engine's scheduler has shut down
        ├── InferenceError             ONNX Runtime failed while running a step
        └── (api.errors.ApiError)      the errors only a server has, with headers
"""

from __future__ import annotations


class ApplianceError(RuntimeError):
    """Base of every runtime error; `status` is the HTTP status it maps to."""

    status: int = 500
    code: str | None = "internal_error"

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        # The request field to blame, where there is one (the API's error `param`).
        self.param = param


class EngineLoadError(ApplianceError):
    """An engine directory cannot be loaded."""

    status = 503
    code = "engine_unavailable"


class ManifestError(EngineLoadError):
    """manifest.json is missing, malformed, or from a format version we cannot read."""


class IntegrityError(EngineLoadError):
    """A file of the engine directory differs from what its manifest recorded."""


class RequestError(ApplianceError):
    """A request parameter is out of range or inconsistent; `param` names it."""

    status = 400
    code = "invalid_request_error"


class ContextLengthError(ApplianceError):
    """The prompt (plus the tokens asked for) does not fit the engine's context."""

    status = 400
    code = "context_length_exceeded"


class ChatTemplateError(ApplianceError):
    """The engine's chat template cannot render these messages (or the engine has none)."""

    status = 400
    code = "invalid_request_error"


class _RetryLater(ApplianceError):
    """The engine is too busy for this request now; the client should retry after `retry_after_s`."""

    code = "server_busy"
    retry_after_default_s = 1

    def __init__(self, message: str, retry_after_s: int | None = None) -> None:
        super().__init__(message)
        self.retry_after_s = self.retry_after_default_s if retry_after_s is None else retry_after_s
        # The API sends these headers with the error (OpenAI's clients retry a 429 or 503 after it).
        self.headers = {"Retry-After": str(self.retry_after_s)}


class QueueFullError(_RetryLater):
    """Every slot of the engine is busy and its waiting queue is at its limit."""

    status = 429


class QueueTimeoutError(_RetryLater):
    """The request's time limit passed while it still waited for a slot: the engine is overloaded."""

    status = 503
    retry_after_default_s = 5


class RequestTimeoutError(ApplianceError):
    """The request ran past the server's wall-clock limit per request; its generation was stopped."""

    status = 504
    code = "timeout"


class SchedulerStoppedError(ApplianceError):
    """The engine's scheduler thread has stopped (the server is shutting down)."""

    status = 503
    code = "engine_unavailable"


class InferenceError(ApplianceError):
    """ONNX Runtime failed while running a step."""
