"""The chat page in a real browser: Debian's chromium, driven by Playwright, against the real server.

The server requires an API key, as an exposed appliance would: the page loads without one,
asks for it when the API answers 401, and sends it on every call. A long answer streams in,
a screenshot is taken mid-stream (its path is printed in the run's summary), Stop aborts the
fetch, and the server's own counters show the generation cancelled and its slot free. A short
answer then runs to its end and the page shows its speed and timings, which must agree with
what the server counted.

`make browser` installs chromium (apt-get); without it this module skips and says so.
"""

from __future__ import annotations

import json
import math
import re
import time
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest

from tests.integration.server import ROOT, Server, wait_for

CHROMIUM = Path("/usr/bin/chromium")
if not CHROMIUM.is_file():
    pytest.skip("chromium is not installed: run `make browser` (apt-get install chromium)", allow_module_level=True)
sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed: pip install -e '.[test]'")

# No pytest timeout of its own: the first test to need the default engines also waits for their export
# (minutes on a fresh clone); every wait here has its own bound (wait_for, Playwright's 30 s).
pytestmark = pytest.mark.integration

DECODER = "smollm2-135m-instruct-int4"
KEY = "sk-appliance-chat-page-0001"
WRONG_KEY = "sk-not-a-key-of-this-server"
# Screenshots land here (git-ignored), at the same paths every run.
ARTIFACTS = ROOT / "test-artifacts"
# The answer that is stopped: long (no end of sequence before max_tokens), greedy.
LONG_ANSWER = {"max_tokens": "1500", "temperature": "0", "extra": json.dumps({"ignore_eos": True})}


@pytest.fixture(scope="module")
def keyed_server(default_engines: dict[str, Path], tmp_path_factory: pytest.TempPathFactory):
    """The int4 decoder and the encoder (which the page must leave out of its list), keys required."""
    folder = tmp_path_factory.mktemp("chat-page")
    (folder / "keys").write_text(f"# the browser test's key\n{KEY}\n")
    running = Server(default_engines["int4"].parent, folder / "server.log", "--threads", "8", "--api-key-file", str(folder / "keys"))
    yield running
    running.stop()


@pytest.fixture(scope="module")
def browser():
    with sync_api.sync_playwright() as playwright:
        # Debian's build, not Playwright's download (`playwright install` needs a CDN).
        launched = playwright.chromium.launch(executable_path=str(CHROMIUM))
        yield launched
        launched.close()


def scheduler(url: str) -> dict:
    """The decoder's scheduler as /health reports it (no key needed)."""
    return httpx.get(f"{url}/health", timeout=10).json()["generators"][DECODER]


def counter(url: str, name: str, **labels: str) -> float:
    """One value of /metrics (the key is needed), 0 when it has not been counted yet."""
    text = httpx.get(f"{url}/metrics", headers={"Authorization": f"Bearer {KEY}"}, timeout=10).text
    wanted = ",".join(f'{key}="{value}"' for key, value in sorted({"model": DECODER, **labels}.items()))
    match = re.search(rf"^{re.escape(name)}\{{{re.escape(wanted)}\}} (\S+)$", text, re.MULTILINE)
    return float(match.group(1)) if match else 0.0


def last_answer_state(page) -> dict:
    return page.evaluate(
        """() => {
            const answer = [...document.querySelectorAll("article.message.assistant")].at(-1);
            return answer ? { ...answer.dataset, text: answer.querySelector(".content").textContent,
                              stats: answer.querySelector(".stats").textContent } : {};
        }"""
    )


def js_round(x: float) -> int:
    """JavaScript's Math.round: halves go up (Python's round sends them to the even neighbour)."""
    return math.floor(x + 0.5)


def js_fixed(x: float, digits: int) -> str:
    """JavaScript's Number.prototype.toFixed: the exact value of the double, halves away from zero."""
    return str(Decimal(x).quantize(Decimal(1).scaleb(-digits), rounding=ROUND_HALF_UP))


def set_settings(page, max_tokens: str, temperature: str, extra: str) -> None:
    page.fill("#max-tokens", max_tokens)
    page.fill("#temperature", temperature)
    page.fill("#extra-fields", extra)


