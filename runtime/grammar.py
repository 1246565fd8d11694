"""Constrained decoding: a grammar the output must match, enforced token by token.

A request may carry a `Grammar` (a JSON Schema, a regular expression, a Lark grammar or a
llama.cpp GBNF grammar). Its sequence then gets a matcher from llguidance
(https://github.com/guidance-ai/llguidance), which knows, after every token, which tokens of
the vocabulary may come next:

1. before sampling, the scheduler asks every constrained sequence of the batch for its
   allowed-token bitmask in one call (`MaskComputer`, llguidance's own thread pool, the GIL
   released); in the decode loop that call runs while ONNX Runtime computes the step, since
   a matcher's state is known as soon as its previous token was sampled;
2. the masks are applied to the logits rows (`apply_masks`, vectorised over the rows):
   disallowed tokens get -inf, so greedy decoding, sampling and log-probabilities all see
   only what the grammar allows;
3. after sampling, the matcher consumes the token; when the grammar is complete it allows
   only end-of-sequence, and a matcher that cannot go on ends the sequence ('stop').

JSON whitespace is bounded (`JSON_WHITESPACE`): a small model cannot loop on blanks between
values. The vocabulary llguidance sees must decode exactly as ours does: `GrammarVocabulary`
checks every token's bytes against the engine's tokenizer when the engine loads, and the
export writes tokenizer.json with a decoder llguidance reads correctly (see
`export.loading.normalise_decoder`).
"""

from __future__ import annotations

import functools
import json
import threading
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import llguidance
import llguidance.numpy as llnp
import numpy as np
from llguidance import LLMatcher, LLTokenizer
from llguidance.gbnf_to_lark import gbnf_to_lark

from runtime.errors import RequestError

if TYPE_CHECKING:
    from llguidance._lib import JsonCompileOptions

GRAMMAR_KINDS = ("json_schema", "regex", "lark", "gbnf")
# Whitespace allowed between JSON tokens: one line break and an indent, as pretty-printed JSON
# has; never unbounded (a small model could otherwise loop on blanks).
JSON_WHITESPACE = r"(\r?\n)?[\x20\x09]{0,16}"
# How JSON is compiled: bounded blanks; a keyword that cannot be enforced is an error, not ignored.
JSON_OPTIONS: JsonCompileOptions = {"whitespace_pattern": JSON_WHITESPACE, "lenient": False}


def lenient_options() -> dict[str, Any]:
    """JSON_OPTIONS, but a keyword that cannot be enforced is ignored (a schema's `x-guidance`)."""
    return {**JSON_OPTIONS, "lenient": True}


# Compiled grammars kept per vocabulary (requests often repeat a schema); each sequence gets a copy.
_CACHE_SIZE = 64


class GrammarError(RequestError):
    """A grammar or schema that cannot be compiled or enforced (a 400, naming the field)."""


@dataclass(frozen=True)
class Grammar:
    """What a request's output must match: `kind` (GRAMMAR_KINDS) and its source text."""

    kind: str
    source: str

    @classmethod
    def json_schema(cls, schema: Mapping[str, Any] | bool, lenient: bool = False) -> Grammar:
        """Output that is JSON valid against `schema` (a JSON Schema object, or true).

        An object schema that lists properties but says nothing of others is enforced as closed
        (`closed_objects`): a small model otherwise invents keys, often the schema's own words.
        With `lenient`, keywords the matcher cannot enforce (propertyNames, say) are ignored
        instead of refused: the output follows the rest of the schema.
        """
        closed = closed_objects(schema)
        if lenient and isinstance(closed, dict):
            closed["x-guidance"] = lenient_options()
        # Key order is kept: properties are generated in the order the schema lists them.
        return cls("json_schema", json.dumps(closed, ensure_ascii=False))

    @classmethod
    def json_object(cls) -> Grammar:
        """Any JSON object (OpenAI's and Ollama's JSON mode)."""
        return cls.json_schema({"type": "object"})

    def __post_init__(self) -> None:
        if self.kind not in GRAMMAR_KINDS:
            raise ValueError(f"grammar kind must be one of {', '.join(GRAMMAR_KINDS)} (got {self.kind!r})")

    def llguidance_grammar(self) -> str:
        """The grammar in llguidance's form; GrammarError for what cannot be compiled."""
        return _compile(self.kind, self.source)

    def check(self) -> None:
        """Raise GrammarError unless llguidance accepts the grammar (no vocabulary needed)."""
        message = _validation_message(self.kind, self.source)
        if message:
            raise GrammarError(f"the {_NOUNS[self.kind]} cannot be enforced: {_first_line(message)}")


