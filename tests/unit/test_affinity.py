"""The routing key of a request's prompt start, and the replica ranking built on it (api/scaleout/affinity.py)."""

from __future__ import annotations

import io

from api.scaleout.affinity import PROMPT_CHARS, affinity_key, rank

SYSTEM = {"role": "system", "content": "Be terse."}


def turns(first: str, n: int) -> list[dict]:
    messages = [SYSTEM, {"role": "user", "content": first}]
    for i in range(n):
        messages += [{"role": "assistant", "content": f"answer {i}"}, {"role": "user", "content": f"follow-up {i}"}]
    return messages


def test_every_turn_of_a_chat_has_its_first_turns_key() -> None:
    for path in ("/v1/chat/completions", "/api/chat"):
        keys = {affinity_key(path, {"model": "m", "messages": turns("Hello", n)}) for n in range(4)}
        assert len(keys) == 1 and None not in keys


def test_an_anthropic_conversation_keeps_its_key_from_the_path_or_the_body_alone() -> None:
    def body(n: int, system: object = "Be terse.") -> dict:
        return {"model": "m", "max_tokens": 8, "system": system, "messages": turns("Hello", n)[1:]}

    keys = {affinity_key("/v1/messages", body(n)) for n in range(4)} | {affinity_key(None, body(n)) for n in range(4)}
    assert len(keys) == 1 and None not in keys
    assert affinity_key("/v1/messages", body(0, [{"type": "text", "text": "Other rules."}])) not in keys


def test_conversations_that_differ_in_their_first_message_or_model_differ() -> None:
    one = affinity_key("/v1/chat/completions", {"model": "m", "messages": turns("Hello", 0)})
    assert one != affinity_key("/v1/chat/completions", {"model": "m", "messages": turns("Bonjour", 0)})
    assert one != affinity_key("/v1/chat/completions", {"model": "other", "messages": turns("Hello", 0)})


def test_a_growing_prompt_keeps_its_key_and_a_responses_string_input_is_a_prompt() -> None:
    start = "x" * PROMPT_CHARS
    assert affinity_key("/v1/completions", {"prompt": start}) == affinity_key("/v1/completions", {"prompt": start + " more"})
    assert affinity_key("/api/generate", {"prompt": "a"}) != affinity_key("/api/generate", {"prompt": "b"})
    assert affinity_key("/v1/responses", {"input": "hi", "instructions": "terse"}) != affinity_key("/v1/responses", {"input": "hi"})
    items = [{"role": "user", "content": "hi"}]
    assert affinity_key("/v1/responses", {"input": items}) == affinity_key("/v1/responses", {"input": [*items, {"role": "assistant", "content": "yo"}]})


def test_ollama_context_names_its_conversation() -> None:
    key = affinity_key("/api/generate", {"prompt": "next", "context": list(range(100))})
    assert key == affinity_key("/api/generate", {"prompt": "other", "context": list(range(64)) + [9] * 80})


def test_routes_without_a_prompt_have_no_key() -> None:
    assert affinity_key("/v1/embeddings", {"input": "text"}) is None
    assert affinity_key("/v1/chat/completions", {"messages": "not a list"}) is None
    assert affinity_key("/v1/completions", {}) is None


def test_rank_is_stable_and_moves_only_a_removed_replicas_keys() -> None:
    replicas = ["a", "b", "c"]
    keys = [f"key {i}" for i in range(300)]
    first = {key: rank(key, replicas)[0] for key in keys}
    assert set(first.values()) == set(replicas)  # spread over all of them
    assert all(rank(key, list(reversed(replicas)))[0] == first[key] for key in keys)  # order-free
    after = {key: rank(key, ["a", "b"])[0] for key in keys}
    assert all(after[key] == first[key] for key in keys if first[key] != "c")
    grown = {key: rank(key, [*replicas, "d"])[0] for key in keys}
    assert all(grown[key] in (first[key], "d") for key in keys)


def test_a_forwarded_request_becomes_the_wsgi_environ_gunicorn_would_give() -> None:
    from api.scaleout.replica import wsgi_environ

    request = {
        "method": "POST", "path": "/v1/chat/completions", "query_string": "a=1", "scheme": "http",
        "headers": [("content-type", "application/json"), ("authorization", "Bearer k"), ("x-many", "1"), ("x-many", "2"), ("content-length", "999")],
        "server": ("127.0.0.1", 8000), "client": ("10.0.0.5", 5555),
    }
    environ = wsgi_environ(request, b'{"x": 1}')
    assert environ["CONTENT_TYPE"] == "application/json" and environ["HTTP_AUTHORIZATION"] == "Bearer k"
    assert environ["CONTENT_LENGTH"] == "8" and environ["HTTP_X_MANY"] == "1,2" and "HTTP_CONTENT_LENGTH" not in environ
    assert environ["PATH_INFO"] == "/v1/chat/completions" and environ["QUERY_STRING"] == "a=1" and environ["REMOTE_ADDR"] == "10.0.0.5"
    assert isinstance(environ["wsgi.input"], io.BytesIO) and environ["wsgi.input"].read() == b'{"x": 1}'


def test_a_body_alone_gets_the_key_its_route_would_give() -> None:
    # The direct path's router sees the body, not the path: the fields say which route it was.
    chat = {"model": "m", "messages": turns("Hello", 1)}
    assert affinity_key(None, chat) == affinity_key("/v1/chat/completions", chat) == affinity_key("/api/chat", chat)
    prompt = {"model": "m", "prompt": "Once upon a time"}
    assert affinity_key(None, prompt) == affinity_key("/v1/completions", prompt)
    context = {"model": "m", "prompt": "next", "context": [1, 2, 3]}
    assert affinity_key(None, context) == affinity_key("/api/generate", context)
    responses = {"model": "m", "input": [{"role": "user", "content": "hi"}]}
    assert affinity_key(None, responses) == affinity_key("/v1/responses", responses)
    assert affinity_key(None, {"model": "m"}) is None
