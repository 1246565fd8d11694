"""Choosing the next token: penalties, logit bias, temperature, truncation, seeded draws.

`sample_batch(logits, states)` turns one decode step's logits [batch, vocab] into one token
per row. Every row carries its own `SamplingParams` and its own state (token history,
seeded random generator), so a request's output does not depend on what else shares its
batch. The order of operations, per row:

1. **Penalties and bias** (vectorised over the batch with flat index arrays):
   `repeat_penalty` over the last `repeat_last_n` tokens of the whole sequence, prompt
   included (llama.cpp's rule: positive logits are divided by it, negative ones multiplied);
   `presence_penalty` and `frequency_penalty` over the generated tokens (OpenAI's rule:
   logit -= presence * [count > 0] + frequency * count); `logit_bias` added; end-of-sequence
   ids banned while fewer than `min_tokens` have been generated.
2. **Log-probabilities**, when asked, of that penalised distribution (before temperature and
   truncation): the chosen token's and the `top_logprobs` most likely alternatives.
3. **Greedy** rows (temperature 0 or top_k 1) take the arg-max.
4. **Sampled** rows: divide by the temperature, then keep the `top_k` most likely tokens,
   then the locally typical set (`typical_p`), then the nucleus (`top_p`), then drop tokens
   below `min_p` times the most likely one, each step renormalising over the survivors
   (llama.cpp's truncation order, with the temperature applied first as transformers and
   vLLM do). One uniform draw from the row's own generator picks the token.
5. **Mirostat** rows (`mirostat` 1 or 2, llama.cpp's samplers) replace step 4's truncation:
   after the temperature, mirostat 2 keeps the tokens whose surprise (-log2 p) is at most
   the row's running `mu`, mirostat 1 estimates the Zipf exponent from the 100 most likely
   tokens and keeps the k that its target surprise implies; one draw picks among them, and
   `mu` moves by `eta` times the error between the chosen token's surprise (over the kept
   set) and the target `tau`. `mu` starts at 2 tau and lives in the row's state, so it carries
   over from step to step of that sequence only. top_k, top_p, typical_p and min_p do not
   apply to mirostat rows (llama.cpp's sampler chain drops them too).

A full sort of the vocabulary costs milliseconds, a large share of a decode step, so the
nucleus is searched among the 512 most likely tokens first and the whole vocabulary is
sorted only when those do not reach `top_p`.
"""

from __future__ import annotations

import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from runtime.errors import RequestError

MAX_TOP_LOGPROBS = 20
_NUCLEUS_PRESELECT = 512


@dataclass(frozen=True)
class Range:
    """The values a sampling control accepts: the runtime checks them, the HTTP models declare them."""

    minimum: float | None = None
    maximum: float | None = None
    exclusive_minimum: bool = False
    rule: str = ""
    description: str | None = None

    def contains(self, value: float) -> bool:
        if self.minimum is not None and (value <= self.minimum if self.exclusive_minimum else value < self.minimum):
            return False
        return self.maximum is None or value <= self.maximum


# The one table of sampling ranges (the API's request models are built from it too).
SAMPLING_RANGES = {
    "temperature": Range(0, 100, rule="must be between 0 and 100", description="0 is greedy decoding."),
    "top_k": Range(0, rule="must be 0 (off) or positive", description="Keep the k most likely tokens; 0 disables."),
    "top_p": Range(0, 1, True, "must be greater than 0 and at most 1", "Nucleus sampling mass; 1 disables."),
    "min_p": Range(0, 1, rule="must be between 0 and 1", description="Drop tokens less likely than min_p times the most likely one."),
    "typical_p": Range(0, 1, True, "must be greater than 0 and at most 1", "Locally typical sampling mass; 1 disables."),
    "repeat_penalty": Range(0, None, True, "must be positive (1 disables it)", "llama.cpp's repetition penalty; 1 disables."),
    "repeat_last_n": Range(-1, rule="must be -1 (whole sequence), 0 (off) or positive", description="Tokens the repetition penalty looks back over; -1 the whole sequence, 0 none."),
    "presence_penalty": Range(-2, 2, rule="must be between -2 and 2"),
    "frequency_penalty": Range(-2, 2, rule="must be between -2 and 2"),
    "top_logprobs": Range(0, MAX_TOP_LOGPROBS, rule=f"must be between 0 and {MAX_TOP_LOGPROBS}"),
    "mirostat": Range(0, 2, rule="must be 0 (off), 1 or 2", description="Mirostat sampling (llama.cpp's): 0 off, 1 version 1, 2 version 2."),
    "mirostat_tau": Range(0, rule="must be 0 or more", description="Mirostat's target surprise in bits (entropy per token)."),
    "mirostat_eta": Range(0, rule="must be 0 or more", description="Mirostat's learning rate: how fast mu follows the target."),
}