_SUBSCHEMA_LISTS = ("anyOf", "oneOf", "allOf", "prefixItems")
_SUBSCHEMA_MAPS = ("properties", "$defs", "definitions", "dependentSchemas")
_SUBSCHEMAS = ("items", "additionalItems", "contains", "not", "if", "then", "else", "additionalProperties")
_OPEN_KEYWORDS = ("additionalProperties", "patternProperties", "unevaluatedProperties")


def closed_objects(schema: Any) -> Any:
    """`schema` with `additionalProperties: false` wherever an object lists properties and allows no others explicitly.

    The rule xgrammar (vLLM) and llama.cpp's converter apply too; a schema that wants other
    keys says so (`additionalProperties: true` or a schema).
    """
    if not isinstance(schema, Mapping):
        return schema
    result = dict(schema)
    for key in _SUBSCHEMAS:
        if key in result:
            result[key] = closed_objects(result[key])
    for key in _SUBSCHEMA_LISTS:
        if isinstance(result.get(key), list):
            result[key] = [closed_objects(item) for item in result[key]]
    for key in _SUBSCHEMA_MAPS:
        if isinstance(result.get(key), Mapping):
            result[key] = {name: closed_objects(item) for name, item in result[key].items()}
    if "properties" in result and not any(key in result for key in _OPEN_KEYWORDS):
        result["additionalProperties"] = False
    return result


_NOUNS = {"json_schema": "JSON schema", "regex": "regular expression", "lark": "Lark grammar", "gbnf": "GBNF grammar"}


def _first_line(message: str) -> str:
    return message.strip().splitlines()[0] if message.strip() else message


# Requests often repeat a schema (a client's one response model, its tool list): each grammar is
# converted and validated once.
@functools.lru_cache(maxsize=_CACHE_SIZE)
def _validation_message(kind: str, source: str) -> str:
    return LLMatcher.validate_grammar(_compile(kind, source))


@functools.lru_cache(maxsize=_CACHE_SIZE)
def _compile(kind: str, source: str) -> str:
    try:
        if kind == "json_schema":
            return LLMatcher.grammar_from_json_schema(source, defaults=JSON_OPTIONS)
        if kind == "regex":
            return LLMatcher.grammar_from_regex(source)
        if kind == "lark":
            return LLMatcher.grammar_from_lark(source)
        return LLMatcher.grammar_from_lark(gbnf_to_lark(source))
    except Exception as exc:  # llguidance raises ValueError; its GBNF converter its own error type
        raise GrammarError(f"the {_NOUNS[kind]} cannot be read: {_first_line(str(exc))}") from exc


class GrammarVocabulary:
    """An engine's vocabulary as llguidance sees it, checked against ours, and its compiled grammars."""

    def __init__(self, tokenizer_json: str, vocab_size: int, eos_ids: Sequence[int], token_bytes: Callable[[int], bytes], special_ids: frozenset[int] = frozenset()) -> None:
        self.vocab_size = vocab_size
        self.problem: str | None = None
        self._cache: OrderedDict[Grammar, LLMatcher] = OrderedDict()
        self._lock = threading.Lock()
        try:
            self.tokenizer: LLTokenizer | None = LLTokenizer(tokenizer_json, n_vocab=vocab_size, eos_token=list(eos_ids) or None)
        except Exception as exc:  # a tokenizer llguidance cannot read: constrained requests are refused
            self.tokenizer = None
            self.problem = f"llguidance cannot read this engine's tokenizer ({_first_line(str(exc))})"
            return
        self.problem = self._self_test(token_bytes, special_ids)

    def _self_test(self, token_bytes: Callable[[int], bytes], special_ids: frozenset[int]) -> str | None:
        """Every token must mean the same bytes to llguidance as to our detokenizer."""
        assert self.tokenizer is not None
        for token in range(self.vocab_size):
            # Special tokens, and the lone 0xFF byte llguidance keeps as its special-token marker
            # (never part of UTF-8 text), are never text a grammar matches.
            if token in special_ids or self.tokenizer.is_special_token(token):
                continue
            theirs, ours = self.tokenizer.decode_bytes([token]), token_bytes(token)
            if theirs != ours:
                return (
                    f"llguidance reads token {token} as {theirs!r} but the engine's tokenizer as {ours!r}; "
                    "re-export the engine (the export normalises the tokenizer's decoder)"
                )
        # The JSON sanity check the misread decoder failed: blanks are allowed after '{'.
        matcher = LLMatcher(self.tokenizer, Grammar.json_object().llguidance_grammar())
        opening = self.tokenizer.tokenize_str("{")
        if len(opening) != 1 or not matcher.consume_token(opening[0]):
            return "llguidance cannot start a JSON object with this vocabulary"
        allowed = unpack(np.frombuffer(matcher.compute_bitmask(), dtype=np.int32)[None, :], self.vocab_size)[0]
        blanks = [ids[0] for ids in (self.tokenizer.tokenize_str(" "), self.tokenizer.tokenize_str("\n")) if len(ids) == 1]
        if not blanks or not all(allowed[i] for i in blanks):
            return "llguidance's JSON masks reject the space and newline tokens of this vocabulary"
        return None

    def matcher(self, grammar: Grammar) -> LLMatcher:
        """A fresh matcher for one sequence; GrammarError for a grammar that does not compile here."""
        return self.compile(grammar).deep_copy()

    def compile(self, grammar: Grammar) -> LLMatcher:
        """The grammar's pristine matcher, compiled once (kept among the recent ones); never consume with it."""
        if self.tokenizer is None or self.problem is not None:
            raise GrammarError(f"constrained decoding is unavailable for this engine: {self.problem}")
        with self._lock:
            pristine = self._cache.get(grammar)
            if pristine is not None:
                self._cache.move_to_end(grammar)
                return pristine
        pristine = LLMatcher(self.tokenizer, grammar.llguidance_grammar(), log_level=0)
        if pristine.is_error():
            raise GrammarError(f"the {_NOUNS[grammar.kind]} cannot be enforced: {_first_line(pristine.get_error())}")
        with self._lock:
            self._cache[grammar] = pristine
            while len(self._cache) > _CACHE_SIZE:
                self._cache.popitem(last=False)
        return pristine


