"""Cross-origin requests from browsers (CORS), for the origins the operator allows.

None are allowed by default: a web page elsewhere cannot read our answers. With
`--cors-origin https://app.example` (repeatable, or `*` for any origin):

- a preflight (`OPTIONS` with `Origin` and `Access-Control-Request-Method`) from an allowed
  origin is answered 204 with the methods, the requested headers (Authorization included) and
  how long the browser may cache the answer; from any other origin it is a 403 that says why.
  Preflights carry no credentials, so they are answered before authentication;
- every other answer to an allowed origin — errors included, so a page can read a 401 or a
  429 — carries `Access-Control-Allow-Origin`, and exposes `Retry-After` and
  `WWW-Authenticate`.

API keys travel in the Authorization header, not in cookies, so credentials mode is not
offered: `*` stays a true wildcard.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import falcon

from api.errors import Forbidden

ALLOWED_METHODS = "GET, HEAD, POST, OPTIONS"
EXPOSED_HEADERS = "Retry-After, WWW-Authenticate"
PREFLIGHT_MAX_AGE_S = 600


def normalize_origin(origin: str) -> str:
    """Origins compare as scheme://host[:port], lower case, no trailing slash."""
    return origin.strip().rstrip("/").lower()


class Cors:
    """Falcon middleware; runs before authentication so that preflights are answered."""

    def __init__(self, origins: Iterable[str]) -> None:
        origins = [normalize_origin(o) for o in origins if o.strip()]
        self.any = "*" in origins
        self.origins = frozenset(o for o in origins if o != "*")

    def allows(self, origin: str) -> bool:
        return self.any or normalize_origin(origin) in self.origins

    def process_request(self, req: falcon.Request, resp: falcon.Response) -> None:
        origin = req.get_header("Origin")
        if req.method != "OPTIONS" or not origin or not req.get_header("Access-Control-Request-Method"):
            return
        req.context.preflight = True
        if not self.allows(origin):
            allowed = "any origin" if self.any else (", ".join(sorted(self.origins)) or "no origin (the default)")
            raise Forbidden(f"origin {origin} may not call this server from a browser; allowed: {allowed} (--cors-origin)")
        resp.status = falcon.HTTP_204
        resp.set_header("Access-Control-Allow-Methods", ALLOWED_METHODS)
        requested = req.get_header("Access-Control-Request-Headers")
        if requested:
            resp.set_header("Access-Control-Allow-Headers", requested)
        resp.set_header("Access-Control-Max-Age", str(PREFLIGHT_MAX_AGE_S))
        resp.complete = True  # answered: no routing, no responder

    def process_response(self, req: falcon.Request, resp: falcon.Response, resource: Any, req_succeeded: bool) -> None:
        origin = req.get_header("Origin")
        if not origin:
            return
        resp.append_header("Vary", "Origin")
        if self.allows(origin):
            resp.set_header("Access-Control-Allow-Origin", "*" if self.any else origin)
            resp.set_header("Access-Control-Expose-Headers", EXPOSED_HEADERS)