# Mirostat 1 estimates the Zipf exponent from this many most likely tokens (llama.cpp's m).
MIROSTAT_M = 100


@dataclass(frozen=True)
class SamplingParams:
    """How one request chooses its tokens. Defaults are OpenAI's where OpenAI has the field."""

    # 0 means greedy; otherwise logits are divided by it before truncation.
    temperature: float = 1.0
    # Keep only the k most likely tokens; 0 disables.
    top_k: int = 0
    # Keep the smallest set of most likely tokens whose probability reaches top_p; 1 disables.
    top_p: float = 1.0
    # Drop tokens less likely than min_p times the most likely one; 0 disables.
    min_p: float = 0.0
    # Locally typical sampling mass; 1 disables.
    typical_p: float = 1.0
    # llama.cpp's repetition penalty over the last repeat_last_n tokens (-1: the whole
    # sequence, 0: none); 1 disables.
    repeat_penalty: float = 1.0
    repeat_last_n: int = 64
    # OpenAI's penalties over the generated tokens, each in [-2, 2].
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    # Token id -> value added to its logit, each in [-100, 100].
    logit_bias: Mapping[int, float] = field(default_factory=dict)
    # Seed of this request's random generator; None draws one (reported back in `seed_used`).
    seed: int | None = None
    # Return the chosen token's log-probability, and this many alternatives (0..20).
    logprobs: bool = False
    top_logprobs: int = 0
    # Mirostat (llama.cpp's samplers): 0 off, 1 or 2 the version; its target surprise in bits
    # (tau) and learning rate (eta). It replaces top_k, top_p, typical_p and min_p.
    mirostat: int = 0
    mirostat_tau: float = 5.0
    mirostat_eta: float = 0.1

    @property
    def greedy(self) -> bool:
        # Mirostat ignores top_k, as llama.cpp's sampler chain does.
        return self.temperature == 0 or (self.top_k == 1 and not self.mirostat)

    def validate(self, vocab_size: int) -> None:
        """Raise RequestError naming the first parameter out of range (`SAMPLING_RANGES`)."""
        for name, allowed in SAMPLING_RANGES.items():
            value = getattr(self, name)
            if not allowed.contains(value):
                raise RequestError(f"{name} {allowed.rule} (got {value!r})", param=name)
        if self.mirostat not in (0, 1, 2):
            raise RequestError(f"mirostat {SAMPLING_RANGES['mirostat'].rule} (got {self.mirostat!r})", param="mirostat")
        if self.seed is not None and not 0 <= self.seed < 2**64:
            raise RequestError(f"seed must be between 0 and 2**64 - 1 (got {self.seed})", param="seed")
        for token, bias in self.logit_bias.items():
            if not 0 <= int(token) < vocab_size:
                raise RequestError(f"logit_bias names token {token}, outside the vocabulary of {vocab_size}", param="logit_bias")
            if not -100 <= float(bias) <= 100:
                raise RequestError(f"logit_bias for token {token} must be between -100 and 100 (got {bias})", param="logit_bias")


@dataclass(frozen=True)
class TokenLogprob:
    """The chosen token's log-probability and the most likely alternatives, best first."""

    token_id: int
    logprob: float
    top: tuple[tuple[int, float], ...] = ()


@dataclass(frozen=True)
class Sample:
    token_id: int
    logprob: TokenLogprob | None


