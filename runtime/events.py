"""What a generation yields: events the API layer renders without knowing the engine.

A generation is a stream of `Delta` events (new text, the token ids it came from, their
log-probabilities when asked) closed by exactly one `Finish` event (why it ended, the
counts and the timings). Text held back while it might begin a stop string arrives in a
later delta, or never if it was the stop string.

    for event in generator.generate(request):
        if isinstance(event, Delta): send(event.text)
        else: close(event.reason, event.usage)
"""

from __future__ import annotations

from dataclasses import dataclass

FINISH_STOP = "stop"  # an end-of-sequence token, a stop token id or a stop string
FINISH_LENGTH = "length"  # max_tokens reached, or the context is full


@dataclass(frozen=True)
class TokenChoice:
    """A token with its log-probability: id, text (U+FFFD for partial characters), raw bytes."""

    token_id: int
    token: str
    bytes: bytes
    logprob: float


@dataclass(frozen=True)
class TokenLogprobs:
    """The chosen token and the most likely alternatives at its position, best first."""

    chosen: TokenChoice
    top: tuple[TokenChoice, ...] = ()


@dataclass(frozen=True)
class PromptLogprobs:
    """The prompt's own tokens with their log-probabilities (a request's `prompt_logprobs`).

    The first prompt token has none: nothing precedes it (OpenAI and vLLM answer null).
    `rest[i]` is prompt token i + 1 with its log-probability given the tokens before it and
    the most likely tokens at its position: the model's own distribution, before any
    penalty, bias or temperature.
    """

    first_token_id: int
    first_token: str
    rest: tuple[TokenLogprobs, ...] = ()


@dataclass(frozen=True)
class Delta:
    """New text and the tokens generated since the previous event.

    A request that asked for prompt log-probabilities gets them in one Delta of their own,
    before any generated token (no text, no token ids).
    """

    text: str
    token_ids: tuple[int, ...]
    logprobs: tuple[TokenLogprobs, ...] = ()
    prompt_logprobs: PromptLogprobs | None = None


@dataclass(frozen=True)
class Usage:
    """Counts and timings of one generation; durations in nanoseconds (Ollama's unit)."""

    prompt_tokens: int
    completion_tokens: int
    # From the call until prompt evaluation starts: waiting for the engine, preparing.
    load_duration_ns: int
    # Evaluating the prompt (prefill), up to the first token's logits.
    prompt_eval_duration_ns: int
    # Generating the completion: every decode step and sampling after the prefill.
    eval_duration_ns: int
    total_duration_ns: int
    # Prompt tokens dropped to fit the context (context policy "truncate"); 0 otherwise.
    prompt_tokens_truncated: int = 0
    # Prompt tokens whose cached positions were reused from an earlier sequence (not evaluated).
    cached_tokens: int = 0

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


@dataclass(frozen=True)
class Finish:
    """The end of a generation."""

    reason: str  # FINISH_STOP or FINISH_LENGTH
    usage: Usage
    # The stop string that ended it, if one did.
    stop_sequence: str | None = None
    # The token that ended it, if one did: an end-of-sequence id or a requested stop id.
    stop_token_id: int | None = None
    # The seed the sampler used (drawn at random when the request gave none).
    seed: int | None = None


@dataclass(frozen=True)
class KeepAlive:
    """Nothing new yet (queued, or a long prompt in evaluation): a stream may send a keep-alive.

    Only streams that ask for heartbeats get these; writing something now and then is how a
    server notices a client that went away while its request waits.
    """


KEEP_ALIVE = KeepAlive()

Event = Delta | Finish | KeepAlive
