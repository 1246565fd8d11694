"""Constrained decoding on a tiny real engine: what a grammar constrains is valid, in any company.

The tiny model's weights are random, so whatever it generates is the grammar's doing: every
answer that ends by itself ('stop') must be valid against its schema or grammar.
"""

from __future__ import annotations

import json
import re
import threading

import jsonschema
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from export.loading import normalise_decoder
from runtime.engine import load_engine
from runtime.events import FINISH_LENGTH, FINISH_STOP, Delta, Finish
from runtime.generation import TextGenerator
from runtime.grammar import Grammar, GrammarError, GrammarVocabulary
from runtime.request import GenerationRequest
from runtime.sampling import SamplingParams

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def generator(tiny_llama_engine) -> TextGenerator:
    generator = TextGenerator(load_engine(tiny_llama_engine.directory), slots=8)
    yield generator
    generator.close()


def run(generator: TextGenerator, request: GenerationRequest) -> tuple[str, Finish]:
    events = list(generator.generate(request))
    assert isinstance(events[-1], Finish)
    return "".join(e.text for e in events if isinstance(e, Delta)), events[-1]


def prompt(generator: TextGenerator, text: str) -> tuple[int, ...]:
    return tuple(generator.chat_prompt_ids([{"role": "user", "content": text}]))


def test_the_engine_vocabulary_passes_its_self_test(generator) -> None:
    assert generator.grammars.problem is None


def test_a_gguf_style_decoder_fails_the_self_test_and_the_export_normalises_it(generator) -> None:
    config = json.loads(generator.tokenizer.to_str())
    byte_level = config["decoder"]
    config["decoder"] = {"type": "Sequence", "decoders": [{"type": "ByteFallback"}, {"type": "Fuse"}, {"type": "Replace", "pattern": {"String": "\u2581"}, "content": " "}, byte_level]}
    vocabulary = GrammarVocabulary(json.dumps(config), generator.manifest.vocab_size, generator.eos_ids, generator.token_bytes, generator.token_bytes.special_ids)
    assert vocabulary.problem and "re-export" in vocabulary.problem
    with pytest.raises(GrammarError, match="unavailable"):
        vocabulary.matcher(Grammar.json_object())
    change = normalise_decoder(config)
    assert change and "ByteLevel" in change and config["decoder"] == byte_level
    fixed = GrammarVocabulary(json.dumps(config), generator.manifest.vocab_size, generator.eos_ids, generator.token_bytes, generator.token_bytes.special_ids)
    assert fixed.problem is None


def test_gbnf_yes_or_no(generator) -> None:
    grammar = Grammar("gbnf", 'root ::= "yes" | "no"')
    for seed in range(8):
        text, finish = run(generator, GenerationRequest(prompt(generator, f"Question {seed}?"), SamplingParams(temperature=1.0, seed=seed), max_tokens=20, grammar=grammar))
        assert text in ("yes", "no") and finish.reason == FINISH_STOP


def test_regex_and_lark_grammars(generator) -> None:
    text, _ = run(generator, GenerationRequest(prompt(generator, "a date"), SamplingParams(temperature=1.0, seed=3), max_tokens=30, grammar=Grammar("regex", r"20[0-9]{2}-[01][0-9]-[0-3][0-9]")))
    assert re.fullmatch(r"20[0-9]{2}-[01][0-9]-[0-3][0-9]", text)
    lark = 'start: "(" NUMBER ("," NUMBER)* ")"\nNUMBER: /[0-9]{1,3}/'
    text, finish = run(generator, GenerationRequest(prompt(generator, "a tuple"), SamplingParams(temperature=1.0, seed=4), max_tokens=60, grammar=Grammar("lark", lark)))
    assert finish.reason == FINISH_LENGTH or re.fullmatch(r"\([0-9]{1,3}(,[0-9]{1,3})*\)", text)


def test_a_grammar_that_cannot_finish_in_max_tokens_ends_with_length(generator) -> None:
    grammar = Grammar.json_schema({"type": "object", "properties": {"text": {"type": "string", "minLength": 200}}, "required": ["text"]})
    text, finish = run(generator, GenerationRequest(prompt(generator, "long"), SamplingParams(temperature=1.0, seed=1), max_tokens=12, grammar=grammar))
    assert finish.reason == FINISH_LENGTH and finish.usage.completion_tokens == 12 and text.startswith("{")


def test_json_whitespace_is_bounded(generator) -> None:
    # Logit bias towards the space token cannot make the answer longer than the grammar's blanks allow.
    space = generator.tokenize(" ", add_special_tokens=False)
    sampling = SamplingParams(temperature=0, logit_bias={space[0]: 100.0}) if len(space) == 1 else SamplingParams(temperature=0)
    text, finish = run(generator, GenerationRequest(prompt(generator, "x"), sampling, max_tokens=200, grammar=Grammar.json_schema({"type": "object", "properties": {"a": {"type": "boolean"}}, "required": ["a"]})))
    assert finish.reason == FINISH_STOP, text
    assert json.loads(text) in ({"a": True}, {"a": False})
    assert all(blank.count("\n") <= 1 and len(blank) <= 18 for blank in re.findall(r"\s+", text)), repr(text)


def test_min_tokens_beyond_a_finished_grammar_ends_cleanly(generator) -> None:
    text, finish = run(generator, GenerationRequest(prompt(generator, "x"), SamplingParams(temperature=0), max_tokens=30, min_tokens=10, grammar=Grammar("gbnf", 'root ::= "ok"')))
    assert text == "ok" and finish.reason == FINISH_STOP


