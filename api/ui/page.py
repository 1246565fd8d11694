"""The built-in chat page: a browser UI at `/ui` (and at `/` for browsers), from the files in api/ui/static/.

Plain HTML, CSS and JavaScript, no build step and nothing fetched from elsewhere (the box may
be offline): the page lists the text models (`GET /v1/models`) and streams chat completions
(`POST /v1/chat/completions` with `stream: true`) like any other client.

Keys: a browser that navigates to a page cannot send a bearer header, so the page and its
assets are answered without one (they hold nothing secret); every API call the page makes
sends `Authorization: Bearer <key>`, asking the user for the key when a call answers 401.

`GET /` stays what Ollama clients and health probes expect, one line of text, unless the
request prefers HTML (a browser's `Accept: text/html,...`); then it is the page. Answers of
`/` say `Vary: Accept` so caches keep the two apart.

Caching: the page refers to its assets as `/ui/chat.js?v=<digest of the file>`; an asset
asked for with its current digest is cached for a year (`immutable`), so a new release's page
fetches new assets. Everything else is `no-cache` with an ETag: revalidated every time,
answered 304 when unchanged.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import falcon

STATIC_DIR = Path(__file__).with_name("static")
PAGE_PATH = "/ui"
PAGE_FILE = "index.html"
# The assets the page loads, each served at /ui/<name>, with its content type.
ASSETS = {
    "chat.js": "text/javascript; charset=utf-8",
    "chat.css": "text/css; charset=utf-8",
}
# Answered without an API key (api.app's boundary); `/` too, when the request prefers HTML.
PUBLIC_PATHS = frozenset({PAGE_PATH, *(f"{PAGE_PATH}/{name}" for name in ASSETS)})

_FOREVER = "public, max-age=31536000, immutable"
# Only this server's own scripts, styles and API: no inline script, no other origin, no framing.
_PAGE_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self' data:; "
    "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)


@dataclass(frozen=True)
class StaticFile:
    """One file's bytes, content type and strong ETag (a digest of the bytes)."""

    body: bytes
    content_type: str
    digest: str

    @classmethod
    def of(cls, body: bytes, content_type: str) -> StaticFile:
        return cls(body, content_type, hashlib.sha256(body).hexdigest()[:16])

    @property
    def etag(self) -> str:
        return f'"{self.digest}"'


def _read(name: str) -> bytes:
    path = STATIC_DIR / name
    try:
        return path.read_bytes()
    except OSError as exc:
        raise RuntimeError(f"the chat page's file {path} is missing ({exc.strerror}): reinstall the appliance package") from None


def load_assets() -> dict[str, StaticFile]:
    """The page's assets, read once when the app is created."""
    return {name: StaticFile.of(_read(name), content_type) for name, content_type in ASSETS.items()}


def load_page(assets: dict[str, StaticFile]) -> StaticFile:
    """index.html with each asset reference pinned to the asset's digest (`/ui/chat.js?v=...`)."""
    html = _read(PAGE_FILE).decode("utf-8")
    for name, asset in assets.items():
        reference = f'"{PAGE_PATH}/{name}"'
        if reference not in html:
            raise RuntimeError(f"{STATIC_DIR / PAGE_FILE} does not refer to {reference}")
        html = html.replace(reference, f'"{PAGE_PATH}/{name}?v={asset.digest}"')
    return StaticFile.of(html.encode("utf-8"), "text/html; charset=utf-8")


def prefers_html(req: falcon.Request) -> bool:
    """True when the client would rather have HTML than text (browsers do; curl, probes and API clients don't)."""
    return req.client_prefers(["text/plain", "text/html"]) == "text/html"


def wants_page(req: falcon.Request) -> bool:
    """A browser loading `/`: answered with the page, without an API key."""
    return req.path == "/" and req.method in ("GET", "HEAD") and prefers_html(req)


def send(req: falcon.Request, resp: falcon.Response, file: StaticFile, cache_control: str = "no-cache") -> None:
    """Answer with `file`, or 304 when the client already holds this version."""
    resp.set_header("ETag", file.etag)
    resp.set_header("Cache-Control", cache_control)
    resp.set_header("X-Content-Type-Options", "nosniff")
    # Falcon parses If-None-Match into the tags' values, without quotes (weak ones compare equal here, as they should).
    held = req.if_none_match or ()
    if file.digest in held or "*" in held:
        resp.status = falcon.HTTP_304
        return
    resp.content_type = file.content_type
    resp.data = file.body


def send_page(req: falcon.Request, resp: falcon.Response, page: StaticFile) -> None:
    send(req, resp, page)
    resp.set_header("Content-Security-Policy", _PAGE_POLICY)
    resp.set_header("Referrer-Policy", "no-referrer")


class Page:
    """`GET /ui`: the chat page."""

    def __init__(self, page: StaticFile) -> None:
        self.page = page

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        send_page(req, resp, self.page)


class Asset:
    """`GET /ui/<name>`: one of the page's scripts or style sheets."""

    def __init__(self, file: StaticFile) -> None:
        self.file = file

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        pinned = req.get_param("v") == self.file.digest
        send(req, resp, self.file, _FOREVER if pinned else "no-cache")


def resources() -> tuple[Page, list[tuple[str, Asset]]]:
    """The page's resource (for `/ui` and for browsers at `/`) and each asset's route."""
    assets = load_assets()
    return Page(load_page(assets)), [(f"{PAGE_PATH}/{name}", Asset(file)) for name, file in assets.items()]
