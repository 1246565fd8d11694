"""Sampling: each control does what its documentation says, per row, reproducibly."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from runtime.errors import RequestError
from runtime.sampling import SamplingParams, SequenceSampler, log_softmax, sample_batch


def state(params: SamplingParams, prompt=(), eos=(), min_tokens=0) -> SequenceSampler:
    return SequenceSampler(params, list(prompt), eos, min_tokens)


def draws(logits: np.ndarray, params: SamplingParams, n: int = 400) -> Counter:
    sampler = state(params)
    return Counter(sample_batch(logits[None].copy(), [sampler])[0].token_id for _ in range(n))


def probs_logits(probs) -> np.ndarray:
    return np.log(np.asarray(probs, dtype=np.float32))


def test_greedy_takes_the_argmax_whatever_the_seed():
    logits = np.random.default_rng(0).normal(size=(3, 1000)).astype(np.float32)
    states = [state(SamplingParams(temperature=0, seed=s)) for s in range(3)]
    tokens = [s.token_id for s in sample_batch(logits.copy(), states)]
    assert tokens == list(logits.argmax(axis=1))
    assert [s.token_id for s in sample_batch(logits.copy(), [state(SamplingParams(top_k=1))] * 3)] == tokens


def test_same_seed_same_tokens_and_different_seeds_differ():
    logits = np.zeros((1, 5000), dtype=np.float32)  # uniform: every draw is pure chance

    def run(seed):
        sampler = state(SamplingParams(temperature=1.0, seed=seed))
        return [sample_batch(logits.copy(), [sampler])[0].token_id for _ in range(20)]

    assert run(7) == run(7)
    assert run(7) != run(8)


def test_unseeded_requests_report_the_seed_they_drew_and_it_replays():
    logits = np.zeros((1, 5000), dtype=np.float32)
    first = state(SamplingParams(temperature=1.0))
    tokens = [sample_batch(logits.copy(), [first])[0].token_id for _ in range(10)]
    replay = state(SamplingParams(temperature=1.0, seed=first.seed_used))
    assert [sample_batch(logits.copy(), [replay])[0].token_id for _ in range(10)] == tokens


def test_a_rows_tokens_do_not_depend_on_its_batch():
    rng = np.random.default_rng(1)
    logits = rng.normal(size=(4, 3000)).astype(np.float32)
    params = [
        SamplingParams(temperature=0.8, top_p=0.9, seed=1),
        SamplingParams(temperature=0),
        SamplingParams(temperature=1.2, top_k=40, min_p=0.02, seed=3, presence_penalty=1.0),
        SamplingParams(temperature=1.0, typical_p=0.8, seed=4, repeat_penalty=1.3),
    ]
    alone = [sample_batch(logits[i : i + 1].copy(), [state(p, prompt=[5, 6, 7])])[0].token_id for i, p in enumerate(params)]
    together = [s.token_id for s in sample_batch(logits.copy(), [state(p, prompt=[5, 6, 7]) for p in params])]
    assert alone == together


def test_temperature_sharpens_and_flattens():
    logits = probs_logits([0.6, 0.3, 0.1])
    cold = draws(logits, SamplingParams(temperature=0.1, seed=1))
    hot = draws(logits, SamplingParams(temperature=5.0, seed=1))
    assert cold[0] > 390
    assert hot[2] > 80  # near uniform: about a third


def test_top_k_keeps_exactly_the_k_most_likely():
    logits = probs_logits([0.05, 0.4, 0.05, 0.3, 0.2])
    assert set(draws(logits, SamplingParams(top_k=2, seed=2))) == {1, 3}


@pytest.mark.parametrize("vocab", [5, 4000])  # small: full sort; large: the preselected nucleus
def test_top_p_keeps_the_smallest_set_reaching_p(vocab):
    probs = np.full(vocab, 1e-6)
    probs[:4] = [0.5, 0.3, 0.15, 0.05]
    logits = np.log(probs / probs.sum()).astype(np.float32)
    assert set(draws(logits, SamplingParams(top_p=0.7, seed=3))) == {0, 1}
    assert set(draws(logits, SamplingParams(top_p=0.85, seed=3), n=2000)) == {0, 1, 2}


def test_top_p_falls_back_to_a_full_sort_when_the_head_is_flat():
    logits = np.zeros(4000, dtype=np.float32)  # 512 tokens hold 12.8% of the mass
    seen = draws(logits, SamplingParams(top_p=0.5, seed=4), n=3000)
    assert len(seen) > 512  # the nucleus is 2000 tokens wide


def test_min_p_drops_tokens_below_a_fraction_of_the_best():
    logits = probs_logits([0.5, 0.3, 0.12, 0.08])
    assert set(draws(logits, SamplingParams(min_p=0.2, seed=5), n=2000)) == {0, 1, 2}


def test_typical_p_keeps_tokens_near_the_entropy():
    # One likely token among many equally unlikely ones: its surprise (1.2 nats) is far from
    # the entropy (3.6 nats), theirs close, so a small typical set leaves the favourite out,
    # where top_p would keep only it.
    probs = np.array([0.3] + [0.01] * 70)
    seen = draws(np.log(probs).astype(np.float32), SamplingParams(typical_p=0.3, seed=6))
    assert 0 not in seen and len(seen) > 5


def test_repeat_penalty_follows_llama_cpp_rule_over_the_window():
    logits = np.array([[2.0, -2.0, 1.0, 1.0]], dtype=np.float32)
    sampler = state(SamplingParams(temperature=0, repeat_penalty=2.0, repeat_last_n=2, logprobs=True), prompt=[3, 0, 1])
    sample = sample_batch(logits, [sampler])[0]
    # Window is the last two tokens (0 and 1): 2.0 -> 1.0, -2.0 -> -4.0; token 3 untouched.
    assert logits.tolist() == [[1.0, -4.0, 1.0, 1.0]]
    assert sample.token_id in (0, 2, 3)


def test_presence_and_frequency_penalties_count_generated_tokens_only():
    logits = np.zeros((1, 4), dtype=np.float32)
    sampler = state(SamplingParams(temperature=0, presence_penalty=0.5, frequency_penalty=0.25), prompt=[3, 3, 3])
    for token in (1, 1, 2):
        sampler.accept(token)
    sample_batch(logits, [sampler])
    assert logits.tolist() == [[0.0, -1.0, -0.75, 0.0]]


def test_logit_bias_bans_and_forces():
    logits = probs_logits([0.7, 0.2, 0.1])
    assert 0 not in draws(logits, SamplingParams(logit_bias={0: -100}, seed=7))
    assert set(draws(logits, SamplingParams(logit_bias={2: 100}, seed=7))) == {2}


def test_min_tokens_bans_eos_until_reached():
    logits = probs_logits([0.98, 0.01, 0.01])
    sampler = state(SamplingParams(temperature=0), eos=[0], min_tokens=2)
    picked = []
    for _ in range(3):
        token = sample_batch(logits[None].copy(), [sampler])[0].token_id
        sampler.accept(token)
        picked.append(token)
    assert picked[:2] != [0, 0] and 0 not in picked[:2] and picked[2] == 0


def test_logprobs_are_the_penalised_distribution_with_sorted_alternatives():
    rng = np.random.default_rng(2)
    logits = rng.normal(size=(1, 300)).astype(np.float32)
    expected = log_softmax(logits.astype(np.float64))[0]
    sample = sample_batch(logits.copy(), [state(SamplingParams(temperature=0, logprobs=True, top_logprobs=5))])[0]
    record = sample.logprob
    assert record.token_id == sample.token_id == int(np.argmax(expected))
    assert record.logprob == pytest.approx(expected.max(), abs=1e-5)
    assert [i for i, _ in record.top] == list(np.argsort(-expected)[:5])
    assert [lp for _, lp in record.top] == pytest.approx(sorted(expected, reverse=True)[:5], abs=1e-5)
    assert sample_batch(logits.copy(), [state(SamplingParams())])[0].logprob is None


@pytest.mark.parametrize(
    ("field", "value"),
    [("temperature", -1), ("top_p", 0), ("top_p", 1.5), ("min_p", 2), ("typical_p", 0), ("top_k", -1),
     ("repeat_penalty", 0), ("repeat_last_n", -2), ("presence_penalty", 3), ("frequency_penalty", -2.5),
     ("top_logprobs", 21), ("seed", -1)],
)  # fmt: skip
def test_out_of_range_parameters_are_named(field, value):
    with pytest.raises(RequestError) as error:
        SamplingParams(**{field: value}).validate(vocab_size=100)
    assert error.value.param == field and field in error.value.message


def test_logit_bias_outside_the_vocabulary_is_refused():
    with pytest.raises(RequestError, match="outside the vocabulary"):
        SamplingParams(logit_bias={100: 1.0}).validate(vocab_size=100)
    with pytest.raises(RequestError, match="between -100 and 100"):
        SamplingParams(logit_bias={1: 101.0}).validate(vocab_size=100)
