"""The real server (gunicorn, the default engines) driven by the official openai and ollama clients.

Greedy answers are checked against the runtime run in-process on the same engine: the
HTTP layer must not change a single token.
"""

from __future__ import annotations

import http.client
import json
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import ollama
import openai
import pytest

from tests.integration.server import Server

pytestmark = pytest.mark.integration

DECODER = "smollm2-135m-instruct-int4"  # the engine `make serve` builds
ENCODER = "all-minilm-l6-v2"
QUESTION = [{"role": "user", "content": "What is the capital of France? Answer in one sentence."}]


@pytest.fixture(scope="module")
def reference(default_engines: dict[str, Path]):
    """The runtime in this process, on the same engine: what greedy decoding must produce."""
    from runtime.engine import load_engine
    from runtime.generation import TextGenerator
    from runtime.request import GenerationRequest
    from runtime.sampling import SamplingParams

    generator = TextGenerator(load_engine(default_engines["int4"]))

    def greedy(messages: list[dict], max_tokens: int) -> str:
        ids = tuple(generator.chat_prompt_ids(messages))
        return generator.complete(GenerationRequest(ids, SamplingParams(temperature=0), max_tokens=max_tokens))[0]

    return greedy


def test_openai_chat_matches_the_runtime(oai: openai.OpenAI, reference) -> None:
    answer = oai.chat.completions.create(model=DECODER, messages=QUESTION, max_tokens=24, temperature=0)
    choice = answer.choices[0]
    assert choice.message.role == "assistant" and choice.message.content == reference(QUESTION, 24)
    assert "Paris" in choice.message.content
    assert answer.usage.completion_tokens <= 24 and answer.usage.total_tokens == answer.usage.prompt_tokens + answer.usage.completion_tokens
    assert answer.id.startswith("chatcmpl-") and answer.model == DECODER and choice.finish_reason in ("stop", "length")


def test_openai_chat_stream_with_usage(oai: openai.OpenAI, reference) -> None:
    chunks = list(
        oai.chat.completions.create(
            model=DECODER, messages=QUESTION, max_tokens=24, temperature=0, stream=True, stream_options={"include_usage": True}
        )
    )
    assert len({(c.id, c.created) for c in chunks}) == 1
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == reference(QUESTION, 24)
    finishing = [c for c in chunks if c.choices and c.choices[0].finish_reason]
    assert len(finishing) == 1 and chunks[-1].choices == [] and chunks[-1].usage.completion_tokens > 0


def test_openai_completions_n_stop_and_stream(oai: openai.OpenAI) -> None:
    answer = oai.completions.create(model=DECODER, prompt="The three primary colors are", max_tokens=20, n=2, temperature=0.9, seed=3)
    assert [c.index for c in answer.choices] == [0, 1] and all(c.text for c in answer.choices)
    stopped = oai.completions.create(model=DECODER, prompt="Count: 1, 2, 3, 4,", max_tokens=20, temperature=0, stop=[" 6"])
    assert stopped.choices[0].finish_reason == "stop" and "6" not in stopped.choices[0].text and "5" in stopped.choices[0].text
    streamed = oai.completions.create(model=DECODER, prompt="Count: 1, 2, 3, 4,", max_tokens=20, temperature=0, stop=[" 6"], stream=True)
    assert "".join(c.choices[0].text for c in streamed) == stopped.choices[0].text


def test_openai_seed_reproducibility(oai: openai.OpenAI) -> None:
    def sample(seed: int) -> str:
        return oai.chat.completions.create(model=DECODER, messages=QUESTION, max_tokens=24, temperature=1.0, seed=seed).choices[0].message.content

    assert sample(42) == sample(42)
    assert len({sample(1), sample(2), sample(3)}) > 1


def test_openai_logprobs(oai: openai.OpenAI) -> None:
    answer = oai.chat.completions.create(model=DECODER, messages=QUESTION, max_tokens=8, temperature=0, logprobs=True, top_logprobs=3)
    entries = answer.choices[0].logprobs.content
    assert len(entries) == answer.usage.completion_tokens
    assert "".join(e.token for e in entries).startswith(answer.choices[0].message.content[:5])
    for entry in entries:
        assert len(entry.top_logprobs) == 3 and entry.top_logprobs[0].token == entry.token  # greedy picks the top one
        assert entry.logprob <= 0 and bytes(entry.bytes).decode("utf-8", "replace") == entry.token
    legacy = oai.completions.create(model=DECODER, prompt="Paris is", max_tokens=4, temperature=0, logprobs=2)
    assert len(legacy.choices[0].logprobs.tokens) == 4 and all(len(t) == 2 for t in legacy.choices[0].logprobs.top_logprobs)


