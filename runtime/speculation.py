"""Speculative decoding: guess a sequence's next tokens, check them all in one step, keep the
ones the model agrees with. The guesses come from the sequence's own text (`PromptLookup`,
serve --speculate ngram) or from a smaller engine with the same vocabulary (`DraftModel`,
serve --speculate draft --draft-engine DIR).

Small local models spend much of their time copying: extraction into JSON from a given
passage, answers that quote their sources, code edits that repeat most of the code. Where the
last few tokens generated also occur earlier in the prompt or the answer, the tokens that
followed them there are a good guess of what comes next (llama.cpp's `--lookup`, vLLM's n-gram
proposer). `PromptLookup` keeps, for every n-gram of 1 to `max_ngram` tokens, where its latest
occurrence was followed, so each guess costs one dictionary lookup per n, not a search.

The scheduler (runtime/scheduler.py `_verify`) feeds the sequence's next token and the draft
as one run over the sequence's own slot, reads the logits of every position, and samples them
in order with the sequence's own sampler, grammar and penalties: the first sample that differs
from the draft is the last token kept, the cache is cut back past it. Sampling stays exact
(each kept token is drawn from the distribution the model gives it after the tokens kept
before it; a seeded request draws the same random numbers as without speculation).

Why it is a switch and not the default, and what it keeps: a verification run evaluates
several positions of one sequence, so it takes ONNX Runtime's prompt kernels, while ordinary
decode steps take its token kernels; with the int4 engine's int8 activations the two differ by
up to about one logit (runtime.decoder_base explains the rounding). So a speculating sequence
runs *every* step as such a run of two or more positions (when no draft is found, a one-token
guess fills the run), and its tokens are exactly what evaluating its text as a prompt gives,
position by position. Its greedy output therefore does not depend on the drafts or on how
many were accepted; it can differ from the same request without speculation where two tokens
nearly tie. ONNX Runtime's attention takes several new positions for one sequence per run only,
so speculating sequences cannot share a run: while more than `speculate_max_streams` sequences
decode, every sequence takes the one batched step instead, and a request's greedy output then
depends on its company on near ties (with the limit at the slot count it never does, at a cost
in throughput under load). Positions evaluated by speculative steps are prompt-kernel positions,
so a chat's next turn reuses them from the prefix cache, answer included.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

import numpy as np

if TYPE_CHECKING:  # annotations only
    from runtime.engine import Engine


@dataclass(frozen=True)
class SpeculationStats:
    """Speculative steps run so far, the draft tokens they checked and how many were kept."""

    steps: int = 0  # verification runs
    tokens: int = 0  # tokens they produced (kept drafts plus the one sampled after them)
    drafted: int = 0  # guessed tokens checked (by lookup or a draft engine; not the one-token filler of a run without a guess)
    accepted: int = 0  # of those, the ones the model agreed with


@dataclass(frozen=True)
class Speculation:
    """How a scheduler speculates: the method's name (for /health), a drafter per new sequence
    (given its prompt), and the most sequences decoding at once for which steps speculate."""

    method: str
    drafter: Callable[[Sequence[int]], Drafter]
    max_streams: int = 1  # GeneratorSettings checks it (speculate_max_streams)


class Drafter(Protocol):
    """What the scheduler asks of a speculating sequence's drafter (one per sequence)."""

    tokens: list[int]  # the prompt and every token generated so far, the one to feed next included

    def append(self, token: int) -> None: ...
    def draft(self, limit: int) -> list[int]: ...
    def close(self) -> None: ...


