"""Client libraries against the real server: the openai SDK's Responses API and LangChain's embeddings.

The Responses API is read by the SDK as users call it (streamed and not, previous_response_id,
retrieve and delete), on the real int4 engine; with two workers, a response stored by one
is found by the other. LangChain's OpenAIEmbeddings is run with its defaults, which send
tiktoken token ids (here from a byte-level tiktoken encoding, since the real cl100k table is
downloaded at first use and this machine is offline): the server must refuse them rather
than embed them in MiniLM's vocabulary.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import openai
import pytest
import tiktoken
from langchain_openai import OpenAIEmbeddings

from tests.integration.server import Server
from tests.integration.test_server import DECODER, ENCODER

GREETING = "Say hello to Ada in five words."


def test_responses_create_and_retrieve(oai: openai.OpenAI) -> None:
    response = oai.responses.create(model=DECODER, input=GREETING, max_output_tokens=16, temperature=0)
    assert response.status in ("completed", "incomplete") and response.output_text.strip()
    assert response.usage.output_tokens <= 16 and response.usage.input_tokens > 5
    assert oai.responses.retrieve(response.id).output_text == response.output_text
    oai.responses.delete(response.id)
    with pytest.raises(openai.NotFoundError):
        oai.responses.retrieve(response.id)


def test_a_streamed_response_matches_the_whole_one(oai: openai.OpenAI) -> None:
    whole = oai.responses.create(model=DECODER, input=GREETING, max_output_tokens=24, temperature=0)
    events = list(oai.responses.create(model=DECODER, input=GREETING, max_output_tokens=24, temperature=0, stream=True))
    assert events[0].type == "response.created" and events[-1].type in ("response.completed", "response.incomplete")
    deltas = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert deltas == events[-1].response.output_text == whole.output_text  # greedy: the same tokens either way
    assert [e.sequence_number for e in events] == list(range(len(events)))


def test_previous_response_id_continues_the_conversation(oai: openai.OpenAI) -> None:
    first = oai.responses.create(model=DECODER, input="My name is Ada. Remember it.", max_output_tokens=12, temperature=0)
    second = oai.responses.create(model=DECODER, input="What is my name?", previous_response_id=first.id, max_output_tokens=12, temperature=0)
    # The second prompt holds the first turn (its input and answer) before the new question.
    assert second.usage.input_tokens > first.usage.input_tokens + first.usage.output_tokens
    alone = oai.responses.create(model=DECODER, input="What is my name?", max_output_tokens=12, temperature=0, store=False)
    assert second.usage.input_tokens > alone.usage.input_tokens
    # The first turn's prompt is still in the prefix cache: the next turn reuses it.
    assert second.usage.input_tokens_details.cached_tokens > 0


def test_two_workers_share_the_stored_responses(default_engines: dict[str, Path], tmp_path: Path) -> None:
    server = Server(default_engines["int4"].parent, tmp_path / "server.log", "--workers", "2", "--threads", "4", "--slots", "2")
    try:
        client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0, timeout=120)
        ids = [client.responses.create(model=DECODER, input=f"Count to {i}.", max_output_tokens=2, temperature=0).id for i in range(6)]
        # Each call is a new connection, which either worker may accept: every one must find every response
        # (that two stores on one file see each other's writes is tested in tests/api/test_responses.py).
        for response_id in ids * 2:
            with openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0, timeout=60) as fresh:
                assert fresh.responses.retrieve(response_id).id == response_id
    finally:
        assert server.stop() == 0, server.log()


# -- LangChain's embeddings ------------------------------------------------------------------


def _byte_level_encoding() -> tiktoken.Encoding:
    """A real tiktoken encoding (bytes are tokens 0-255), standing in for cl100k_base offline."""
    return tiktoken.Encoding(name="cl100k_base", pat_str=r"""\S+|\s+""", mergeable_ranks={bytes([i]): i for i in range(256)}, special_tokens={})


@pytest.fixture
def tiktoken_offline(monkeypatch: pytest.MonkeyPatch) -> None:
    encoding = _byte_level_encoding()
    monkeypatch.setattr(tiktoken, "encoding_for_model", lambda name: encoding)
    monkeypatch.setattr(tiktoken, "get_encoding", lambda name: encoding)


def test_langchain_embeddings_with_defaults_never_get_a_meaningless_vector(server: Server, tiktoken_offline: None) -> None:
    embeddings = OpenAIEmbeddings(model=ENCODER, base_url=f"{server.url}/v1", api_key="unused", max_retries=0)
    for call in (lambda: embeddings.embed_query("A cat sits on the mat."), lambda: embeddings.embed_documents(["A cat.", "A dog."])):
        with pytest.raises(openai.BadRequestError) as refused:
            call()
        assert "check_embedding_ctx_length=False" in str(refused.value)


def test_langchain_embeddings_without_the_length_check_match_the_server(server: Server, oai: openai.OpenAI) -> None:
    texts = ["A cat sits on the mat.", "Stock markets fell sharply today."]
    embeddings = OpenAIEmbeddings(model=ENCODER, base_url=f"{server.url}/v1", api_key="unused", check_embedding_ctx_length=False, max_retries=0)
    direct = np.array([d.embedding for d in oai.embeddings.create(model=ENCODER, input=texts).data])
    assert np.allclose(np.array(embeddings.embed_documents(texts)), direct, atol=1e-5)
    assert np.allclose(np.array(embeddings.embed_query(texts[0])), direct[0], atol=1e-5)
