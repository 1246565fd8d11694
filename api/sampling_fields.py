"""Request fields shared by both dialects: sampling controls and the generation request around them.

OpenAI and Ollama name most controls alike (Ollama nests them in `options`); the defaults
differ and are passed in by each dialect.
"""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Any

from api.body import Fields
from api.errors import NotSupported
from runtime.generation import CONTEXT_ERROR, GenerationRequest
from runtime.sampling import MAX_TOP_LOGPROBS, SamplingParams

# Most stop strings per request (OpenAI allows 4; llama.cpp-style servers accept more).
MAX_STOP_STRINGS = 32
# Stand-in for a log-probability of minus infinity, which JSON cannot carry (OpenAI does the same).
LOGPROB_FLOOR = -9999.0


def finite_logprob(value: float) -> float:
    return value if math.isfinite(value) else LOGPROB_FLOOR


def sampling_params(f: Fields, defaults: SamplingParams, logprobs: bool = False, top_logprobs: int = 0) -> SamplingParams:
    """Sampling controls read from `f` (a body or Ollama's `options`), falling back to `defaults`."""
    top_k = f.integer("top_k", defaults.top_k, minimum=-1)
    seed = f.integer("seed", defaults.seed)
    return SamplingParams(
        temperature=f.number("temperature", defaults.temperature, 0),
        top_k=0 if top_k == -1 else top_k,  # vLLM spells "off" as -1
        top_p=f.number("top_p", defaults.top_p),
        min_p=f.number("min_p", defaults.min_p),
        typical_p=f.number("typical_p", defaults.typical_p),
        repeat_penalty=f.number("repeat_penalty", defaults.repeat_penalty),
        repeat_last_n=f.integer("repeat_last_n", defaults.repeat_last_n),
        presence_penalty=f.number("presence_penalty", defaults.presence_penalty),
        frequency_penalty=f.number("frequency_penalty", defaults.frequency_penalty),
        logit_bias=f.logit_bias("logit_bias") if f.has("logit_bias") else dict(defaults.logit_bias),
        # Any 64-bit seed is accepted; negative ones (Ollama's -1 means "random") wrap around.
        seed=None if seed is None or seed == -1 else seed % 2**64,
        logprobs=logprobs,
        top_logprobs=min(top_logprobs, MAX_TOP_LOGPROBS),
    )


def generation_request(
    f: Fields,
    prompt_ids: tuple[int, ...],
    sampling: SamplingParams,
    max_tokens: int | None,
    stop: tuple[str, ...],
    context_length: int | None = None,
) -> GenerationRequest:
    """The runtime request; the extra fields (vLLM's and ours) are read from the top level of `f`."""
    return GenerationRequest(
        prompt_ids=prompt_ids,
        sampling=sampling,
        max_tokens=max_tokens,
        min_tokens=f.integer("min_tokens", 0, minimum=0),
        stop=stop,
        stop_token_ids=f.token_ids("stop_token_ids"),
        ignore_eos=f.boolean("ignore_eos", False),
        context_policy=f.string("context_length_exceeded_behavior", CONTEXT_ERROR),
        prompt_truncate_len=f.integer("prompt_truncate_len", None, minimum=1),
        context_length=context_length,
        skip_special_tokens=f.boolean("skip_special_tokens", True),
    )


def with_choice_seed(request: GenerationRequest, choice: int) -> GenerationRequest:
    """Choice i of n uses seed + i: the choices differ, and the same request gives the same choices."""
    seed = request.sampling.seed
    if seed is None or choice == 0:
        return request
    return replace(request, sampling=replace(request.sampling, seed=(seed + choice) % 2**64))


def reject_present(f: Fields, key: str, what: str, unless: Any = None) -> None:
    """A known field we cannot honour yet: a clear 400 rather than silently ignoring it."""
    value = f.data.get(key)
    if value in (None, "", [], {}) or value == unless:
        return
    raise NotSupported(f"'{f.name(key)}' is not supported yet: {what}", param=f.name(key))