class PromptLookup:
    """Draft tokens for one sequence from its prompt and what it generated so far.

    A draft continues the latest earlier occurrence of the sequence's last n tokens (n from
    `max_ngram` down to 1, longest first). A match of `max_ngram` tokens gets up to
    `draft_tokens` tokens; a shorter one, a weaker guess, gets fewer (each checked position
    costs compute, and lone-token matches in free text are rarely right for long).
    """

    def __init__(self, tokens: Sequence[int], draft_tokens: int = 4, max_ngram: int = 3) -> None:
        if draft_tokens < 1:
            raise ValueError("draft_tokens must be at least 1")
        if max_ngram < 1:
            raise ValueError("max_ngram must be at least 1")
        self.draft_tokens = draft_tokens
        self.max_ngram = max_ngram
        self.tokens: list[int] = []
        # follows[n - 1][ngram] = the index of the token that followed the latest occurrence of `ngram`.
        self._follows: list[dict[tuple[int, ...], int]] = [{} for _ in range(max_ngram)]
        for token in tokens:
            self.append(int(token))

    def append(self, token: int) -> None:
        """The sequence grew by `token` (a prompt token, or one generated and kept)."""
        tokens = self.tokens
        tokens.append(token)
        end = len(tokens) - 1  # the n-grams that end just before it are followed by it
        for n in range(1, min(self.max_ngram, end) + 1):
            self._follows[n - 1][tuple(tokens[end - n : end])] = end

    def draft(self, limit: int) -> list[int]:
        """Up to `limit` guessed next tokens (fewer, or none, when the text gives no better guess)."""
        tokens = self.tokens
        size = len(tokens)
        for n in range(min(self.max_ngram, size), 0, -1):
            follower = self._follows[n - 1].get(tuple(tokens[size - n :]))
            if follower is not None:
                # Full length for a long match; a match of n < max_ngram tokens gets n tokens' worth.
                length = self.draft_tokens if n == self.max_ngram else min(self.draft_tokens, n)
                return tokens[follower : follower + min(length, limit)]
        return []

    def close(self) -> None:
        """Nothing to give back."""


class DraftModel:
    """A smaller engine with the same vocabulary whose greedy tokens are the drafts (serve
    --speculate draft --draft-engine DIR), as llama.cpp's and vLLM's draft models are.

    It has a slot of its own KV cache per slot of the target engine; a sequence takes one at its
    first draft and gives it back when it ends. Drafting runs on the scheduler's thread, one
    sequence at a time: the tokens the draft cache lacks (the prompt, at first; then the tokens
    kept since) in one run, then one decode step per further draft token. Its numbers never
    reach the output: the target checks every draft token, so a draft model only changes speed.
    """

    def __init__(self, engine: Engine, slots: int) -> None:
        from runtime.decoder import open_decoder

        self.engine = engine
        self.decoder = open_decoder(engine, slots=slots)
        if not self.decoder.can_truncate:
            raise ValueError(f"draft engine {engine.name!r} cannot cut its cache back; export it with our GroupQueryAttention builder")
        self._free = list(range(slots))

    def drafter(self, prompt: Sequence[int], draft_tokens: int) -> ModelDrafter:
        return ModelDrafter(self, prompt, draft_tokens)

    def take_slot(self) -> int | None:
        return self._free.pop() if self._free else None

    def give_back(self, slot: int) -> None:
        self.decoder.reset(slot)
        self._free.append(slot)


class ModelDrafter:
    """One sequence's drafts from a `DraftModel`: up to `draft_tokens` greedy tokens per step."""

    def __init__(self, model: DraftModel, prompt: Sequence[int], draft_tokens: int) -> None:
        if draft_tokens < 1:
            raise ValueError("draft_tokens must be at least 1")
        self.model = model
        self.draft_tokens = draft_tokens
        self.tokens = [int(t) for t in prompt]
        self.slot: int | None = None

    def append(self, token: int) -> None:
        self.tokens.append(token)

    def draft(self, limit: int) -> list[int]:
        decoder = self.model.decoder
        count = min(limit, self.draft_tokens, decoder.max_length - len(self.tokens))  # the draft's own context may be shorter
        if count <= 0:
            return []
        if self.slot is None:
            self.slot = self.model.take_slot()
            if self.slot is None:  # every draft slot held: no draft this time
                return []
        slot = self.slot
        # The draft cache holds a prefix of the tokens (up to the last draft it was fed): keep the
        # part the sequence kept, evaluate the rest.
        held = min(decoder.common_prefix(slot, self.tokens, exact=False), len(self.tokens) - 1)
        decoder.truncate(slot, held)
        logits = decoder.prefill(slot, np.asarray(self.tokens[held:], dtype=np.int64))
        drafts = [int(logits[-1].argmax())]
        while len(drafts) < count:
            drafts.append(int(decoder.decode([slot], [drafts[-1]])[0].argmax()))
        return drafts

    def close(self) -> None:
        if self.slot is not None:
            self.model.give_back(self.slot)
            self.slot = None


def same_vocabulary(a: Engine, b: Engine) -> bool:
    """Whether two engines read and write tokens alike (a draft model must: its ids are the target's)."""
    return a.manifest.vocab_size == b.manifest.vocab_size and a.tokenizer.get_vocab(with_added_tokens=True) == b.tokenizer.get_vocab(with_added_tokens=True)
