"""Mirostat 1 and 2 (llama.cpp's algorithms) in the batched sampler: the effect, the mu update, seeds."""

from __future__ import annotations

import numpy as np
import pytest

from runtime.errors import RequestError
from runtime.sampling import SamplingParams, SequenceSampler, log_softmax, sample_batch

VOCAB = 1000
# A Zipf-like distribution (p_i ∝ 1/i^1.1) whose entropy is far above the targets below.
LOGITS = (-1.1 * np.log(np.arange(1, VOCAB + 1))).astype(np.float32)
LOG2 = log_softmax(LOGITS[None].astype(np.float64))[0] / np.log(2)  # log2 p of each token


def _entropy_bits() -> float:
    p = np.exp2(LOG2)
    return float(-(p * LOG2).sum())


def _run(params: SamplingParams, steps: int) -> tuple[list[int], list[float]]:
    """Tokens drawn from the fixed LOGITS, and mu after each step."""
    state = SequenceSampler(params, [1, 2, 3])
    tokens, mus = [], []
    for _ in range(steps):
        token = sample_batch(LOGITS[None].copy(), [state])[0].token_id
        state.accept(token)
        tokens.append(token)
        mus.append(state.mu)
    return tokens, mus


def _v2_surprise(token: int, mu: float) -> float:
    """The chosen token's surprise over the tokens mirostat 2 keeps at `mu` (computed independently here)."""
    kept = LOG2 >= -mu
    if not kept.any():
        kept[np.argmax(LOG2)] = True
    total = np.exp2(LOG2[kept]).sum()
    return float(-(LOG2[token] - np.log2(total)))


def test_mirostat_2_steers_the_surprise_to_tau_and_updates_mu_by_the_formula() -> None:
    tau, eta = 3.0, 0.1
    tokens, mus = _run(SamplingParams(mirostat=2, mirostat_tau=tau, mirostat_eta=eta, seed=7), 3000)
    before = [2 * tau, *mus[:-1]]  # mu starts at 2 tau
    surprises = [_v2_surprise(t, mu) for t, mu in zip(tokens, before)]
    for mu_before, mu_after, surprise in zip(before, mus, surprises):
        assert mu_after == pytest.approx(mu_before - eta * (surprise - tau), abs=1e-4)
    assert np.mean(surprises[500:]) == pytest.approx(tau, abs=0.25)
    # Plain sampling of the same distribution is far more surprising (its entropy, about 7 bits).
    plain, _ = _run(SamplingParams(seed=7), 3000)
    plain_surprise = float(np.mean([-LOG2[t] for t in plain]))
    assert plain_surprise == pytest.approx(_entropy_bits(), abs=0.3) and plain_surprise > tau + 2
    assert np.mean([-LOG2[t] for t in tokens[500:]]) < plain_surprise - 2


def test_mirostat_1_steers_the_surprise_towards_tau() -> None:
    def mean_surprise(tau: float) -> float:
        tokens, mus = _run(SamplingParams(mirostat=1, mirostat_tau=tau, mirostat_eta=0.1, seed=3), 3000)
        assert all(np.isfinite(mus)) and max(mus[500:]) < 4 * tau  # mu settles
        # Surprise over the whole distribution: a little above tau, as the kept top-k is renormalised.
        return float(np.mean([-LOG2[t] for t in tokens[500:]]))

    low, high = mean_surprise(3.0), mean_surprise(5.0)
    assert 3.0 < low < 4.0 and 5.0 < high < 6.0
    assert high < _entropy_bits() - 1  # plain sampling: about 7 bits
    v1, _ = _run(SamplingParams(mirostat=1, mirostat_tau=4.0, seed=3), 300)
    v2, _ = _run(SamplingParams(mirostat=2, mirostat_tau=4.0, seed=3), 300)
    assert v1 != v2


def test_mu_starts_at_twice_tau_and_eta_zero_keeps_it() -> None:
    state = SequenceSampler(SamplingParams(mirostat=2, mirostat_tau=2.5, mirostat_eta=0.0, seed=1), [1])
    assert state.mu == 5.0
    for _ in range(20):
        sample_batch(LOGITS[None].copy(), [state])
    assert state.mu == 5.0


def test_seeded_mirostat_is_reproducible_and_per_sequence() -> None:
    params = SamplingParams(mirostat=2, mirostat_tau=3.0, seed=42)
    assert _run(params, 200) == _run(params, 200)
    assert _run(params, 200)[0] != _run(SamplingParams(mirostat=2, mirostat_tau=3.0, seed=43), 200)[0]
    # In a batch, each row keeps its own mu: a row beside others draws what it draws alone.
    alone, _ = _run(params, 50)
    states = [SequenceSampler(params, [1]), SequenceSampler(SamplingParams(mirostat=1, seed=5), [1]), SequenceSampler(SamplingParams(seed=9), [1])]
    together = []
    for _ in range(50):
        samples = sample_batch(np.repeat(LOGITS[None], 3, axis=0), states)
        for state, sample in zip(states, samples):
            state.accept(sample.token_id)
        together.append(samples[0].token_id)
    assert together == alone


def test_mirostat_with_temperature_zero_is_greedy_and_ignores_top_k() -> None:
    tokens, _ = _run(SamplingParams(mirostat=2, temperature=0, seed=1), 5)
    assert tokens == [0] * 5
    # top_k 1 is greedy, except under mirostat (llama.cpp's chain drops top_k then).
    assert SamplingParams(top_k=1).greedy and not SamplingParams(top_k=1, mirostat=2).greedy


def test_mirostat_ranges_are_checked() -> None:
    for bad in (SamplingParams(mirostat=3), SamplingParams(mirostat=2, mirostat_tau=-1), SamplingParams(mirostat=1, mirostat_eta=-0.1)):
        with pytest.raises(RequestError):
            bad.validate(VOCAB)