class SequenceSampler:
    """One request's sampling state: its parameters, token history and random generator."""

    def __init__(
        self,
        params: SamplingParams,
        prompt_ids: Sequence[int],
        eos_ids: Sequence[int] = (),
        min_tokens: int = 0,
    ) -> None:
        self.params = params
        self.seed_used = params.seed if params.seed is not None else secrets.randbits(63)
        self.rng = np.random.Generator(np.random.PCG64(self.seed_used))
        self.eos_ids = np.asarray(sorted(set(eos_ids)), dtype=np.int64)
        self.min_tokens = min_tokens
        self._history = np.empty(max(64, 2 * len(prompt_ids)), dtype=np.int64)
        self._length = 0
        self.generated = 0
        self._counts: dict[int, int] = {}
        self._bias_ids = np.fromiter((int(t) for t in params.logit_bias), dtype=np.int64, count=len(params.logit_bias))
        self._bias_values = np.fromiter((float(v) for v in params.logit_bias.values()), dtype=np.float32, count=len(params.logit_bias))
        # Mirostat's running maximum surprise, in bits; it starts at twice the target.
        self.mu = 2.0 * params.mirostat_tau
        self._extend(prompt_ids)

    def _extend(self, tokens: Sequence[int]) -> None:
        needed = self._length + len(tokens)
        if needed > len(self._history):
            grown = np.empty(max(needed, 2 * len(self._history)), dtype=np.int64)
            grown[: self._length] = self._history[: self._length]
            self._history = grown
        self._history[self._length : needed] = tokens
        self._length = needed

    def accept(self, token: int) -> None:
        """Record a generated token (it now counts for the penalties)."""
        self._extend([token])
        self.generated += 1
        self._counts[token] = self._counts.get(token, 0) + 1

    def _repeat_window(self) -> np.ndarray:
        n = self.params.repeat_last_n
        if n == 0 or self.params.repeat_penalty == 1:
            return np.empty(0, dtype=np.int64)
        start = 0 if n < 0 else max(0, self._length - n)
        return np.unique(self._history[start : self._length])


def _apply_adjustments(logits: np.ndarray, states: Sequence[SequenceSampler]) -> None:
    """Penalties, bias and the min_tokens EOS ban, in place, for the whole batch at once."""
    rep_rows, rep_cols, rep_vals = [], [], []
    add_rows, add_cols, add_vals = [], [], []
    ban_rows, ban_cols = [], []
    for row, state in enumerate(states):
        p = state.params
        window = state._repeat_window()
        if window.size:
            rep_rows.append(np.full(window.size, row))
            rep_cols.append(window)
            rep_vals.append(np.full(window.size, p.repeat_penalty, dtype=np.float32))
        if state._counts and (p.presence_penalty or p.frequency_penalty):
            ids = np.fromiter(state._counts, dtype=np.int64, count=len(state._counts))
            counts = np.fromiter(state._counts.values(), dtype=np.float32, count=len(state._counts))
            add_rows.append(np.full(ids.size, row))
            add_cols.append(ids)
            add_vals.append(-(p.presence_penalty + p.frequency_penalty * counts))
        if state._bias_ids.size:
            add_rows.append(np.full(state._bias_ids.size, row))
            add_cols.append(state._bias_ids)
            add_vals.append(state._bias_values)
        if state.generated < state.min_tokens and state.eos_ids.size:
            ban_rows.append(np.full(state.eos_ids.size, row))
            ban_cols.append(state.eos_ids)
    if rep_rows:
        rows, cols, penalty = np.concatenate(rep_rows), np.concatenate(rep_cols), np.concatenate(rep_vals)
        values = logits[rows, cols]
        logits[rows, cols] = np.where(values > 0, values / penalty, values * penalty)
    if add_rows:
        # np.add.at sums repeated (row, col) pairs, e.g. a penalised token that is also biased.
        np.add.at(logits, (np.concatenate(add_rows), np.concatenate(add_cols)), np.concatenate(add_vals))
    if ban_rows:
        logits[np.concatenate(ban_rows), np.concatenate(ban_cols)] = -np.inf