class Constraint:
    """One sequence's grammar state."""

    def __init__(self, matcher: LLMatcher) -> None:
        self.matcher = matcher

    def advance(self, token: int) -> bool:
        """Consume the sampled token; False when the grammar cannot go on (it is complete or broken)."""
        if not self.matcher.consume_token(token):
            return False
        return not self.matcher.is_stopped()

    @property
    def error(self) -> str | None:
        return self.matcher.get_error() if self.matcher.is_error() else None


def unpack(bitmask: np.ndarray, vocab_size: int) -> np.ndarray:
    """llguidance's int32 bitmask rows (bit i of word w: token 32·w + i) → bool [rows, vocab]."""
    return np.unpackbits(np.ascontiguousarray(bitmask).view(np.uint8), axis=1, count=vocab_size, bitorder="little").view(bool)


# Added to a logit: -inf bans the token, 0 keeps it (indexed by the token's allowed bit).
_BAN_OR_KEEP = np.array([-np.inf, 0], dtype=np.float32)


def apply_masks(logits: np.ndarray, rows: Sequence[int], bitmask: np.ndarray) -> None:
    """Set the logits of disallowed tokens to -inf in `rows` (one bitmask row each), in place."""
    if not rows:
        return
    vocab = logits.shape[1]
    width = min(vocab, bitmask.shape[1] * 32)
    bits = np.unpackbits(np.ascontiguousarray(bitmask[: len(rows)]).view(np.uint8), axis=1, count=width, bitorder="little")
    if width < vocab:  # logits wider than the tokenizer's vocabulary: padding ids are never allowed
        bits = np.pad(bits, ((0, 0), (0, vocab - width)))
    bias = np.take(_BAN_OR_KEEP, bits)  # a table lookup and an add: 3x faster than a masked write
    first, count = rows[0], len(rows)
    if list(rows) == list(range(first, first + count)):
        target = logits[first : first + count]
        np.add(target, bias, out=target)
    else:
        index = np.asarray(rows)
        logits[index] += bias


class MaskComputer:
    """Computes the allowed-token bitmasks of a batch's constrained sequences, possibly in the background."""

    def __init__(self, vocab_size: int, threads: int | None = None) -> None:
        self.vocab_size = vocab_size
        self._executor = llguidance.LLExecutor(threads)
        self._background = ThreadPoolExecutor(1, thread_name_prefix="grammar-masks")

    def compute(self, constraints: Sequence[Constraint]) -> np.ndarray:
        """Bitmasks [len(constraints), words], row i for constraints[i]."""
        bitmask = llnp.allocate_token_bitmask(max(1, len(constraints)), self.vocab_size)
        if constraints:
            llnp.fill_next_token_bitmask_par(self._executor, [(c.matcher, i) for i, c in enumerate(constraints)], bitmask)
        return bitmask

    def start(self, constraints: Sequence[Constraint]) -> Future[np.ndarray]:
        """`compute` on a background thread (it releases the GIL), while the caller runs the step."""
        return self._background.submit(self.compute, list(constraints))

    def close(self) -> None:
        self._background.shutdown(wait=False)
