"""Routes over fake engines: what each answers, and how request fields reach the runtime."""

from __future__ import annotations

import base64

import numpy as np

from tests.api.fakes import FakeGenerator

CHAT = [{"role": "user", "content": "Hi"}]


def test_openai_models(client) -> None:
    listing = client.simulate_get("/v1/models").json
    assert listing["object"] == "list"
    chat = next(m for m in listing["data"] if m["id"] == "fake-chat")
    assert chat == {
        "id": "fake-chat",
        "object": "model",
        "created": 1_700_000_000,
        "owned_by": "appliance",
        "task": "text-generation",
        "context_length": 64,
        "precision": "fp32",
        "execution_provider": "CPUExecutionProvider",
    }
    assert client.simulate_get("/v1/models/fake-embed").json["task"] == "feature-extraction"
    assert client.simulate_get("/v1/models/fake-chat/").json["id"] == "fake-chat"


def test_chat_fields_reach_the_runtime(make_client) -> None:
    generator = FakeGenerator()
    client = make_client(generator)
    body = {
        "model": "fake-chat",
        "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": [{"type": "text", "text": "Hi"}]}],
        "max_completion_tokens": 3,
        "temperature": 0.5,
        "top_p": 0.9,
        "top_k": 20,
        "min_p": 0.05,
        "typical_p": 0.8,
        "repeat_penalty": 1.2,
        "presence_penalty": 0.5,
        "frequency_penalty": -0.5,
        "logit_bias": {"42": -100},
        "seed": 11,
        "stop": "END",
        "min_tokens": 1,
        "stop_token_ids": [7],
        "prompt_truncate_len": 50,
        "an_unknown_field": {"is": "ignored"},
    }
    assert client.simulate_post("/v1/chat/completions", json=body).status_code == 200
    (request,) = generator.requests
    s = request.sampling
    assert (s.temperature, s.top_p, s.top_k, s.min_p, s.typical_p, s.repeat_penalty) == (0.5, 0.9, 20, 0.05, 0.8, 1.2)
    assert (s.presence_penalty, s.frequency_penalty, dict(s.logit_bias), s.seed) == (0.5, -0.5, {42: -100.0}, 11)
    assert (request.max_tokens, request.stop, request.min_tokens, request.stop_token_ids, request.prompt_truncate_len) == (3, ("END",), 1, (7,), 50)
    assert generator.detokenize(request.prompt_ids) == "<system>Be brief.<user>Hi<assistant>"


def test_n_choices_get_consecutive_seeds(make_client) -> None:
    generator = FakeGenerator()
    client = make_client(generator)
    result = client.simulate_post("/v1/chat/completions", json={"model": "fake-chat", "messages": CHAT, "n": 3, "seed": 5})
    assert [c["index"] for c in result.json["choices"]] == [0, 1, 2]
    assert [r.sampling.seed for r in generator.requests] == [5, 6, 7]
    usage = result.json["usage"]
    assert usage["completion_tokens"] == 3 * 8 and usage["prompt_tokens"] == len(generator.requests[0].prompt_ids)


def test_completions_prompt_forms(make_client) -> None:
    generator = FakeGenerator()
    client = make_client(generator)
    for prompt, expected in [("ab", [[1000, 197, 198]]), (["a", "b"], [[1000, 197], [1000, 198]]), ([5, 6], [[5, 6]]), ([[5], [6, 7]], [[5], [6, 7]])]:
        generator.requests.clear()
        result = client.simulate_post("/v1/completions", json={"model": "fake-chat", "prompt": prompt, "max_tokens": 1})
        assert result.status_code == 200, result.text
        assert [list(r.prompt_ids) for r in generator.requests] == expected
        assert len(result.json["choices"]) == len(expected)
    assert client.simulate_post("/v1/completions", json={"model": "fake-chat", "prompt": "a"}).json["choices"][0]["text"] == "Hello, world – ça va?"


def test_completion_defaults_to_16_tokens_and_echo(make_client) -> None:
    generator = FakeGenerator()
    client = make_client(generator)
    result = client.simulate_post("/v1/completions", json={"model": "fake-chat", "prompt": [300, 301], "echo": True, "max_tokens": 1})
    assert result.json["choices"][0]["text"] == "ÈÉHello"
    client.simulate_post("/v1/completions", json={"model": "fake-chat", "prompt": "a"})
    assert generator.requests[-1].max_tokens == 16