def log_softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise log-softmax in float32."""
    shifted = logits - logits.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


def _renormalised(probs: np.ndarray) -> np.ndarray:
    return probs / probs.sum()


def _truncate(order: np.ndarray, probs: np.ndarray, p: SamplingParams) -> tuple[np.ndarray, np.ndarray]:
    """Apply typical_p, top_p and min_p to candidates sorted by descending probability."""
    if p.typical_p < 1 and len(order) > 1:
        logs = np.log(np.clip(probs, 1e-30, None))
        entropy = -(probs * logs).sum()
        by_typicality = np.argsort(np.abs(-logs - entropy), kind="stable")
        keep = int(np.searchsorted(np.cumsum(probs[by_typicality]), p.typical_p)) + 1
        kept = np.sort(by_typicality[:keep])  # back to descending-probability order
        order, probs = order[kept], _renormalised(probs[kept])
    if p.top_p < 1 and len(order) > 1:
        keep = int(np.searchsorted(np.cumsum(probs), p.top_p)) + 1
        order, probs = order[:keep], _renormalised(probs[:keep])
    if p.min_p > 0 and len(order) > 1:
        kept = probs >= p.min_p * probs[0]
        order, probs = order[kept], _renormalised(probs[kept])
    return order, probs


def _candidates(scaled: np.ndarray, p: SamplingParams) -> tuple[np.ndarray, np.ndarray]:
    """Token ids sorted by descending probability with their probabilities, after top_k."""
    vocab = scaled.shape[0]
    shifted = np.exp(scaled - scaled.max())
    total = shifted.sum()
    if 0 < p.top_k < vocab:
        top = np.argpartition(-scaled, p.top_k - 1)[: p.top_k]
        order = top[np.argsort(-scaled[top], kind="stable")]
        return order, _renormalised(shifted[order])
    if p.typical_p == 1 and p.top_p < 1 and vocab > _NUCLEUS_PRESELECT:
        # The nucleus is a prefix of the sorted vocabulary: when the most likely few hundred
        # tokens already reach top_p, sorting those is enough. Their probabilities stay
        # normalised over the whole vocabulary, so the cut falls where a full sort puts it.
        pre = np.argpartition(-scaled, _NUCLEUS_PRESELECT - 1)[:_NUCLEUS_PRESELECT]
        if shifted[pre].sum() / total >= p.top_p:
            order = pre[np.argsort(-scaled[pre], kind="stable")]
            return order, shifted[order] / total
    if p.typical_p == 1 and p.top_p == 1:
        # Only min_p (or nothing) left: no ordering needed beyond the most likely token.
        order = np.arange(vocab)
        probs = shifted / total
        if p.min_p > 0:
            kept = probs >= p.min_p * probs.max()
            order, probs = order[kept], _renormalised(probs[kept])
        return order, probs
    order = np.argsort(-scaled, kind="stable")
    return order, shifted[order] / total


def _draw(scaled: np.ndarray, p: SamplingParams, rng: np.random.Generator) -> int:
    order, probs = _candidates(scaled, p)
    order, probs = _truncate(order, probs, p) if (p.top_k or p.top_p < 1 or p.typical_p < 1) else (order, probs)
    index = int(np.searchsorted(np.cumsum(probs), rng.random() * probs.sum(), side="right"))
    return int(order[min(index, len(order) - 1)])


def _mirostat_draw(scaled: np.ndarray, state: SequenceSampler) -> int:
    """One mirostat step over a row of temperature-scaled logits; updates `state.mu`.

    llama.cpp's algorithms (llama_sampler_mirostat / _v2), with surprises in bits:
    v2 keeps the tokens whose surprise is at most mu (at least the most likely one);
    v1 estimates the Zipf exponent s_hat from the MIROSTAT_M most likely tokens and keeps
    the k = (eps * 2^mu / (1 - V^-eps))^(1/s_hat) most likely, eps = s_hat - 1.
    Then: draw among the kept tokens (renormalised), mu -= eta * (surprise - tau).
    """
    p = state.params
    logprobs = scaled - scaled.max()
    logprobs = logprobs - np.log(np.exp(logprobs).sum())
    if p.mirostat == 2:
        # -log2(p) <= mu  <=>  ln p >= -mu ln 2; no sort needed to find them.
        kept = np.flatnonzero(logprobs >= -state.mu * np.log(2.0))
        if kept.size == 0:
            kept = np.array([int(np.argmax(logprobs))])
        order = kept[np.argsort(-logprobs[kept], kind="stable")]
    else:
        finite = int(np.isfinite(logprobs).sum())
        m = min(MIROSTAT_M, finite)
        top = np.argpartition(-logprobs, m - 1)[:m] if m < logprobs.size else np.arange(logprobs.size)
        top = top[np.argsort(-logprobs[top], kind="stable")][:m]
        i = np.arange(m - 1, dtype=np.float64)
        t = np.log((i + 2) / (i + 1))
        b = (logprobs[top[:-1]] - logprobs[top[1:]]).astype(np.float64)  # log(p_i / p_i+1), from log-probabilities
        s_hat = float((t * b).sum() / (t * t).sum()) if m > 1 else 1.0
        epsilon = s_hat - 1
        with np.errstate(all="ignore"):
            k = (epsilon * 2.0**state.mu / (1 - float(logprobs.size) ** -epsilon)) ** (1 / s_hat) if s_hat > 0 else np.inf
        k = int(min(max(k, 1), finite)) if np.isfinite(k) else finite
        order = np.argpartition(-logprobs, k - 1)[:k] if k < logprobs.size else np.arange(logprobs.size)
        order = order[np.argsort(-logprobs[order], kind="stable")]
    probs = np.exp(logprobs[order].astype(np.float64) - logprobs[order].max())
    probs /= probs.sum()
    index = min(int(np.searchsorted(np.cumsum(probs), state.rng.random(), side="right")), len(order) - 1)
    surprise = -float(np.log2(probs[index]))
    state.mu -= p.mirostat_eta * (surprise - p.mirostat_tau)
    return int(order[index])


def prompt_logprobs(logits: np.ndarray, targets: Sequence[int], top: int) -> list[TokenLogprob]:
    """Each row's log-probability of its target token (the prompt token that followed), and the
    `top` most likely tokens there: the model's own distribution, without penalties or bias."""
    rows = log_softmax(logits[: len(targets)].astype(np.float32, copy=False))
    return [_logprob_record(row, int(token), top) for row, token in zip(rows, targets)]