def test_the_chat_page_streams_stops_and_times_an_answer(browser, keyed_server: Server, record_property) -> None:
    started = time.monotonic()
    expect = sync_api.expect
    url = keyed_server.url
    ARTIFACTS.mkdir(exist_ok=True)
    page = browser.new_page(viewport={"width": 1100, "height": 760})
    page.set_default_timeout(20_000)
    uncaught: list[str] = []
    page.on("pageerror", lambda error: uncaught.append(str(error)))
    sent: list[tuple[str, str, str | None]] = []  # (method, path, Authorization) of every request the page makes
    page.on("request", lambda request: sent.append((request.method, urlsplit(request.url).path, request.headers.get("authorization"))))
    cancelled_before = counter(url, "appliance_generations_total", reason="cancelled")
    length_before = counter(url, "appliance_generations_total", reason="length")

    # The page loads without a key; its first API call is refused, so it asks for one.
    response = page.goto(f"{url}/")
    assert response is not None and response.status == 200 and response.headers["content-type"].startswith("text/html")
    expect(page.locator("#key-dialog")).to_be_visible()
    expect(page.locator("#key-reason")).to_have_text("This server needs an API key.")
    page.fill("#key-input", WRONG_KEY)
    page.click("#key-ok")
    expect(page.locator("#key-reason")).to_contain_text("The key was not accepted: the API key is not valid for this server")
    page.fill("#key-input", KEY)
    page.click("#key-ok")
    expect(page.locator("#key-dialog")).to_be_hidden()
    # The server lists the encoder too; only the text-generation model is offered.
    expect(page.locator("#model")).to_be_enabled()
    assert page.locator("#model option").evaluate_all("options => options.map(o => o.value)") == [DECODER]
    page.select_option("#model", DECODER)
    assert page.evaluate("localStorage.getItem('appliance.apiKey')") == KEY

    # A long answer streams in; the screenshot is taken while it is still streaming.
    page.click("#settings-toggle")
    set_settings(page, LONG_ANSWER["max_tokens"], LONG_ANSWER["temperature"], LONG_ANSWER["extra"])
    page.fill("#prompt", "Tell me a long story about a lighthouse keeper and the sea.")
    page.click("#send")
    page.wait_for_function(
        """() => { const a = [...document.querySelectorAll("article.message.assistant")].at(-1);
                   return a && a.dataset.state === "streaming" && Number(a.dataset.chunks) >= 12; }"""
    )
    assert scheduler(url)["active"] == 1
    streaming = ARTIFACTS / "chat-page-streaming.png"
    page.screenshot(path=str(streaming))
    during = last_answer_state(page)
    assert during["state"] == "streaming", during  # still streaming after the screenshot, so during it too
    assert len(during["text"].strip()) >= 12, during
    record_property("artifact", f"chat page mid-stream ({during['chunks']} tokens shown): {streaming}")
    expect(page.locator("#stop")).to_be_enabled()
    assert page.locator("#send").is_disabled()

    # Stop aborts the fetch; the server notices the closed connection and cancels the generation.
    page.click("#stop")
    expect(page.locator("article.message.assistant").last).to_have_attribute("data-state", "stopped")
    stopped = last_answer_state(page)
    assert "stopped" in stopped["stats"] and int(stopped["chunks"]) >= int(during["chunks"]), stopped
    wait_for(lambda: counter(url, "appliance_generations_total", reason="cancelled") == cancelled_before + 1, 10, "the server counted the generation cancelled")
    wait_for(lambda: (lambda s: s["active"] == 0 and s["waiting"] == 0)(scheduler(url)), 10, "the generation's slot free")
    tokens = scheduler(url)["tokens"]
    time.sleep(0.5)
    assert scheduler(url)["tokens"] == tokens, "the scheduler still generates after the stop"
    assert counter(url, "appliance_generations_total", reason="length") == length_before  # it did not run to max_tokens
    assert int(stopped["chunks"]) < int(LONG_ANSWER["max_tokens"])

    # A short answer runs to its end: the page shows its speed and timings, as the server counted them.
    completion_before = counter(url, "appliance_completion_tokens_total")
    set_settings(page, "24", "0", "")
    page.fill("#prompt", "Say hello in French.")
    page.click("#send")
    answer = page.locator("article.message.assistant").last
    expect(answer).to_have_attribute("data-state", "done", timeout=30_000)
    done = last_answer_state(page)
    completion_tokens = int(done["completionTokens"])
    assert 1 <= completion_tokens <= 24 and done["text"].strip(), done
    assert completion_tokens == counter(url, "appliance_completion_tokens_total") - completion_before
    assert int(done["promptTokens"]) > 40, done  # the conversation: the first question, the stopped answer, this one
    first_token_ms, total_ms = float(done["firstTokenMs"]), float(done["totalMs"])
    assert 0 < first_token_ms <= total_ms < 30_000, done
    stats = done["stats"]
    assert f"{completion_tokens} tokens" in stats and f"prompt {done['promptTokens']} tokens" in stats, stats
    assert f"first token {js_round(first_token_ms)} ms" in stats and f"total {js_fixed(total_ms / 1000, 2)} s" in stats, stats
    if completion_tokens > 1:
        assert float(done["tokensPerSecond"]) > 0 and " tok/s" in stats, stats
    answered = ARTIFACTS / "chat-page-answered.png"
    page.screenshot(path=str(answered))
    record_property("artifact", f"chat page with a finished answer's stats ({stats}): {answered}")

    # The page's own files came without a key; every API call after the key was entered carried it.
    assert sorted((m, p, a) for m, p, a in sent if not p.startswith("/v1/")) == [
        ("GET", "/", None),
        ("GET", "/ui/chat.css", None),
        ("GET", "/ui/chat.js", None),
    ]
    assert [(m, p, a) for m, p, a in sent if p.startswith("/v1/")] == [
        ("GET", "/v1/models", None),
        ("GET", "/v1/models", f"Bearer {WRONG_KEY}"),
        ("GET", "/v1/models", f"Bearer {KEY}"),
        ("POST", "/v1/chat/completions", f"Bearer {KEY}"),
        ("POST", "/v1/chat/completions", f"Bearer {KEY}"),
    ]
    assert not uncaught, uncaught
    page.close()
    record_property("artifact", f"browser test took {time.monotonic() - started:.1f} s (server start not included)")


