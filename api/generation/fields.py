"""Request fields both dialects share: the sampling controls, the generation extras, and the runtime request.

OpenAI and Ollama name most controls alike (Ollama nests them in `options`); the defaults
differ and are passed in by each dialect. The extras are llama.cpp's, vLLM's and
Fireworks' names that OpenAI-style clients send at the top level.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import replace
from typing import Annotated, ClassVar, Literal

from msgspec import Meta

from api.errors import BadRequest
from api.generation.grammars import text_grammar
from api.wire import (
    Body,
    LogitBias,
    MinP,
    Penalty,
    Refused,
    RepeatLastN,
    RepeatPenalty,
    Temperature,
    TokenIds,
    TopK,
    TopP,
    TypicalP,
    bounded,
    logit_bias_map,
)
from runtime.grammar import Grammar
from runtime.request import CONTEXT_ERROR, GenerationRequest
from runtime.sampling import MAX_TOP_LOGPROBS, SamplingParams

# Stand-in for a log-probability of minus infinity, which JSON cannot carry (OpenAI does the same).
LOGPROB_FLOOR = -9999.0

ContextPolicy = Literal["error", "truncate"]


def finite_logprob(value: float) -> float:
    return value if math.isfinite(value) else LOGPROB_FLOOR


# A token string's ids in the model's vocabulary (no BOS added), for logit_bias_type "tokens".
Tokenize = Callable[[str], list[int]]

MirostatMode = Annotated[int, bounded("mirostat")]
MirostatTau = Annotated[float, bounded("mirostat_tau")]
MirostatEta = Annotated[float, bounded("mirostat_eta")]
_FIREWORKS_MIROSTAT = (
    "Fireworks' mirostat_target (a perplexity) and mirostat_lr are not mapped onto llama.cpp's mirostat; "
    "send mirostat_mode (1 or 2) with mirostat_tau (target surprise in bits) and mirostat_eta"
)


class SamplingFields(Body, kw_only=True):
    """The sampling controls (OpenAI's at the top level, Ollama's in `options`)."""

    temperature: Temperature | None = None
    top_k: TopK | None = None
    top_p: TopP | None = None
    min_p: MinP | None = None
    typical_p: TypicalP | None = None
    repeat_penalty: RepeatPenalty | None = None
    repeat_last_n: RepeatLastN | None = None
    presence_penalty: Penalty | None = None
    frequency_penalty: Penalty | None = None
    logit_bias: LogitBias | None = None
    seed: Annotated[int, Meta(description="Any integer; negative ones wrap around (Ollama's -1 draws one).")] | None = None
    # Mirostat, llama.cpp's names: `mirostat` (its server's and Ollama's) or `mirostat_mode`
    # (llama-cpp-python's) is the version, 0 (off), 1 or 2.
    mirostat: MirostatMode | None = None
    mirostat_mode: MirostatMode | None = None
    mirostat_tau: MirostatTau | None = None
    mirostat_eta: MirostatEta | None = None
    # Declared so that asking for it is a clear 400, not silence (a llama.cpp sampler we lack).
    tfs_z: float | None = None

    refused: ClassVar[dict[str, Refused]] = {
        "tfs_z": Refused("tail-free sampling is not implemented (1 disables it)", harmless=(1, 1.0)),
    }

    def sampling(
        self,
        defaults: SamplingParams,
        logprobs: bool = False,
        top_logprobs: int = 0,
        logit_bias_type: str | None = None,
        tokenize: Tokenize | None = None,
    ) -> SamplingParams:
        """These controls over one dialect's `defaults`; `tokenize` reads logit_bias keys that are
        token strings (`logit_bias_type` "tokens")."""
        seed = self.seed if self.seed is not None else defaults.seed
        top_k = self.top_k if self.top_k is not None else defaults.top_k
        if self.mirostat is not None and self.mirostat_mode is not None and self.mirostat != self.mirostat_mode:
            raise BadRequest("'mirostat' and 'mirostat_mode' name the same setting; give one, or the same value", param="mirostat_mode")
        mirostat = self.mirostat if self.mirostat is not None else self.mirostat_mode
        bias = self.logit_bias
        return SamplingParams(
            temperature=_given(self.temperature, defaults.temperature),
            top_k=0 if top_k == -1 else top_k,
            top_p=_given(self.top_p, defaults.top_p),
            min_p=_given(self.min_p, defaults.min_p),
            typical_p=_given(self.typical_p, defaults.typical_p),
            repeat_penalty=_given(self.repeat_penalty, defaults.repeat_penalty),
            repeat_last_n=self.repeat_last_n if self.repeat_last_n is not None else defaults.repeat_last_n,
            presence_penalty=_given(self.presence_penalty, defaults.presence_penalty),
            frequency_penalty=_given(self.frequency_penalty, defaults.frequency_penalty),
            logit_bias=_bias(bias, logit_bias_type, tokenize) if bias is not None else dict(defaults.logit_bias),
            # Any 64-bit seed is accepted; negative ones (Ollama's -1 means "random") wrap around.
            seed=None if seed is None or seed == -1 else seed % 2**64,
            logprobs=logprobs,
            top_logprobs=min(top_logprobs, MAX_TOP_LOGPROBS),
            mirostat=mirostat if mirostat is not None else defaults.mirostat,
            mirostat_tau=_given(self.mirostat_tau, defaults.mirostat_tau),
            mirostat_eta=_given(self.mirostat_eta, defaults.mirostat_eta),
        )


def _bias(value: dict[str, float], logit_bias_type: str | None, tokenize: Tokenize | None) -> dict[int, float]:
    """logit_bias keyed by token id, or (logit_bias_type "tokens") by token strings.

    A token string is tokenized in the model's vocabulary without BOS, and its bias applies to
    every token it becomes, as llama.cpp's server and llama-cpp-python do ("Paris" may be one
    token or two); a token named by several strings gets the bias of the last one.
    """
    if logit_bias_type != "tokens":
        return logit_bias_map(value)
    if tokenize is None:
        raise BadRequest("logit_bias_type 'tokens' needs a text model's vocabulary", param="logit_bias_type")
    result: dict[int, float] = {}
    for text, bias in value.items():
        ids = tokenize(text) if text else []
        if not ids:
            raise BadRequest(f"'logit_bias' key {text!r} is no token of this model's vocabulary", param="logit_bias")
        result.update((int(token), float(bias)) for token in ids)
    return result


def _given(value: float | None, default: float) -> float:
    return float(value) if value is not None else default


class GenerationExtras(SamplingFields, kw_only=True):
    """Top-level fields of llama.cpp-, vLLM- and Fireworks-style servers, beside the sampling controls."""

    min_tokens: Annotated[int, Meta(ge=0, description="End-of-sequence and stop strings are ignored until this many tokens exist.")] | None = None
    stop_token_ids: TokenIds | None = None
    ignore_eos: bool | None = None
    skip_special_tokens: bool | None = None
    context_length_exceeded_behavior: ContextPolicy | None = None
    prompt_truncate_len: Annotated[int, Meta(ge=1)] | None = None
    # vLLM's and Fireworks' name of the repetition penalty, over the whole sequence.
    repetition_penalty: RepeatPenalty | None = None
    grammar: Annotated[str, Meta(description="A GBNF grammar (llama.cpp's dialect) the output must match.")] | None = None
    logit_bias_type: Annotated[
        Literal["input_ids", "tokens"],
        Meta(description="llama.cpp's: whether logit_bias keys are token ids (input_ids, the default) or token strings (tokens)."),
    ] | None = None
    mirostat_target: float | None = None
    mirostat_lr: float | None = None

    refused: ClassVar[dict[str, Refused]] = {
        **SamplingFields.refused,
        "mirostat_target": Refused(_FIREWORKS_MIROSTAT),
        "mirostat_lr": Refused(_FIREWORKS_MIROSTAT),
    }

    def sampling(
        self,
        defaults: SamplingParams,
        logprobs: bool = False,
        top_logprobs: int = 0,
        logit_bias_type: str | None = None,
        tokenize: Tokenize | None = None,
    ) -> SamplingParams:
        params = super().sampling(defaults, logprobs, top_logprobs, logit_bias_type or self.logit_bias_type, tokenize)
        if self.repetition_penalty is None:
            return params
        if self.repeat_penalty is not None:
            raise BadRequest("give 'repeat_penalty' or 'repetition_penalty', not both", param="repetition_penalty")
        window = self.repeat_last_n if self.repeat_last_n is not None else -1
        return replace(params, repeat_penalty=float(self.repetition_penalty), repeat_last_n=window)

    def request(
        self,
        prompt_ids: tuple[int, ...],
        sampling: SamplingParams,
        max_tokens: int | None,
        stop: tuple[str, ...],
        context_length: int | None = None,
        context_policy: str | None = None,
        grammar: Grammar | None = None,
    ) -> GenerationRequest:
        """The runtime request for one prompt; `grammar` what the output must match (see `constraint`)."""
        return GenerationRequest(
            prompt_ids=prompt_ids,
            sampling=sampling,
            max_tokens=max_tokens,
            min_tokens=self.min_tokens or 0,
            stop=stop,
            stop_token_ids=tuple(self.stop_token_ids or ()),
            ignore_eos=bool(self.ignore_eos),
            context_policy=context_policy or self.context_length_exceeded_behavior or CONTEXT_ERROR,
            prompt_truncate_len=self.prompt_truncate_len,
            context_length=context_length,
            skip_special_tokens=self.skip_special_tokens is not False,
            grammar=grammar,
        )

    def constraint(self, other: Grammar | None = None, other_param: str = "") -> Grammar | None:
        """The grammar the output must match: `grammar` (GBNF) or the dialect's own (`other`), not both."""
        if self.grammar is None:
            return other
        if other is not None:
            raise BadRequest(f"give 'grammar' or '{other_param}', not both", param="grammar")
        return text_grammar("gbnf", self.grammar, "grammar")


def with_choice_seed(request: GenerationRequest, choice: int) -> GenerationRequest:
    """Choice i of n uses seed + i: the choices differ, and the same request gives the same choices."""
    seed = request.sampling.seed
    if seed is None or choice == 0:
        return request
    return replace(request, sampling=replace(request.sampling, seed=(seed + choice) % 2**64))


def check_limit(param: str, count: int, limit: int, what: str = "entries") -> None:
    """A server limit (messages, inputs, n, max_tokens): a 400 naming the field beyond it."""
    if count > limit:
        raise BadRequest(f"'{param}' has {count} {what}; at most {limit} are accepted", param=param)
