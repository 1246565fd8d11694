"""Errors of the HTTP layer and how each dialect writes them.

Runtime errors (`runtime.errors.ApplianceError`) already carry their HTTP status, message
and `param`; the API's errors are a branch of the same tree that adds the errors only a
server has, and headers (Retry-After, WWW-Authenticate). Everything is translated once, in
`app.py`'s error handler (and `framing.describe_error` for streams), into the dialect of the
route that failed: OpenAI routes (and the extras) answer
`{"error": {"message", "type", "param", "code"}}`, Ollama routes answer `{"error": "..."}`.

    runtime.errors.ApplianceError      status, message, param (the runtime's errors: see there)
    └── ApiError                       status 500 unless the subclass says otherwise; headers
        ├── BadRequest                 400: malformed JSON, a wrong type, a missing field (names it)
        ├── NotSupported               400: a known field this server cannot honour yet
        ├── Unauthorized               401: no API key, or not one of the server's (WWW-Authenticate)
        ├── Forbidden                  403: a browser origin the server does not allow (CORS)
        ├── ModelNotFound              404: no engine of that name
        │   └── NotPullable            404: a name /api/pull can neither find nor build
        ├── NotFound                   404: no such stored response (or other named thing)
        │   └── RouteNotFound          404: no such route
        ├── MethodNotAllowed           405
        ├── BodyTooLarge               413
        ├── Overloaded                 429: the engine's queue is full (Retry-After)
        ├── Unavailable                503: engines still loading, or the server is draining
        └── BuildFailed                500: /api/pull could not fetch or export the model
"""

from __future__ import annotations

import copy

import msgspec

from runtime.errors import ApplianceError

# OpenAI's error "type" for each status we answer with.
_OPENAI_TYPES = {
    400: "invalid_request_error",
    401: "invalid_request_error",  # what OpenAI answers for a missing or wrong key
    403: "permission_error",
    404: "invalid_request_error",
    405: "invalid_request_error",
    413: "invalid_request_error",
    429: "rate_limit_error",
    500: "server_error",
    503: "service_unavailable",
    504: "timeout",
}


class ApiError(ApplianceError):
    """An error answered with `status`; `code` and `param` fill OpenAI's error fields, `headers` the answer's."""

    status = 500
    code: str | None = "internal_error"

    def __init__(self, message: str, param: str | None = None, headers: dict[str, str] | None = None) -> None:
        super().__init__(message, param)
        self.headers = headers or {}

    def about(self, param: str | None, message: str | None = None) -> ApiError:
        """The same error, made anew about `param` (another dialect's name for the field), and with
        `message` if given; this one is left as it was."""
        other = copy.copy(self)
        other.param, other.message = param, self.message if message is None else message
        other.args = (other.message,)
        return other


class BadRequest(ApiError):
    status = 400
    code = "invalid_request_error"


class NotSupported(ApiError):
    status = 400
    code = "unsupported_parameter"


class Unauthorized(ApiError):
    status = 401

    def __init__(self, message: str, code: str | None = "invalid_api_key") -> None:
        error = "" if code is None else ', error="invalid_token"'
        super().__init__(message, headers={"WWW-Authenticate": f'Bearer realm="appliance"{error}'})
        self.code = code


class Forbidden(ApiError):
    status = 403
    code = "forbidden"


class ModelNotFound(ApiError):
    status = 404
    code = "model_not_found"

    def __init__(self, name: str, available: list[str]) -> None:
        listed = ", ".join(available) if available else "none are loaded"
        super().__init__(f"model '{name}' not found; available models: {listed}", param="model")


class NotPullable(ModelNotFound):
    def __init__(self, name: str, served: list[str], buildable: list[str]) -> None:
        ApiError.__init__(
            self,
            f"model '{name}' cannot be pulled: this server neither serves it nor builds it; it serves {', '.join(served) or 'no models'}"
            f" and can pull {', '.join(buildable) or 'nothing else (it cannot build engines)'}",
            param="model",
        )


class NotFound(ApiError):
    """404 for a thing a route names that does not exist (a stored response)."""

    status = 404
    code = "not_found"


class RouteNotFound(NotFound):
    pass


class MethodNotAllowed(ApiError):
    status = 405
    code = "method_not_allowed"


class BodyTooLarge(ApiError):
    status = 413
    code = "request_too_large"


class Overloaded(ApiError):
    status = 429
    code = "rate_limit_exceeded"


class Unavailable(ApiError):
    status = 503
    code = "service_unavailable"


class BuildFailed(ApiError):
    status = 500
    code = "pull_failed"


class OpenAIErrorDetail(msgspec.Struct, kw_only=True):
    message: str
    type: str
    param: str | None
    code: str | None


class OpenAIError(msgspec.Struct, kw_only=True):
    """OpenAI's error body."""

    error: OpenAIErrorDetail


class OllamaError(msgspec.Struct, kw_only=True):
    """Ollama's error body: the message alone."""

    error: str


def openai_error_body(status: int, message: str, param: str | None, code: str | None) -> OpenAIError:
    """OpenAI's error object."""
    return OpenAIError(error=OpenAIErrorDetail(message=message, type=_OPENAI_TYPES.get(status, "server_error"), param=param, code=code))


def ollama_error_body(message: str) -> OllamaError:
    return OllamaError(error=message)