def test_the_page_shows_the_servers_errors(browser, keyed_server: Server) -> None:
    """A refused request (an OpenAI error object), an error event mid-stream, and bad settings: each is shown."""
    from api.framing import SSE_CONTENT_TYPE, openai_error_frames, sse_frame
    from runtime.errors import RequestTimeoutError

    expect = sync_api.expect
    context = browser.new_context()
    context.add_init_script(f"localStorage.setItem('appliance.apiKey', {json.dumps(KEY)})")  # a key kept from before
    page = context.new_page()
    page.set_default_timeout(20_000)
    page.goto(f"{keyed_server.url}/ui")
    expect(page.locator("#model")).to_have_value(DECODER)  # no dialog: the kept key was sent
    page.click("#settings-toggle")
    error = page.locator("#error")
    answer = page.locator("article.message.assistant").last

    # The server refuses the request (400): its message, field and code are shown; the message comes back to resend.
    set_settings(page, "16", "0", json.dumps({"n": 99}))
    page.fill("#prompt", "Hi!")
    page.click("#send")
    expect(error).to_have_text("'n' must be at most 16 (got 99) (field: n) [invalid_request_error] — HTTP 400")
    expect(answer).to_have_attribute("data-state", "failed")
    expect(page.locator("#prompt")).to_have_value("Hi!")

    # Settings that are not a JSON object are caught before anything is sent.
    set_settings(page, "16", "0", '{"top_k": }')
    page.click("#send")
    expect(error).to_contain_text("extra request fields is not valid JSON")
    assert page.locator("article.message").count() == 2 and page.input_value("#prompt") == "Hi!"

    # An error after the stream began: the server's own error frame, after a first token.
    chunk = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 0, "model": DECODER, "system_fingerprint": "fp",
             "choices": [{"index": 0, "delta": {"role": "assistant", "content": "Partial"}, "finish_reason": None}]}
    failure = RequestTimeoutError("the request ran past the server's time limit")
    body = sse_frame(chunk) + openai_error_frames(failure)
    page.route("**/v1/chat/completions", lambda route: route.fulfill(status=200, headers={"Content-Type": SSE_CONTENT_TYPE}, body=body))
    set_settings(page, "16", "0", "")
    page.click("#send")
    expect(error).to_have_text(f"the request ran past the server's time limit [{failure.code}] — HTTP 200")
    expect(answer).to_have_attribute("data-state", "failed")
    expect(answer.locator(".content")).to_have_text("Partial")
    context.close()
