"""Grammars without an engine: compiling, refusing, closing schemas, and applying masks to logits."""

from __future__ import annotations

import json

import numpy as np
import pytest

from runtime.grammar import Grammar, GrammarError, apply_masks, closed_objects, unpack


@pytest.mark.parametrize(
    "grammar",
    [Grammar.json_object(), Grammar.json_schema({"type": "array", "items": {"type": "integer"}}), Grammar("gbnf", 'root ::= "a" | "b"'), Grammar("regex", "[0-9]+"), Grammar("lark", 'start: "x"+')],
)
def test_valid_grammars_compile(grammar: Grammar) -> None:
    grammar.check()


@pytest.mark.parametrize(
    "grammar, words",
    [
        (Grammar("gbnf", "root ::= ("), "GBNF grammar cannot be read"),
        (Grammar.json_schema({"type": "strin"}), "JSON schema cannot be enforced"),
        (Grammar.json_schema({"type": "string", "format": "colour"}), "JSON schema cannot be enforced"),
        (Grammar("regex", "("), "regular expression"),
        (Grammar("lark", "start: undefined_rule"), "Lark grammar"),
    ],
)
def test_bad_grammars_say_what_is_wrong(grammar: Grammar, words: str) -> None:
    with pytest.raises(GrammarError, match=words):
        grammar.check()


def test_unknown_kinds_are_a_programming_error() -> None:
    with pytest.raises(ValueError):
        Grammar("yaml", "x")


def test_closed_objects_keeps_order_and_explicit_openness() -> None:
    schema = {"type": "object", "properties": {"z": {"type": "object", "properties": {"y": {}}}, "a": {"anyOf": [{"properties": {"b": {}}}, {"type": "string"}]}}, "$defs": {"d": {"properties": {"e": {}}, "patternProperties": {"^x": {}}}}}
    closed = closed_objects(schema)
    assert list(closed["properties"]) == ["z", "a"]
    assert closed["additionalProperties"] is False and closed["properties"]["z"]["additionalProperties"] is False
    assert closed["properties"]["a"]["anyOf"][0]["additionalProperties"] is False
    assert "additionalProperties" not in closed["$defs"]["d"]
    assert schema["properties"]["z"] == {"type": "object", "properties": {"y": {}}}, "the caller's schema is not changed"
    assert list(json.loads(Grammar.json_schema(schema).source)["properties"]) == ["z", "a"]


@pytest.mark.parametrize("rows", [[0, 1, 2], [1, 3], [2]])
def test_masks_ban_exactly_the_disallowed_tokens_of_their_rows(rows: list[int]) -> None:
    vocab = 1000
    generator = np.random.default_rng(0)
    logits = generator.standard_normal((4, vocab)).astype(np.float32)
    before = logits.copy()
    bitmask = generator.integers(-(2**31), 2**31 - 1, size=(len(rows), (vocab + 31) // 32), dtype=np.int64).astype(np.int32)
    apply_masks(logits, rows, bitmask)
    allowed = unpack(bitmask, vocab)
    for i, row in enumerate(rows):
        assert np.array_equal(np.isneginf(logits[row]), ~allowed[i])
        assert np.array_equal(logits[row][allowed[i]], before[row][allowed[i]])
    others = [r for r in range(4) if r not in rows]
    assert np.array_equal(logits[others], before[others])


def test_logits_wider_than_the_mask_ban_the_padding() -> None:
    logits = np.zeros((1, 70), dtype=np.float32)
    apply_masks(logits, [0], np.full((1, 2), -1, dtype=np.int32))  # 64 tokens, all allowed
    assert not np.isinf(logits[0, :64]).any() and np.isneginf(logits[0, 64:]).all()
