"""What a caller asks of the generator, and the prompt fitted to the context.

`GenerationRequest` is one completion to generate from prompt token ids; `fit_context` fits
its prompt and max_tokens into the context (or refuses, by the request's policy) and gives
the `FittedPrompt` that runs. The first link of the runtime's straight line:
request ← sequence ← scheduler ← generation.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from runtime.errors import ContextLengthError, RequestError
from runtime.grammar import Grammar
from runtime.sampling import SamplingParams

CONTEXT_ERROR = "error"  # a prompt (plus max_tokens) that does not fit is refused, as OpenAI does
CONTEXT_TRUNCATE = "truncate"  # the oldest prompt tokens make way for max_tokens (see fit_context)
CONTEXT_POLICIES = (CONTEXT_ERROR, CONTEXT_TRUNCATE)


@dataclass(frozen=True)
class GenerationRequest:
    """One completion to generate from prompt token ids."""

    prompt_ids: tuple[int, ...]
    sampling: SamplingParams = field(default_factory=SamplingParams)
    # Most tokens to generate; None: until a stop or the context is full.
    max_tokens: int | None = None
    # End-of-sequence ids and stop strings are ignored until this many tokens exist.
    min_tokens: int = 0
    # Stop strings: generation ends at the first, which is not part of the output.
    stop: tuple[str, ...] = ()
    # Token ids that end generation like EOS does (in addition to the engine's EOS ids).
    stop_token_ids: tuple[int, ...] = ()
    # Keep generating through EOS (benchmarks); stop strings and stop_token_ids still apply.
    ignore_eos: bool = False
    # What to do when prompt + max_tokens exceeds the context: CONTEXT_ERROR or CONTEXT_TRUNCATE.
    context_policy: str = CONTEXT_ERROR
    # Keep at most this many prompt tokens (the last ones), whatever the policy.
    prompt_truncate_len: int | None = None
    # A context smaller than the engine's (Ollama's num_ctx); None: the engine's.
    context_length: int | None = None
    # Leave special tokens (e.g. <|im_end|>) out of the text.
    skip_special_tokens: bool = True
    # What the output must match (runtime/grammar.py); None: anything.
    grammar: Grammar | None = None
    # Log-probabilities of the prompt's own tokens, with this many alternatives each (0..20),
    # sent in one Delta before the first generated token; None: not computed. The whole
    # prompt is then evaluated (no prefix reuse), keeping every position's logits.
    prompt_logprobs: int | None = None
    # PRIORITY_BACKGROUND: a request nobody is waiting on (a line of a batch, api/batches/):
    # the scheduler gives it only the slots and prompt budget interactive requests leave.
    priority: int = 0


# Scheduling priorities (GenerationRequest.priority, runtime/scheduler.py).
PRIORITY_INTERACTIVE = 0
PRIORITY_BACKGROUND = 1


@dataclass(frozen=True)
class FittedPrompt:
    """The prompt as it will run, the most tokens it may generate, and how many were cut."""

    ids: tuple[int, ...]
    max_new_tokens: int
    dropped: int


def fit_context(
    prompt_ids: Sequence[int],
    max_tokens: int | None,
    context_length: int,
    policy: str = CONTEXT_ERROR,
    prompt_truncate_len: int | None = None,
    bos_token_id: int | None = None,
    param: str | None = None,
) -> FittedPrompt:
    """Fit a prompt and its completion into `context_length` positions, or refuse (a
    ContextLengthError blaming `param`, the client's name for the prompt).

    CONTEXT_ERROR refuses a prompt that leaves no room, or max_tokens beyond the room left,
    with a message naming the numbers. CONTEXT_TRUNCATE drops the oldest prompt tokens until
    max_tokens fits (a quarter of the context is reserved when max_tokens is None), but the
    prompt keeps at least half the context; max_tokens is then clipped to the room left.
    Truncation keeps the end of the prompt (the latest turns matter most) and a leading BOS
    token if the prompt had one. `prompt_truncate_len` cuts the prompt first, whatever the policy.
    """
    if policy not in CONTEXT_POLICIES:
        raise RequestError(f"context policy must be one of {', '.join(CONTEXT_POLICIES)} (got {policy!r})", param="context_length_exceeded_behavior")
    ids = tuple(int(i) for i in prompt_ids)
    original = len(ids)
    if prompt_truncate_len is not None:
        if prompt_truncate_len < 1:
            raise RequestError("prompt_truncate_len must be at least 1", param="prompt_truncate_len")
        ids = _keep_end(ids, prompt_truncate_len, bos_token_id)
    if policy == CONTEXT_ERROR:
        if len(ids) >= context_length:
            raise ContextLengthError(
                f"the prompt has {len(ids)} tokens but the context holds {context_length}, leaving no room for "
                f"a completion; shorten the prompt or ask for truncation (context_length_exceeded_behavior=truncate)",
                param=param,
            )
        if max_tokens is not None and len(ids) + max_tokens > context_length:
            raise ContextLengthError(
                f"the context holds {context_length} tokens but {len(ids) + max_tokens} were requested "
                f"({len(ids)} in the prompt, {max_tokens} for the completion); lower max_tokens, shorten the "
                f"prompt, or ask for truncation (context_length_exceeded_behavior=truncate)",
                param=param,
            )
    elif len(ids) >= context_length or (max_tokens is not None and len(ids) + max_tokens > context_length):
        wanted = max_tokens if max_tokens is not None else context_length // 4
        reserve = max(1, min(wanted, context_length // 2))
        if len(ids) > context_length - reserve:
            ids = _keep_end(ids, context_length - reserve, bos_token_id)
    room = context_length - len(ids)
    max_new = room if max_tokens is None else min(max_tokens, room)
    return FittedPrompt(ids, max_new, original - len(ids))


def _keep_end(ids: tuple[int, ...], keep: int, bos_token_id: int | None) -> tuple[int, ...]:
    if len(ids) <= keep:
        return ids
    if bos_token_id is not None and ids and ids[0] == bos_token_id and keep > 1:
        return (ids[0],) + ids[len(ids) - keep + 1 :]
    return ids[len(ids) - keep :]
