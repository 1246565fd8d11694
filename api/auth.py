"""API keys: who may use the server, and where it may listen without them.

With keys configured, every request but `GET /health`, the chat page's files (api/ui/page.py) and
CORS preflights (which browsers send without credentials) must carry
`Authorization: Bearer <key>`; both OpenAI and Ollama clients can send that header.
Anthropic's clients send the key as `x-api-key: <key>`, which is accepted as well. A
missing or wrong key is a 401 in the route's dialect; a wrong key beside a right one too.

Keys are compared in constant time: the presented token and every key are reduced to SHA-256
digests and compared with `hmac.compare_digest`, always against all keys, so neither a
key's length nor how much of it matched shows in the timing.

Without keys the server is open to whoever reaches it, so it listens on loopback only unless
the operator says otherwise in so many words (`--insecure-no-auth`).
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
from collections.abc import Iterable
from pathlib import Path

from api.errors import Unauthorized
from api.settings import ServerSettings

# Keys travel to workers in a comma-separated variable and arrive in a header: printable
# ASCII without spaces or commas, and long enough not to be guessed.
MIN_KEY_LENGTH = 16


class ApiKeyError(ValueError):
    """The configured keys cannot be used (a file is missing, empty, or a key is malformed)."""


def _digest(value: str) -> bytes:
    return hashlib.sha256(value.encode("utf-8", "surrogatepass")).digest()


class ApiKeys:
    """The keys a server accepts; empty means authentication is off."""

    def __init__(self, keys: Iterable[str] = ()) -> None:
        self._digests = tuple(_digest(key) for key in dict.fromkeys(keys))

    def __len__(self) -> int:
        return len(self._digests)

    @property
    def enabled(self) -> bool:
        return bool(self._digests)

    def accepts(self, token: str) -> bool:
        """True if `token` is one of the keys; the time taken does not depend on which, or how close."""
        presented = _digest(token)
        matched = 0
        for digest in self._digests:
            matched |= hmac.compare_digest(presented, digest)
        return bool(matched)

    def check(self, authorization: str | None, api_key: str | None = None) -> None:
        """Raise Unauthorized unless a key is given — `Authorization: Bearer <key>`, or `api_key` (the
        `x-api-key` header Anthropic's clients send) — and every key given is one of the keys; a wrong
        key is never passed over for a right one beside it. Nothing when keys are off."""
        if not self._digests:
            return
        if authorization is None and api_key is None:
            raise Unauthorized(
                "no API key given: send it in the Authorization header as 'Authorization: Bearer YOUR_KEY' "
                "(OpenAI clients: api_key=...; Ollama clients: headers={'Authorization': 'Bearer YOUR_KEY'}) "
                "or in an 'x-api-key' header (Anthropic clients: api_key=...)",
                code=None,
            )
        if authorization is not None:  # a header that is there, even empty, must hold a key
            scheme, _, token = authorization.strip().partition(" ")
            if scheme.lower() != "bearer" or not token.strip():
                raise Unauthorized("the Authorization header must be 'Bearer YOUR_KEY'", code="invalid_api_key")
            if not self.accepts(token.strip()):
                raise Unauthorized("the API key is not valid for this server", code="invalid_api_key")
        if api_key is not None and (not api_key.strip() or not self.accepts(api_key.strip())):
            raise Unauthorized("the API key in x-api-key is not valid for this server", code="invalid_api_key")


def validate_key(key: str, where: str) -> str:
    if len(key) < MIN_KEY_LENGTH:
        raise ApiKeyError(f"{where}: an API key must have at least {MIN_KEY_LENGTH} characters (this one has {len(key)})")
    if not key.isascii() or not key.isprintable() or any(c.isspace() or c == "," for c in key):
        raise ApiKeyError(f"{where}: an API key must be printable ASCII without spaces or commas")
    return key


def read_key_file(path: str | Path) -> list[str]:
    """Keys from a file: one per line; blank lines and lines starting with # are skipped."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ApiKeyError(f"cannot read the API key file {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise ApiKeyError(f"the API key file {path} is not UTF-8 text") from None
    keys = []
    for number, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if line and not line.startswith("#"):
            keys.append(validate_key(line, f"{path}, line {number}"))
    if not keys:
        raise ApiKeyError(f"the API key file {path} holds no key (one per line; # starts a comment)")
    return keys


def load_api_keys(settings: ServerSettings) -> ApiKeys:
    """Every key of `settings`: those given directly and those in the key files."""
    keys = [validate_key(key, "APPLIANCE_API_KEYS / --api-key") for key in settings.api_keys]
    for path in settings.api_key_files:
        keys.extend(read_key_file(path))
    return ApiKeys(keys)


def is_loopback(host: str) -> bool:
    if host.strip("[]").lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name: it may resolve to anything


def exposure_problem(settings: ServerSettings, keys: ApiKeys) -> str | None:
    """Why the server must not start as configured (open beyond loopback), or None."""
    if keys.enabled or settings.insecure_no_auth or is_loopback(settings.host):
        return None
    return (
        f"refusing to listen on {settings.host} without an API key: anyone who can reach it could use it. "
        "Give keys with --api-key-file FILE (one per line) or APPLIANCE_API_KEYS, or pass --insecure-no-auth "
        "to serve an open server on purpose"
    )


def describe(settings: ServerSettings, keys: ApiKeys) -> str:
    """One line for the start-up log: who can use the server."""
    if keys.enabled:
        return f"authentication on: {len(keys)} API key(s); every route but /health and the chat page needs 'Authorization: Bearer <key>'"
    if is_loopback(settings.host):
        return (
            f"no API key configured: listening on {settings.host} only, open to every process on this machine "
            "(--api-key-file FILE to require keys and listen elsewhere)"
        )
    return f"warning: no API key configured and listening on {settings.host} (--insecure-no-auth): anyone who reaches it can use it"