def test_constrained_and_free_sequences_share_a_batch(generator) -> None:
    """Grammars apply to their own rows only: free greedy output is the same alone and beside constrained ones."""
    schema = {"type": "object", "properties": {"n": {"type": "integer", "minimum": 0, "maximum": 99}, "tag": {"enum": ["a", "b"]}}, "required": ["n", "tag"]}
    free = GenerationRequest(prompt(generator, "free text please"), SamplingParams(temperature=0), max_tokens=40, ignore_eos=True)
    alone, _ = run(generator, free)
    results: dict[int, tuple[str, Finish]] = {}

    def one(index: int, request: GenerationRequest) -> None:
        results[index] = run(generator, request)

    requests = [free if i % 2 == 0 else GenerationRequest(prompt(generator, f"json {i}"), SamplingParams(temperature=1.0, seed=i), max_tokens=120, grammar=Grammar.json_schema(schema)) for i in range(8)]
    threads = [threading.Thread(target=one, args=(i, r)) for i, r in enumerate(requests)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    for index, (text, finish) in results.items():
        if index % 2 == 0:
            assert text == alone
        else:
            assert finish.reason == FINISH_STOP, text
            jsonschema.validate(json.loads(text), schema)


def test_bad_grammars_are_request_errors(generator) -> None:
    for grammar in (Grammar("gbnf", "root ::= ("), Grammar.json_schema({"type": "strin"}), Grammar("regex", "(")):
        with pytest.raises(GrammarError):
            generator.prepare(GenerationRequest(prompt(generator, "x"), grammar=grammar))


# -- randomized schemas ---------------------------------------------------------------------------------

_NAMES = st.text(alphabet="abcdefghijklmnopqrstuvwxyz_", min_size=1, max_size=8)
_LEAVES = st.one_of(
    st.just({"type": "boolean"}),
    st.just({"type": "null"}),
    st.builds(lambda lo, span: {"type": "integer", "minimum": lo, "maximum": lo + span}, st.integers(-1000, 1000), st.integers(0, 500)),
    st.builds(lambda n: {"type": "string", "maxLength": n}, st.integers(0, 12)),
    st.builds(lambda n, m: {"type": "string", "minLength": n, "maxLength": n + m}, st.integers(1, 4), st.integers(0, 6)),
    st.lists(st.text(alphabet="xyz é", min_size=1, max_size=5), min_size=1, max_size=4, unique=True).map(lambda values: {"enum": values}),
    st.builds(lambda v: {"const": v}, st.one_of(st.integers(-5, 5), st.text(alphabet="ab", max_size=3), st.booleans())),
    st.just({"type": "string", "pattern": "^[a-c]{1,4}$"}),
)


def _extend(children: st.SearchStrategy) -> st.SearchStrategy:
    objects = st.dictionaries(_NAMES, children, min_size=1, max_size=4).flatmap(
        lambda props: st.lists(st.sampled_from(sorted(props)), unique=True).map(lambda required: {"type": "object", "properties": props, "required": required})
    )
    arrays = st.builds(lambda item, n: {"type": "array", "items": item, "maxItems": n}, children, st.integers(0, 3))
    unions = st.lists(children, min_size=2, max_size=3).map(lambda options: {"anyOf": options})
    return st.one_of(objects, arrays, unions)


SCHEMAS = st.recursive(_LEAVES, _extend, max_leaves=8).filter(lambda s: s.get("type") == "object" or "anyOf" in s or "items" in s)


@settings(max_examples=200, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(schema=SCHEMAS, words=st.text(alphabet="abc xyz{}[]\":,\n", max_size=40), seed=st.integers(0, 2**32 - 1))
def test_every_constrained_output_is_valid_against_its_schema(generator, schema, words, seed) -> None:
    request = GenerationRequest(prompt(generator, words), SamplingParams(temperature=1.0, seed=seed), max_tokens=160, grammar=Grammar.json_schema(schema))
    text, finish = run(generator, request)
    if finish.reason == FINISH_STOP:
        jsonschema.validate(json.loads(text), schema)
    else:  # cut off by max_tokens: a prefix of valid JSON, never anything else
        assert finish.reason == FINISH_LENGTH and finish.usage.completion_tokens == 160


def test_hermes_required_calls_are_blocks_whose_arguments_match(generator) -> None:
    from api.tools.plan import HERMES, REQUIRED, Tool, ToolPlan
    from api.tools.readers import HermesReader

    parameters = {"type": "object", "properties": {"city": {"type": "string", "maxLength": 12}, "days": {"type": "integer", "minimum": 1, "maximum": 7}}, "required": ["city", "days"]}
    tools = (Tool("forecast", None, parameters), Tool("noop", None, {"type": "object", "properties": {}}))
    for parallel in (False, True):
        grammar = ToolPlan(tools, REQUIRED, parallel, HERMES).grammar()
        for seed in range(4):
            text, finish = run(generator, GenerationRequest(prompt(generator, "call"), SamplingParams(temperature=1.0, seed=seed), max_tokens=150, grammar=grammar))
            if finish.reason == FINISH_LENGTH:
                continue
            reader = HermesReader()
            reader.feed(text)
            assert reader.calls and reader.content == "", text
            assert parallel or len(reader.calls) == 1
            for call in reader.calls:
                assert call.name in ("forecast", "noop")
                jsonschema.validate(json.loads(call.arguments), parameters if call.name == "forecast" else {"type": "object", "maxProperties": 0})
