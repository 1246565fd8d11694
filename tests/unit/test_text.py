"""Streaming text: the detokenizer never splits a character, stop strings never leak."""

from __future__ import annotations

import json
import random

import pytest
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

from runtime.text import IncrementalDetokenizer, StopMatcher, TokenBytes

RICH_TEXT = (
    "Crème brûlée, naïve façade, Ångström, Ελληνικά, Привет! 你好，世界。日本語のテキストと한국어 문장. "
    "Emoji: 🎉🚀✨ 👩‍👩‍👧 👍🏽 🇫🇷🇯🇵 — «quotes» and ‘curly’ ones… done."
)
CORPUS = ["The quick brown fox jumps over the lazy dog.", "Hello world, hello tests.", "A plain English sentence."] * 20


def byte_level_tokenizer() -> Tokenizer:
    """A byte-level BPE trained on English only: every non-ASCII character spans several tokens."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=["<eos>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tokenizer.train_from_iterator(CORPUS, trainer)
    return tokenizer


def sentencepiece_like_tokenizer() -> Tokenizer:
    """A BPE laid out like Llama's tokenizer.json: "▁" for spaces, byte fallback for unseen characters."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.normalizer = normalizers.Replace(" ", "\u2581")
    tokenizer.train_from_iterator(CORPUS, trainers.BpeTrainer(vocab_size=300, special_tokens=["<eos>"]))
    # The byte tokens <0x00>..<0xFF> belong to the model's own vocabulary, as in Llama's.
    config = json.loads(tokenizer.to_str())
    vocab = config["model"]["vocab"]
    for byte in range(256):
        vocab.setdefault(f"<0x{byte:02X}>", len(vocab))
    config["model"]["byte_fallback"] = True
    config["decoder"] = {
        "type": "Sequence",
        "decoders": [
            {"type": "Replace", "pattern": {"String": "\u2581"}, "content": " "},
            {"type": "ByteFallback"},
            {"type": "Fuse"},
        ],
    }
    return Tokenizer.from_str(json.dumps(config))


TOKENIZERS = {"byte-level": byte_level_tokenizer, "sentencepiece": sentencepiece_like_tokenizer}


@pytest.fixture(scope="module", params=sorted(TOKENIZERS))
def tokenizer(request) -> Tokenizer:
    return TOKENIZERS[request.param]()


def stream(tokenizer: Tokenizer, ids, context=()) -> list[str]:
    detokenizer = IncrementalDetokenizer(tokenizer, context)
    return [detokenizer.add(i) for i in ids] + [detokenizer.flush()]


def test_the_tokenizers_really_split_characters(tokenizer):
    token_bytes = TokenBytes(tokenizer)
    partial = 0
    for token in tokenizer.encode(RICH_TEXT).ids:
        try:
            token_bytes(token).decode()
        except UnicodeDecodeError:
            partial += 1
    assert partial > 20  # many tokens are pieces of a character


def test_joined_deltas_equal_one_shot_decode(tokenizer):
    ids = tokenizer.encode(RICH_TEXT).ids
    parts = stream(tokenizer, ids)
    assert "".join(parts) == tokenizer.decode(ids) == RICH_TEXT
    assert not any("\ufffd" in p for p in parts)


def test_deltas_after_a_prompt_keep_their_leading_space(tokenizer):
    prompt = tokenizer.encode("Hello world,").ids
    ids = tokenizer.encode(" hello 🎉 tests.").ids
    assert "".join(stream(tokenizer, ids, context=prompt)) == tokenizer.decode(prompt + ids)[len(tokenizer.decode(prompt)) :]


def test_an_unfinished_character_comes_out_at_the_end_as_a_replacement():
    tokenizer = byte_level_tokenizer()
    ids = tokenizer.encode("ok 🎉").ids
    parts = stream(tokenizer, ids[:-1])  # the emoji's last byte never arrives
    assert "".join(parts) == tokenizer.decode(ids[:-1])
    assert parts[-1].endswith("\ufffd") and not any("\ufffd" in p for p in parts[:-1])


def test_token_bytes_rebuild_the_utf8_exactly(tokenizer):
    ids = tokenizer.encode(RICH_TEXT).ids
    token_bytes = TokenBytes(tokenizer)
    assert b"".join(token_bytes(i) for i in ids) == RICH_TEXT.encode()


# -- stop strings ------------------------------------------------------------------


def run_stops(pieces, stops, active=True):
    matcher = StopMatcher(stops)
    emitted = []
    for piece in pieces:
        text, stop = matcher.feed(piece, active)
        emitted.append(text)
        if stop is not None:
            return emitted, stop
    emitted.append(matcher.flush())
    return emitted, None


def test_a_stop_split_over_three_pieces_is_cut_and_never_leaks():
    emitted, stop = run_stops(["Answer: 42", "<", "/ans", "wer> trailing"], ["</answer>"])
    assert stop == "</answer>"
    assert "".join(emitted) == "Answer: 42"
    assert all("<" not in part for part in emitted)


def test_text_that_only_looked_like_a_stop_is_released():
    emitted, stop = run_stops(["a <", "/an", "d b"], ["</answer>"])
    assert stop is None and "".join(emitted) == "a </and b"
    assert emitted[:2] == ["a ", ""]  # held while it could still become the stop


def test_the_earliest_of_many_stops_wins():
    emitted, stop = run_stops(["one two thr", "ee four"], ["four", "three", "two thr"])
    assert stop == "two thr" and "".join(emitted) == "one "


def test_stops_are_ignored_while_inactive():
    emitted, stop = run_stops(["x STOP y"], ["STOP"], active=False)
    assert stop is None and "".join(emitted) == "x STOP y"


@pytest.mark.parametrize("seed", range(25))
def test_any_split_of_the_text_gives_the_same_cut(seed):
    rng = random.Random(seed)
    stops = ["\n\nUser:", "###", "🎉🎉", "終わり"]
    text = "Some text… 你好 with # and ## and \n\nUse it 🎉 then 終わ then 終わり and more ###"
    cuts = sorted(rng.sample(range(1, len(text)), rng.randint(1, 12)))
    pieces = [text[a:b] for a, b in zip([0, *cuts], [*cuts, len(text)])]
    emitted, stop = run_stops(pieces, stops)
    assert stop == "終わり"
    assert "".join(emitted) == text[: text.index("終わり")]
