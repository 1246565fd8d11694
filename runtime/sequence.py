"""One request's progress through the decode loop: sampler, detokenizer, stop matching, counts.

`SequenceState` is the per-request part of a batched step (runtime/scheduler.py), so a
request's tokens do not depend on its company. It reads three things of the generator that
queued it (`SequenceSource`): the tokenizer, the token bytes and the grammar vocabulary.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Protocol

import numpy as np

from runtime.events import FINISH_LENGTH, FINISH_STOP, Delta, PromptLogprobs, TokenChoice, TokenLogprobs
from runtime.grammar import Constraint, GrammarVocabulary
from runtime.request import FittedPrompt, GenerationRequest
from runtime.sampling import Sample, SequenceSampler, TokenLogprob, prompt_logprobs
from runtime.text import IncrementalDetokenizer, StopMatcher


class SequenceSource(Protocol):
    """What a sequence reads of the generator that runs it (runtime/generation.py: TextGenerator)."""

    @property
    def tokenizer(self) -> Any: ...

    @property
    def token_bytes(self) -> Callable[[int], bytes]: ...

    @property
    def grammars(self) -> GrammarVocabulary: ...


class SequenceState:
    """One request's progress: sampler, detokenizer, stop matching, counts."""

    def __init__(self, request: GenerationRequest, fitted: FittedPrompt, eos_ids: Sequence[int], generator: SequenceSource) -> None:
        self.request = request
        self.fitted = fitted
        self.stop_ids = frozenset(request.stop_token_ids) | (frozenset() if request.ignore_eos else frozenset(eos_ids))
        self.sampler = SequenceSampler(request.sampling, fitted.ids, sorted(self.stop_ids), request.min_tokens)
        self.detokenizer = IncrementalDetokenizer(generator.tokenizer, fitted.ids, request.skip_special_tokens)
        self.stops = StopMatcher(request.stop)
        self._token_bytes = generator.token_bytes
        self.constraint = Constraint(generator.grammars.matcher(request.grammar)) if request.grammar is not None else None
        self._prompt_records: list[TokenLogprob] = []

    @property
    def wants_prompt_logprobs(self) -> bool:
        return self.request.prompt_logprobs is not None

    def score_prompt(self, start: int, logits: np.ndarray) -> None:
        """Record the prompt tokens that rows of `logits` predict: row j is position start + j,
        whose logits give the distribution of prompt token start + j + 1 (if the prompt has one)."""
        targets = self.fitted.ids[start + 1 : start + 1 + len(logits)]
        if targets:
            self._prompt_records.extend(prompt_logprobs(logits, targets, self.request.prompt_logprobs or 0))

    def prompt_delta(self) -> Delta:
        """The Delta carrying the prompt's log-probabilities, once the whole prompt is scored."""
        first = self.fitted.ids[0]
        rest = tuple(self._logprobs(record) for record in self._prompt_records)
        return Delta("", (), prompt_logprobs=PromptLogprobs(first, self._choice(first, 0.0).token, rest))

    @property
    def generated(self) -> int:
        """Tokens generated so far (the sampler counts them for its penalties)."""
        return self.sampler.generated

    def absorb(self, sample: Sample) -> tuple[Delta, str | None, dict[str, Any]]:
        """Take the sampled token: the delta to send, and the finish reason if it ends here."""
        token = sample.token_id
        self.sampler.accept(token)
        logprobs = (self._logprobs(sample.logprob),) if sample.logprob is not None else ()
        past_minimum = self.generated > self.request.min_tokens
        if token in self.stop_ids and past_minimum:
            # The stop token itself is not text; what was held back is released.
            text, stop = self._drain("", past_minimum)
            if stop is not None:
                return Delta(text, (token,), logprobs), FINISH_STOP, {"stop_sequence": stop}
            return Delta(text, (token,), logprobs), FINISH_STOP, {"stop_token_id": token}
        grammar_complete = False
        if self.constraint is not None and not self.constraint.advance(token):
            if self.constraint.error is not None:
                # Only a token the grammar allowed can be sampled, unless nothing was allowed (the
                # grammar wanted its end while min_tokens still banned it): end without that token.
                text, stop = self._drain("", past_minimum)
                return Delta(text, (token,), logprobs), FINISH_STOP, {"stop_sequence": stop} if stop is not None else {}
            grammar_complete = True  # the grammar is satisfied and allows nothing more
        text, stop = self.stops.feed(self.detokenizer.add(token), active=past_minimum)
        if stop is not None:
            return Delta(text, (token,), logprobs), FINISH_STOP, {"stop_sequence": stop}
        if grammar_complete or self.generated >= self.fitted.max_new_tokens:
            text, stop = self._drain(text, past_minimum)
            if stop is not None:
                return Delta(text, (token,), logprobs), FINISH_STOP, {"stop_sequence": stop}
            return Delta(text, (token,), logprobs), FINISH_STOP if grammar_complete else FINISH_LENGTH, {}
        return Delta(text, (token,), logprobs), None, {}

    def _drain(self, text: str, past_minimum: bool) -> tuple[str, str | None]:
        """At the end: the detokenizer's rest goes through the stop matcher, then all held text."""
        tail, stop = self.stops.feed(self.detokenizer.flush(), active=past_minimum)
        if stop is not None:
            return text + tail, stop
        return text + tail + self.stops.flush(), None

    def _choice(self, token_id: int, logprob: float) -> TokenChoice:
        raw = self._token_bytes(token_id)
        return TokenChoice(token_id, raw.decode("utf-8", errors="replace"), raw, logprob)

    def _logprobs(self, record: TokenLogprob) -> TokenLogprobs:
        return TokenLogprobs(self._choice(record.token_id, record.logprob), tuple(self._choice(i, lp) for i, lp in record.top))