def test_ollama_options_and_defaults(make_client) -> None:
    generator = FakeGenerator()
    client = make_client(generator)
    client.simulate_post("/api/generate", json={"model": "fake-chat", "prompt": "Hi", "stream": False})
    defaults = generator.requests[-1]
    assert (defaults.sampling.temperature, defaults.sampling.top_k, defaults.sampling.top_p, defaults.sampling.repeat_penalty) == (0.8, 40, 0.9, 1.1)
    assert defaults.max_tokens is None and defaults.context_policy == "truncate"
    options = {"temperature": 0, "top_k": 5, "num_predict": 3, "num_ctx": 32, "stop": ["x"], "seed": 9, "repeat_last_n": 8, "min_p": 0.1}
    client.simulate_post("/api/chat", json={"model": "fake-chat", "messages": CHAT, "options": options, "stream": False})
    request = generator.requests[-1]
    assert (request.sampling.temperature, request.sampling.top_k, request.max_tokens, request.context_length) == (0, 5, 3, 32)
    assert (request.stop, request.sampling.seed, request.sampling.repeat_last_n, request.sampling.min_p) == (("x",), 9, 8, 0.1)


def test_ollama_generate_raw_system_and_context(make_client) -> None:
    generator = FakeGenerator()
    client = make_client(generator)
    templated = client.simulate_post("/api/generate", json={"model": "fake-chat", "prompt": "Hi", "system": "S", "stream": False}).json
    assert generator.detokenize(generator.requests[-1].prompt_ids) == "<system>S<user>Hi<assistant>"
    client.simulate_post("/api/generate", json={"model": "fake-chat", "prompt": "Hi", "raw": True, "stream": False})
    assert list(generator.requests[-1].prompt_ids) == [1000, 172, 205]
    client.simulate_post("/api/generate", json={"model": "fake-chat", "prompt": "More", "context": templated["context"], "stream": False})
    assert list(generator.requests[-1].prompt_ids[: len(templated["context"])]) == templated["context"]
    loaded = client.simulate_post("/api/generate", json={"model": "fake-chat", "prompt": "", "stream": False}).json
    assert loaded["done"] is True and loaded["done_reason"] == "load" and loaded["response"] == ""


def test_openai_embeddings(client) -> None:
    floats = client.simulate_post("/v1/embeddings", json={"model": "fake-embed", "input": ["a", "bc"]}).json
    assert [d["index"] for d in floats["data"]] == [0, 1] and floats["usage"] == {"prompt_tokens": 3, "total_tokens": 3}
    vectors = np.array([d["embedding"] for d in floats["data"]], dtype=np.float32)
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-6)
    encoded = client.simulate_post("/v1/embeddings", json={"model": "fake-embed", "input": ["a", "bc"], "encoding_format": "base64"}).json
    decoded = np.stack([np.frombuffer(base64.b64decode(d["embedding"]), dtype="<f4") for d in encoded["data"]])
    assert np.array_equal(decoded, vectors)
    refused = client.simulate_post("/v1/embeddings", json={"model": "fake-embed", "input": [[97], [98, 99]]})
    assert refused.status_code == 400 and refused.json["error"]["param"] == "input"
    assert "check_embedding_ctx_length=False" in refused.json["error"]["message"] and "--embedding-token-ids" in refused.json["error"]["message"]
    assert client.simulate_post("/v1/embeddings", json={"model": "fake-embed", "input": [97, 98]}).status_code == 400
    long = {"model": "fake-embed", "input": "x" * 20}
    assert client.simulate_post("/v1/embeddings", json={**long, "truncate": True}).json["usage"]["prompt_tokens"] == 8
    assert client.simulate_post("/v1/embeddings", json={**long, "dimensions": 2}).status_code == 400
    assert client.simulate_post("/v1/embeddings", json={**long, "encoding_format": "int8"}).status_code == 400


def test_token_id_embeddings_when_the_operator_says_clients_send_the_models_ids(make_client) -> None:
    client = make_client(embedding_token_ids=True)
    texts = client.simulate_post("/v1/embeddings", json={"model": "fake-embed", "input": ["a", "bc"]}).json
    ids = client.simulate_post("/v1/embeddings", json={"model": "fake-embed", "input": [[97], [98, 99]]}).json
    assert np.allclose(np.array([d["embedding"] for d in ids["data"]]), np.array([d["embedding"] for d in texts["data"]]))


