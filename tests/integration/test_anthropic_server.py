"""Anthropic's Messages API on the real server and engine, read by the `anthropic` SDK and by Claude Code.

The SDK's calls as users make them — create, stream, a tool use round trip, count_tokens — on
the int4 SmolLM2 engine, greedy where the test compares. Claude Code (the npm CLI, installed by
`make claude-code` where npm can reach its registry) is pointed at the server with
ANTHROPIC_BASE_URL and asked one question in its non-interactive mode, without its tools:
with its system prompt the question is about 1,500 tokens, and its 24 tools would add 18k more,
beyond the default engine's 2,048-token context (docs/serving.md says which engines take them).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import anthropic
import pytest

from tests.integration.server import ROOT, Server
from tests.integration.test_server import DECODER

QUESTION = "What is the capital of France? Answer in one word."
WEATHER = {
    "name": "get_weather",
    "description": "The current weather in a city",
    "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
}
GREEDY = {"temperature": 0}
# Where `make claude-code` installs the CLI (git-ignored); a `claude` on PATH is used otherwise.
CLAUDE_CODE = ROOT / ".tools" / "claude-code" / "node_modules" / ".bin" / "claude"


@pytest.fixture(scope="module")
def sdk(server: Server) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=server.url, api_key="sk-unused-by-an-open-server", max_retries=0, timeout=120)


def test_create_and_stream_give_the_same_greedy_answer(sdk: anthropic.Anthropic) -> None:
    whole = sdk.messages.create(model=DECODER, max_tokens=24, messages=[{"role": "user", "content": QUESTION}], extra_body=GREEDY)
    assert whole.content[0].type == "text" and whole.content[0].text.strip()
    assert whole.stop_reason in ("end_turn", "max_tokens") and 0 < whole.usage.output_tokens <= 24
    with sdk.messages.stream(model=DECODER, max_tokens=24, messages=[{"role": "user", "content": QUESTION}], extra_body=GREEDY) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text == final.content[0].text == whole.content[0].text
    assert final.usage.output_tokens == whole.usage.output_tokens and final.stop_reason == whole.stop_reason
    # The second time, the prompt was in the prefix cache: Anthropic's cache_read_input_tokens says so.
    assert final.usage.cache_read_input_tokens and final.usage.cache_read_input_tokens > 0
    counted = sdk.messages.count_tokens(model=DECODER, messages=[{"role": "user", "content": QUESTION}])
    assert counted.input_tokens == whole.usage.input_tokens + (whole.usage.cache_read_input_tokens or 0)


def test_a_tool_use_round_trip(sdk: anthropic.Anthropic) -> None:
    question = {"role": "user", "content": "What is the weather in Paris?"}
    call = sdk.messages.create(model=DECODER, max_tokens=64, tools=[WEATHER], tool_choice={"type": "any"}, messages=[question], extra_body=GREEDY)
    assert call.stop_reason == "tool_use"
    (use,) = [block for block in call.content if block.type == "tool_use"]
    assert use.name == "get_weather" and isinstance(use.input.get("city"), str)
    result = {"type": "tool_result", "tool_use_id": use.id, "content": "Sunny, 21 degrees Celsius."}
    answer = sdk.messages.create(
        model=DECODER, max_tokens=48, tools=[WEATHER], messages=[question, {"role": "assistant", "content": call.content}, {"role": "user", "content": [result]}],
        extra_body=GREEDY,
    )
    assert answer.stop_reason in ("end_turn", "max_tokens", "tool_use") and answer.content


def _claude_code() -> str | None:
    if CLAUDE_CODE.exists():
        return str(CLAUDE_CODE)
    return shutil.which("claude")


@pytest.mark.timeout(300)
def test_claude_code_answers_through_the_server(server: Server, tmp_path: Path) -> None:
    claude = _claude_code()
    if claude is None:
        pytest.skip("Claude Code is not installed: `make claude-code` installs it with npm (it needs node and the npm registry)")
    env = {
        "PATH": os.environ.get("PATH", ""),
        "HOME": str(tmp_path),  # a fresh configuration: no login, no history
        "ANTHROPIC_BASE_URL": server.url,
        "ANTHROPIC_API_KEY": "sk-unused-by-an-open-server",
        "ANTHROPIC_MODEL": DECODER,
        "ANTHROPIC_DEFAULT_HAIKU_MODEL": DECODER,
        "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
        "DISABLE_AUTOUPDATER": "1",
    }
    done = subprocess.run(
        [claude, "-p", QUESTION, "--tools", "", "--output-format", "json"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=240
    )
    assert done.returncode == 0, (done.stdout, done.stderr)
    result = json.loads(done.stdout)
    assert result.get("is_error") is False and result.get("subtype") == "success" and str(result.get("result", "")).strip(), result
    # It asked our model: the usage it reports is the server's count of Claude Code's system prompt and the question.
    assert result["modelUsage"][DECODER]["inputTokens"] > 1000, result
