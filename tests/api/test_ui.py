"""The chat page's routes on the app over fake engines: what is served, to whom, with which headers.

The page itself is exercised in a real browser by tests/integration/test_chat_page.py.
"""

from __future__ import annotations

import re

import pytest

from api.ui import page as ui
from tests.api.fakes import FakeGenerator
from tests.api.test_errors import openai_error

KEY = "sk-appliance-test-key-0001"
# What Chromium and Firefox send when navigating to a page.
BROWSER_ACCEPT = "text/html,application/xhtml+xml,application/xml;q=0.9,image/avif,image/webp,*/*;q=0.8"
STATIC_FILES = [ui.PAGE_FILE, *ui.ASSETS]


@pytest.fixture
def keyed(make_client):
    return make_client(FakeGenerator(), api_keys=(KEY,))


def test_the_page_and_its_assets_load_without_a_key(keyed) -> None:
    page = keyed.simulate_get("/ui")
    assert page.status_code == 200 and page.headers["content-type"] == "text/html; charset=utf-8"
    assert "<title>appliance chat</title>" in page.text
    for name, content_type in ui.ASSETS.items():
        (reference,) = re.findall(rf'"(/ui/{re.escape(name)}\?v=[0-9a-f]+)"', page.text)
        asset = keyed.simulate_get(reference.split("?")[0], query_string=reference.split("?")[1])
        assert asset.status_code == 200 and asset.headers["content-type"] == content_type
        assert asset.content == (ui.STATIC_DIR / name).read_bytes()
    # The API the page calls still needs the key; an unknown file under /ui is not a way around it.
    openai_error(keyed.simulate_get("/v1/models"), 401)
    openai_error(keyed.simulate_get("/ui/secret.js"), 401)


def test_root_is_the_page_for_browsers_and_text_for_everyone_else(keyed, make_client) -> None:
    browser = keyed.simulate_get("/", headers={"Accept": BROWSER_ACCEPT})
    assert browser.status_code == 200 and browser.headers["content-type"] == "text/html; charset=utf-8"
    assert browser.text == keyed.simulate_get("/ui").text and browser.headers["vary"] == "Accept"
    # Ollama clients, curl and probes: the line of text, behind the key like every API route.
    for accept in (None, "*/*", "application/json", "text/plain", "text/*"):
        headers = {"Accept": accept} if accept else {}
        openai_error(keyed.simulate_get("/", headers=headers), 401)
        text = keyed.simulate_get("/", headers={**headers, "Authorization": f"Bearer {KEY}"})
        assert text.status_code == 200 and text.headers["content-type"].startswith("text/plain"), accept
        assert text.text.startswith("appliance is running") and text.headers["vary"] == "Accept"
    open_server = make_client(FakeGenerator())
    assert open_server.simulate_get("/").text.startswith("appliance is running")
    assert open_server.simulate_head("/", headers={"Accept": BROWSER_ACCEPT}).status_code == 200
    # Only reading the page is open: other methods on / still need the key.
    openai_error(keyed.simulate_post("/", headers={"Accept": BROWSER_ACCEPT}), 401)


def test_caching_headers(client) -> None:
    page = client.simulate_get("/ui")
    assert page.headers["cache-control"] == "no-cache" and page.headers["etag"].startswith('"')
    assert client.simulate_get("/ui", headers={"If-None-Match": page.headers["etag"]}).status_code == 304
    assert client.simulate_get("/ui", headers={"If-None-Match": '"stale"'}).status_code == 200
    digest = ui.StaticFile.of((ui.STATIC_DIR / "chat.js").read_bytes(), "").digest
    pinned = client.simulate_get("/ui/chat.js", params={"v": digest})
    assert pinned.headers["cache-control"] == "public, max-age=31536000, immutable"
    assert pinned.headers["etag"] == f'"{digest}"' and pinned.headers["x-content-type-options"] == "nosniff"
    # Without the page's digest (an old page, a hand-typed URL): revalidated, so never stale.
    for params in ({}, {"v": "0123456789abcdef"}):
        assert client.simulate_get("/ui/chat.js", params=params).headers["cache-control"] == "no-cache"
    unchanged = client.simulate_get("/ui/chat.css", headers={"If-None-Match": client.simulate_get("/ui/chat.css").headers["etag"]})
    assert unchanged.status_code == 304 and not unchanged.content


def test_the_page_allows_only_its_own_origin(client) -> None:
    policy = client.simulate_get("/ui").headers["content-security-policy"]
    assert "default-src 'none'" in policy and "script-src 'self'" in policy and "connect-src 'self'" in policy
    assert "frame-ancestors 'none'" in policy and "unsafe-inline" not in policy


@pytest.mark.parametrize("name", STATIC_FILES)
def test_nothing_comes_from_elsewhere(name: str) -> None:
    """The box may be offline: no CDN, no web fonts, no absolute URLs."""
    text = (ui.STATIC_DIR / name).read_text()
    assert not re.search(r"(https?:)?//[a-z0-9.-]+\.[a-z]{2,}/", text, re.IGNORECASE), name
    assert "@import" not in text and "@font-face" not in text, name


def test_model_output_is_never_parsed_as_html() -> None:
    script = (ui.STATIC_DIR / "chat.js").read_text()
    for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval(", "new Function"):
        assert sink not in script, sink
