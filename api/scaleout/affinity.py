"""Which replica a request belongs on: a key for the prompt's start, and a stable choice by key.

A conversation's turns repeat its beginning (the system prompt and first user message, or
the start of a growing prompt), and the replica that evaluated it holds those positions in
its prefix cache. `affinity_key` reads that beginning from a request body; `rank` orders
replicas by rendezvous hashing, so a key keeps its replica while replicas come and go (only
keys of a removed replica move). Neither imports Ray: the ingress (ingress.py) makes the keys,
the router (router.py) ranks with them.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

# Characters of a plain prompt that name its conversation: long enough to tell conversations
# apart, short enough that each turn of one (which appends to the prompt) shares them.
PROMPT_CHARS = 512
# Token ids of an Ollama `context` that name its conversation.
CONTEXT_TOKENS = 64

CHAT_PATHS = frozenset({"/v1/chat/completions", "/api/chat", "/v1/messages"})
PROMPT_PATHS = frozenset({"/v1/completions", "/api/generate"})
RESPONSES_PATH = "/v1/responses"


def _digest(*parts: str) -> str:
    return hashlib.sha256("\x1f".join(parts).encode()).hexdigest()[:32]


def _conversation_start(messages: Sequence[Any]) -> list[Any]:
    """The messages up to and including the first user message: what every later turn repeats."""
    start = []
    for message in messages:
        start.append(message)
        if isinstance(message, Mapping) and message.get("role") == "user":
            break
    return start


def _path_of(body: Mapping[str, Any]) -> str:
    """The route a body was sent to, read from its fields: where only the body is known."""
    if "messages" in body:
        return "/v1/chat/completions"
    if "prompt" in body or "context" in body:
        return "/api/generate"
    return RESPONSES_PATH if "input" in body else ""


def affinity_key(path: str | None, body: Mapping[str, Any]) -> str | None:
    """The key of a generation request's prompt start, or None when it has none to keep together.

    Chats (`messages` of /v1/chat/completions, /api/chat and /v1/messages, a Responses `input` given as
    items) are keyed by their messages up to the first user message, with the system prompt
    or instructions; plain prompts (/v1/completions, /api/generate, a Responses `input`
    string) by their first PROMPT_CHARS characters; /api/generate's `context` by its first
    CONTEXT_TOKENS ids. Other routes (embeddings, listings) have no key: any replica will do.

    `path` None: the route is not known (HAProxy shows the direct path's router the body
    alone), so the body's fields say the kind: `messages` a chat, `prompt` or `context` a plain
    prompt, `input` a Responses input. An embeddings `input` is then keyed too, which only
    gives equal texts the same replica.
    """
    if path is None:
        path = _path_of(body)
    model = str(body.get("model", ""))
    system = str(body.get("instructions") or body.get("system") or "")
    if path in CHAT_PATHS:
        conversation = body.get("messages")
        if not isinstance(conversation, list):
            return None  # the replica refuses the body
    elif path == RESPONSES_PATH:
        conversation = body.get("input")
    elif path in PROMPT_PATHS:
        conversation = body.get("prompt")
        context = body.get("context")
        if isinstance(context, list) and context:
            return _digest("context", model, json.dumps(context[:CONTEXT_TOKENS]))
    else:
        return None
    if isinstance(conversation, list) and conversation and all(isinstance(item, Mapping) for item in conversation):
        return _digest("chat", model, system, json.dumps(_conversation_start(conversation), sort_keys=True, default=str))
    if isinstance(conversation, list) and conversation and isinstance(conversation[0], str):
        conversation = conversation[0]  # a batch of prompts: the first names it
    if isinstance(conversation, str) and conversation:
        return _digest("prompt", model, system, conversation[:PROMPT_CHARS])
    return None


def rank(key: str, replicas: Iterable[str]) -> list[str]:
    """Replica ids, the key's own first: highest rendezvous score (sha256 of key and id) first."""
    return sorted(replicas, key=lambda replica: hashlib.sha256(f"{key}\x1f{replica}".encode()).digest(), reverse=True)