def test_ollama_embeddings(client) -> None:
    embed = client.simulate_post("/api/embed", json={"model": "fake-embed", "input": ["a", "x" * 20]}).json
    assert len(embed["embeddings"]) == 2 and embed["prompt_eval_count"] == 9 and embed["total_duration"] > 0
    assert client.simulate_post("/api/embed", json={"model": "fake-embed", "input": "x" * 20, "truncate": False}).status_code == 400
    assert client.simulate_post("/api/embed", json={"model": "fake-embed", "input": []}).json["embeddings"] == []
    single = client.simulate_post("/api/embeddings", json={"model": "fake-embed", "prompt": "a"}).json
    assert single["embedding"] == embed["embeddings"][0]
    assert client.simulate_post("/api/embeddings", json={"model": "fake-embed", "prompt": ""}).json == {"embedding": []}


def test_ollama_listings(client) -> None:
    tags = client.simulate_get("/api/tags").json["models"]
    assert [t["name"] for t in tags] == ["fake-chat:latest", "fake-embed:latest"]
    assert tags[0]["details"] == {
        "parent_model": "",
        "format": "onnx",
        "family": "fake",
        "families": ["fake"],
        "parameter_size": "135M",
        "quantization_level": "F32",
    }
    ps = client.simulate_get("/api/ps").json["models"]
    assert ps[0]["context_length"] == 64 and ps[0]["size_vram"] == 0
    show = client.simulate_post("/api/show", json={"model": "fake-chat:latest"}).json
    assert show["capabilities"] == ["completion"] and show["model_info"]["fake.context_length"] == 64 and show["template"]
    assert client.simulate_post("/api/show", json={"name": "fake-embed"}).json["capabilities"] == ["embedding"]
    version = client.simulate_get("/api/version").json
    assert version["version"].count(".") == 2 and "appliance" in version


def test_tokenize_and_detokenize(client) -> None:
    assert client.simulate_post("/tokenize", json={"input": "ab"}).json == {"tokens": [1000, 197, 198]}
    assert client.simulate_post("/extras/tokenize", json={"model": "fake-chat", "input": "ab", "add_special": False}).json == {"tokens": [197, 198]}
    assert client.simulate_post("/tokenize", json={"content": "ab"}).json == {"tokens": [1000, 197, 198]}
    assert client.simulate_post("/extras/tokenize/count", json={"input": "ab"}).json == {"count": 3}
    assert client.simulate_post("/detokenize", json={"tokens": [1000, 197, 198]}).json == {"text": "ab"}
    assert client.simulate_post("/extras/detokenize", json={"tokens": [1, 2]}).json == {"text": "Hello,"}
    assert client.simulate_post("/tokenize", json={}).status_code == 400
    assert client.simulate_post("/detokenize", json={"tokens": ["a"]}).status_code == 400


def test_health_root_and_metrics(client) -> None:
    health = client.simulate_get("/health").json
    assert health["status"] == "ok" and health["models"] == ["fake-chat", "fake-embed"] and isinstance(health["pid"], int)
    assert health["generators"] == {"fake-chat": {"slots": 1, "active": 0, "waiting": 0, "steps": 0, "tokens": 0, "prefix_hits": 0, "cached_tokens": 0,
        "speculation": None, "speculative_steps": 0, "speculative_tokens": 0, "draft_tokens": 0, "accepted_tokens": 0,
        "background_active": 0, "background_waiting": 0}}  # fmt: skip
    assert "running" in client.simulate_get("/").text
    client.simulate_post("/v1/chat/completions", json={"model": "fake-chat", "messages": CHAT, "max_tokens": 3})
    client.simulate_post("/api/generate", json={"model": "fake-chat", "prompt": "Hi"})
    client.simulate_post("/v1/embeddings", json={"model": "fake-embed", "input": ["a", "b"]})
    client.simulate_get("/v1/models/none")
    metrics = client.simulate_get("/metrics")
    assert metrics.headers["content-type"].startswith("text/plain")
    text = metrics.text
    for line in (
        'appliance_requests_total{method="POST",route="/v1/chat/completions",status="200"} 1.0',
        'appliance_requests_total{method="GET",route="/v1/models/{model_id}",status="404"} 1.0',
        'appliance_completion_tokens_total{model="fake-chat"} 11.0',
        'appliance_embedding_inputs_total{model="fake-embed"} 2.0',
        'appliance_time_to_first_token_seconds_count{model="fake-chat"} 2.0',
        'appliance_decode_tokens_per_second_count{model="fake-chat"} 2.0',
        'appliance_queue_depth{model="fake-chat"} 0.0',
        'appliance_active_generations{model="fake-chat"} 0.0',
        'appliance_generations_total{model="fake-chat",reason="length"} 1.0',
    ):
        assert line in text, line