def test_openai_embeddings_and_models(oai: openai.OpenAI) -> None:
    texts = ["A cat sits on the mat.", "Un chat est assis sur le tapis.", "Quarterly revenue rose 4%."]
    as_base64 = oai.embeddings.create(model=ENCODER, input=texts)  # the client asks for base64 and decodes it
    as_floats = oai.embeddings.create(model=ENCODER, input=texts, encoding_format="float")
    a = np.array([d.embedding for d in as_base64.data])
    b = np.array([d.embedding for d in as_floats.data])
    assert a.shape == (3, 384) and np.allclose(a, b, atol=1e-7)
    assert as_floats.usage.prompt_tokens > 0
    assert a[0] @ a[1] > a[0] @ a[2]  # the translation is closer than the unrelated sentence
    assert {m.id for m in oai.models.list()} == {DECODER, ENCODER}
    assert oai.models.retrieve(DECODER).id == DECODER


def test_openai_errors(oai: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as missing:
        oai.chat.completions.create(model="gpt-4o", messages=QUESTION)
    assert missing.value.body["code"] == "model_not_found"
    with pytest.raises(openai.BadRequestError) as too_long:
        oai.chat.completions.create(model=DECODER, messages=[{"role": "user", "content": "word " * 3000}])
    assert too_long.value.body["code"] == "context_length_exceeded"
    with pytest.raises(openai.BadRequestError) as wrong:
        oai.chat.completions.create(model=DECODER, messages=QUESTION, temperature="hot")
    assert wrong.value.body["param"] == "temperature"


def test_ollama_chat_and_generate(olm: ollama.Client, reference) -> None:
    greedy = {"temperature": 0, "repeat_penalty": 1.0, "num_predict": 24}
    answer = olm.chat(model=DECODER, messages=QUESTION, options=greedy)
    assert answer.message.role == "assistant" and answer.message.content == reference(QUESTION, 24)
    assert answer.done and answer.done_reason in ("stop", "length") and answer.eval_count > 0 and answer.total_duration > 0
    parts = list(olm.chat(model=f"{DECODER}:latest", messages=QUESTION, options=greedy, stream=True))
    assert "".join(p.message.content for p in parts) == answer.message.content
    assert parts[-1].done and not any(p.done for p in parts[:-1]) and parts[-1].prompt_eval_count == answer.prompt_eval_count
    generated = olm.generate(model=DECODER, prompt=QUESTION[0]["content"], options=greedy)
    assert generated.response == answer.message.content and generated.context
    streamed = list(olm.generate(model=DECODER, prompt=QUESTION[0]["content"], options=greedy, stream=True))
    assert "".join(p.response for p in streamed) == generated.response


def test_ollama_embeddings_listings_and_errors(olm: ollama.Client, oai: openai.OpenAI) -> None:
    embedded = olm.embed(model=ENCODER, input=["A cat sits on the mat.", "Quarterly revenue rose 4%."])
    reference = oai.embeddings.create(model=ENCODER, input=["A cat sits on the mat.", "Quarterly revenue rose 4%."], encoding_format="float")
    assert np.allclose(np.array(embedded.embeddings), np.array([d.embedding for d in reference.data]), atol=1e-6)
    assert olm.embeddings(model=ENCODER, prompt="A cat sits on the mat.").embedding == pytest.approx(embedded.embeddings[0], abs=1e-6)
    assert {m.model for m in olm.list().models} == {f"{DECODER}:latest", f"{ENCODER}:latest"}
    assert olm.show(DECODER).modelinfo["llama.context_length"] == 2048
    assert {m.name for m in olm.ps().models} == {f"{DECODER}:latest", f"{ENCODER}:latest"}
    with pytest.raises(ollama.ResponseError) as missing:
        olm.chat(model="llama3", messages=QUESTION)
    assert missing.value.status_code == 404


def _frame_times(server: Server, route: str, body: dict) -> tuple[list[float], list[bytes]]:
    """When each line of a streamed response arrived, read straight off the socket."""
    times, lines = [], []
    with httpx.stream("POST", f"{server.url}{route}", json=body, timeout=120) as response:
        assert response.status_code == 200
        for line in response.iter_lines():
            if line:
                times.append(time.perf_counter())
                lines.append(line.encode())
    return times, lines


@pytest.mark.parametrize("route, body", [
    ("/v1/chat/completions", {"model": DECODER, "messages": QUESTION, "max_tokens": 48, "ignore_eos": True, "stream": True}),
    ("/api/chat", {"model": DECODER, "messages": QUESTION, "options": {"num_predict": 48}, "ignore_eos": True}),
])
def test_tokens_arrive_one_by_one(server: Server, route: str, body: dict) -> None:
    times, lines = _frame_times(server, route, body)
    assert len(lines) >= 32  # a token that ends a word-piece or is special may add no text
    spread = times[-1] - times[1]
    gaps = np.diff(times[1:])
    # A buffered body would arrive at once; a live stream spreads over the decode (~15 ms a token here).
    assert spread > 0.2, f"the stream arrived within {spread * 1000:.0f} ms"
    assert np.count_nonzero(gaps > 0.002) >= 24, "most tokens should arrive in their own write"


def test_metrics_after_traffic(server: Server) -> None:
    text = httpx.get(f"{server.url}/metrics").text
    assert f'appliance_completion_tokens_total{{model="{DECODER}"}}' in text
    assert "appliance_time_to_first_token_seconds_bucket" in text and "appliance_queue_depth" in text
    assert httpx.get(f"{server.url}/openapi.json").json()["openapi"].startswith("3.")


def readme_curl_examples() -> list[str]:
    """The curl commands of the README's Serving section and of docs/serving.md, continuation lines joined."""
    root = Path(__file__).resolve().parents[2]
    readme = (root / "README.md").read_text()
    text = readme.split("## Serving", 1)[1].split("\n## ", 1)[0] + (root / "docs" / "serving.md").read_text()
    commands = []
    for block in text.split("```sh\n")[1:]:
        script = block.split("```", 1)[0].replace("\\\n", " ")
        commands.extend(line for line in script.splitlines() if line.startswith("curl "))
    return commands


def test_readme_curl_examples(server: Server) -> None:
    import shutil
    import subprocess

    if shutil.which("curl") is None:
        pytest.skip("curl is not installed")
    commands = readme_curl_examples()
    assert len(commands) >= 15
    for command in commands:
        command = command.replace("curl ", "curl --fail --max-time 120 ", 1).replace("http://127.0.0.1:8000", server.url)
        result = subprocess.run(["bash", "-c", command], capture_output=True, text=True, timeout=150)
        assert result.returncode == 0 and result.stdout, f"{command}\n{result.stderr}"


def test_sigterm_drains_in_flight_streams(default_engines: dict[str, Path], tmp_path: Path) -> None:
    """SIGTERM: the running stream finishes whole; a new request on a kept-alive connection gets 503."""
    drained = Server(default_engines["int4"], tmp_path / "drain.log", "--drain-timeout", "60")
    try:
        idle = http.client.HTTPConnection("127.0.0.1", drained.port, timeout=30)
        idle.request("GET", "/health")
        health = idle.getresponse()
        health.read()  # the connection stays open for the request after SIGTERM
        assert health.status == 200
        lines: list[bytes] = []
        started = threading.Event()
        body = {"model": DECODER, "messages": QUESTION, "max_tokens": 120, "ignore_eos": True, "stream": True}

        def consume() -> None:
            with httpx.stream("POST", f"{drained.url}/v1/chat/completions", json=body, timeout=120) as response:
                for line in response.iter_lines():
                    if line:
                        lines.append(line.encode())
                        started.set()

        reader = threading.Thread(target=consume)
        reader.start()
        assert started.wait(60)
        drained.terminate()
        time.sleep(0.5)
        idle.request("GET", "/v1/models")
        refused = idle.getresponse()
        assert refused.status == 503 and "shutting down" in json.loads(refused.read())["error"]["message"]
        reader.join(90)
        assert lines[-1] == b"data: [DONE]"
        chunks = [json.loads(line[len(b"data: ") :]) for line in lines[:-1]]
        assert chunks[-1]["choices"][0]["finish_reason"] == "length"
        assert sum(1 for c in chunks if c["choices"][0]["delta"].get("content")) >= 100
        assert drained.process.wait(60) == 0
    finally:
        drained.stop()


def test_tokenize_counts_every_token(server: Server) -> None:
    """Counting is never cut at the model's input limit (MiniLM's tokenizer.json truncates at 128)."""
    text = "word " * 400
    for model in (ENCODER, DECODER):
        count = httpx.post(f"{server.url}/extras/tokenize/count", json={"model": model, "input": text}).json()["count"]
        assert count >= 400, model