def _logprob_record(row_logprobs: np.ndarray, token: int, top: int) -> TokenLogprob:
    alternatives: tuple[tuple[int, float], ...] = ()
    if top:
        best = np.argpartition(-row_logprobs, top - 1)[:top]
        best = best[np.argsort(-row_logprobs[best], kind="stable")]
        alternatives = tuple((int(i), float(row_logprobs[i])) for i in best)
    return TokenLogprob(token, float(row_logprobs[token]), alternatives)


def sample_batch(logits: np.ndarray, states: Sequence[SequenceSampler]) -> list[Sample]:
    """One token per row of `logits` [batch, vocab] (modified in place), per row's own state."""
    if logits.ndim != 2 or logits.shape[0] != len(states):
        raise ValueError("one row of logits per sampler state")
    _apply_adjustments(logits, states)
    wants_logprobs = [i for i, s in enumerate(states) if s.params.logprobs]
    logprobs = log_softmax(logits[wants_logprobs]) if wants_logprobs else None
    greedy = np.fromiter((s.params.greedy for s in states), dtype=bool, count=len(states))
    tokens = np.empty(len(states), dtype=np.int64)
    if greedy.any():
        tokens[greedy] = logits[greedy].argmax(axis=1)
    for drawn in np.flatnonzero(~greedy):
        row = int(drawn)
        state = states[row]
        scaled = logits[row] / np.float32(state.params.temperature)
        tokens[row] = _mirostat_draw(scaled, state) if state.params.mirostat else _draw(scaled, state.params, state.rng)
    samples = []
    for row, state in enumerate(states):
        record = None
        if logprobs is not None and state.params.logprobs:
            record = _logprob_record(logprobs[wants_logprobs.index(row)], int(tokens[row]), state.params.top_logprobs)
        samples.append(Sample(int(tokens[row]), record))
    return samples
