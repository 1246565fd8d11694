"""Continuous batching: one scheduler thread per decoder engine.

The thread owns the decoder (the ONNX Runtime session and its KV pool). Request threads
only `submit` a job and read its events from the job's own queue. Every tick:

1. jobs that were cancelled (a client went away) give their slot back, and waiting jobs
   take the free slots, oldest first (interactive before background: see Priority below);
2. one batched decode step advances every sequence that has a token to feed: one token
   each, one session run over the packed slots [0, n);
3. the rest of the tick's prefill budget (`prefill_chunk` tokens) evaluates prompts of
   newly admitted jobs, oldest first; a prompt longer than the budget is spread over
   several ticks, so a long prompt never stalls the streams already running for long;
4. each sequence's logits become a token (sampling is vectorised over the batch but every
   row uses its own parameters and seeded generator), the token becomes text, and a
   `Delta` — or the `Finish` — goes to the job's queue.

Slots are kept packed: when a sequence leaves, the one in the highest slot moves into the
hole (its cached positions are copied, a few megabytes at most), so a decode step is always
one run over consecutive slots and the weights are read once per step, not once per gap.

Prefix reuse: a slot given back keeps its cached positions (and the token ids they came
from) until another sequence needs the room. A new prompt takes the free slot whose cache
shares the longest leading run of tokens with it, keeps those positions and evaluates only
the rest, as llama.cpp's prompt cache and vLLM's automatic prefix caching do; so a chat's
next turn re-reads its earlier prompt but not the whole history. Without a match it takes
the free slot whose cache was used longest ago. Packing is kept by swapping: a leaving
sequence's cache goes to the highest slot while the sequence there moves into the hole.

Reuse never changes an output, bit for bit: only positions written by prompt evaluations
are reused (not generated tokens' positions, which one-row decode kernels computed with
other rounding; runtime.decoder explains), the last two prompt tokens or more are always
evaluated, and no prompt is ever evaluated one token at a time, so each prompt position's
values are those a fresh evaluation gives it (tests/integration/test_prefix_reuse.py).
A request that asks for its prompt's log-probabilities reuses nothing: it needs the logits of
every prompt position, so its whole prompt is evaluated (in runs of at most
PROMPT_LOGPROBS_CHUNK, each keeping its logits).
`reuse_decoded` (serve --prefix-cache-decoded) trades that for speed, as llama.cpp does: the
generated tokens' positions are reused as well.

Faults stay with their request: when a batched step fails, each sequence is stepped alone
once, so only the one(s) that fail again end — with the error as their last event — and
the others go on; a failing prompt evaluation or sampling ends its own request only.

Priority: a background job (a line of a batch, api/batches/; GenerationRequest.priority) runs
only in what interactive jobs leave, so a batch costs an interactive request's first token as
little time as it can. Interactive jobs waiting for a slot always take free slots first; background
jobs hold at most `background_slots` slots (and never the last free one, when there are
several), so an interactive request finds a slot without waiting for a batch line to end. In a
tick where an interactive prompt is being evaluated, background sequences sit the decode step
out and evaluate none of their prompts: the tick is the interactive prompt's alone, as it would
be on an idle engine. Otherwise background prompts get at most `background_prefill_chunk`
tokens a tick, and none when an interactive job arrived during the tick's decode step, so an
interactive request that arrives mid-tick waits behind little of them.

Every job may carry a deadline (the server's per-request time limit): a job still waiting
for a slot then ends with QueueTimeoutError (503, retry later), a running one with
RequestTimeoutError (504). The reading side has its own guard too, so a request never waits
unboundedly even if a step hangs.

Outputs do not depend on batching: rows of a batched step are computed independently and
sampling is per row, so a greedy request gives the same tokens alone or beside others
(tests/integration/test_scheduler.py checks this on the real engine).

Speculative decoding (`speculation`, serve --speculate ngram|draft): each sequence drafts its
next tokens (runtime/speculation.py: from its own text, or with a smaller draft engine that
has a cache slot per sequence) and, instead of taking part in the batched
step, runs its token and the draft over its own slot; the rows are sampled in order and the
first one that disagrees with the draft ends what is kept (`_verify`). ONNX Runtime's attention
takes several new positions only for one sequence at a time, so each speculating sequence is
its own run: speculation pays where few sequences run at once, and a tick with more than
`speculate_max_streams` decoding sequences runs them all in the one batched step instead.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from typing import TYPE_CHECKING

import numpy as np

from runtime.errors import ApplianceError, InferenceError, QueueFullError, QueueTimeoutError, RequestTimeoutError, SchedulerStoppedError
from runtime.events import FINISH_LENGTH, Event, Finish, Usage
from runtime.grammar import MaskComputer, apply_masks
from runtime.job import Job, SchedulerStats
from runtime.sampling import sample_batch
from runtime.settings import DEFAULT_PREFIX_CACHE_TOKENS
from runtime.speculation import Speculation, SpeculationStats

if TYPE_CHECKING:  # annotations only
    from runtime.decoder_base import Decoder

log = logging.getLogger("appliance.scheduler")

# Most prompt tokens per prefill run for a request that wants its prompt's log-probabilities:
# each keeps its logits (192 KiB a position for SmolLM2's 49,152 tokens), so 128 hold 24 MiB.
PROMPT_LOGPROBS_CHUNK = 128

class Scheduler:
    """Runs many generations on one decoder, a batched decode step per tick."""

    def __init__(
        self,
        decoder: Decoder,
        prefill_chunk: int = 512,
        queue_limit: int = 64,
        name: str = "engine",
        prefix_cache_tokens: int = DEFAULT_PREFIX_CACHE_TOKENS,
        reuse_decoded: bool = False,
        speculation: Speculation | None = None,
        background_slots: int = 4,
        background_prefill_chunk: int = 32,
    ) -> None:
        if prefill_chunk < 1:
            raise ValueError("prefill_chunk must be positive")
        if queue_limit < 0:
            raise ValueError("queue_limit must be 0 or more")
        if prefix_cache_tokens < 0:
            raise ValueError("prefix_cache_tokens must be 0 or more")
        if background_slots < 1 or background_prefill_chunk < 1:
            raise ValueError("background_slots and background_prefill_chunk must be at least 1")
        if speculation is not None and not decoder.can_truncate:
            raise ValueError(f"engine {name!r} cannot speculate: its cache cannot be cut back past rejected draft tokens")
        self.decoder = decoder
        self.prefill_chunk = prefill_chunk
        self.queue_limit = queue_limit
        self.name = name
        self._slots: list[Job | None] = [None] * decoder.slots
        self._admitted: list[Job] = []  # jobs holding a slot, in order of admission
        self._waiting: deque[Job] = deque()  # interactive jobs queued for a slot
        self._background: deque[Job] = deque()  # background jobs queued for a slot
        # Slots background jobs may hold at once: never the last free one when there are several.
        self.background_slots = min(background_slots, max(1, decoder.slots - 1))
        self.background_prefill_chunk = background_prefill_chunk
        self._wake = threading.Condition()
        self._stopping = False
        self._steps = 0
        self._tokens = 0
        # Compaction copies cache rows on the host; a pool that lives on a GPU cannot move yet.
        self._can_move = decoder.can_move
        # Reuse needs a cache that can be cut back to a prefix, and (when slots are packed) swapped.
        self._reuse = prefix_cache_tokens > 0 and decoder.can_truncate
        # Most positions kept in free slots for reuse; past it the caches used longest ago go.
        self._retain = prefix_cache_tokens
        # Reuse generated tokens' positions too: a chat's next turn then evaluates only its new
        # message, but greedy output may differ from a fresh evaluation's on near ties.
        self._exact = not reuse_decoded
        self._freed_at = [0] * decoder.slots  # when each slot was last given back (a count of releases; 0: never)
        self._releases = 0
        self._prefix_hits = 0
        self._cached_tokens = 0
        self._mask_computer: MaskComputer | None = None  # made at the first constrained sequence
        self._speculation = speculation
        self._speculated = SpeculationStats()
        self._thread = threading.Thread(target=self._run, name=f"scheduler-{name}", daemon=True)
        self._thread.start()

    # -- what request threads call ----------------------------------------------------

    def submit(self, job: Job) -> None:
        """Queue `job` for a slot; QueueFullError when every slot is busy and the queue is full."""
        if self._speculation is not None and job.drafter is None:
            job.drafter = self._speculation.drafter(job.prompt)  # in the request's thread: a prompt lookup indexes the prompt once
        with self._wake:
            if self._stopping:
                raise SchedulerStoppedError(f"engine {self.name!r} is shutting down; retry on another instance")
            if job.timeout_s is not None:
                job.deadline = time.monotonic() + job.timeout_s
            queue = self._background if job.background else self._waiting
            busy = all(slot is not None for slot in self._slots)
            if busy and len(queue) >= self.queue_limit:
                raise QueueFullError(
                    f"engine {self.name!r} is busy: all {len(self._slots)} slots are generating and "
                    f"{len(queue)} requests are waiting; retry shortly",
                )
            queue.append(job)
            self._wake.notify()

    def cancel(self, job: Job) -> None:
        """Stop generating for `job`; its slot is free at the next tick."""
        job.cancelled = True
        with self._wake:
            self._wake.notify()

    def stats(self) -> SchedulerStats:
        with self._wake:
            spec = self._speculated
            return SchedulerStats(
                len(self._slots), len(self._admitted), len(self._waiting) + len(self._background), self._steps, self._tokens, self._prefix_hits, self._cached_tokens,
                self._speculation.method if self._speculation is not None else None, spec.steps, spec.tokens, spec.drafted, spec.accepted,
                sum(1 for job in self._admitted if job.background), len(self._background),
            )  # fmt: skip

    def close(self, timeout: float = 5.0) -> None:
        """Stop the thread; jobs still queued or running end with SchedulerStoppedError."""
        with self._wake:
            self._stopping = True
            self._wake.notify()
        self._thread.join(timeout)
        if self._mask_computer is not None:
            self._mask_computer.close()

    # -- the scheduler thread ---------------------------------------------------------

    def _run(self) -> None:
        while True:
            with self._wake:
                while not self._stopping and not self._waiting and not self._background and not self._admitted:
                    self._wake.wait()
                if self._stopping:
                    self._fail_all(SchedulerStoppedError(f"engine {self.name!r} stopped before this request finished"))
                    return
                self._expire()
                self._release_cancelled()
                self._admit()
            try:
                self._tick()
            except Exception as exc:  # a failed step ends the requests it touched, not the thread
                log.error("engine %s: a scheduler step failed: %s", self.name, exc, exc_info=True)
                with self._wake:
                    for job in list(self._admitted):
                        self._end(job, exc)

    def _tick(self) -> None:
        # 0. A tick with an interactive prompt to evaluate is that prompt's: background jobs wait.
        yielding = any(not job.background and job.next_token is None and not job.finished and not job.cancelled for job in self._admitted)
        # 1. One batched decode step for every sequence with a token to feed.
        decoding = [job for job in self._admitted if job.next_token is not None and not job.cancelled and not (yielding and job.background)]
        # Speculation only while few sequences decode: each speculating sequence is a run of its
        # own, and beyond a few the one batched step does more per weight read than drafts save.
        speculation = self._speculation
        speculating = [job for job in decoding if job.drafter is not None] if speculation is not None and len(decoding) <= speculation.max_streams else []
        if speculating:
            decoding = [job for job in decoding if job.drafter is None]
        if decoding:
            decoding.sort(key=lambda job: job.held_slot)
            # Constrained sequences' token masks are computed while the step runs (their matchers
            # already consumed the token the step feeds); they are waited for before sampling.
            constrained = [job.state.constraint for job in decoding if job.state.constraint is not None]
            pending = self._masks().start(constrained) if constrained else None
            try:
                logits = self.decoder.decode([job.held_slot for job in decoding], [job.held_token for job in decoding])
            except Exception as exc:
                if pending is not None:
                    pending.result()  # the matchers must be idle before they are used again
                self._decode_alone(decoding, exc)
            else:
                self._steps += 1
                self._advance(decoding, logits, pending.result() if pending is not None else None)
        # 1b. A run of its token and its draft for each speculating sequence.
        for job in speculating:
            self._verify(job)
        # 2. Prompt evaluation for new sequences, within this tick's budget: interactive prompts
        # first (sorting is stable: each kind in order of admission), then background ones with
        # what is left of their smaller budget, unless the tick is an interactive prompt's.
        budget = self.prefill_chunk
        # An interactive job that arrived during the step is admitted at the next tick: it does
        # not wait behind background prompts first (reading the deque's length needs no lock).
        background_budget = 0 if yielding or self._waiting else self.background_prefill_chunk
        for job in sorted(self._admitted, key=lambda job: job.background):
            allowed = min(budget, background_budget) if job.background else budget
            if allowed == 0:
                break
            if job.next_token is not None or job.finished or job.cancelled:
                continue
            if job.prefill_started_ns == 0:
                job.prefill_started_ns = time.perf_counter_ns()
            scoring = job.state.wants_prompt_logprobs
            size = self._chunk_size(len(job.prompt) - job.prefilled, min(allowed, PROMPT_LOGPROBS_CHUNK) if scoring else allowed)
            if size == 0:
                break
            chunk = job.prompt[job.prefilled : job.prefilled + size]
            budget -= len(chunk)
            if job.background:
                background_budget -= len(chunk)
            try:
                # A request scoring its prompt keeps every position's logits (the graph projects
                # only the kept positions onto the vocabulary); the others only the last one.
                logits = self.decoder.prefill(job.held_slot, np.asarray(chunk, dtype=np.int64), logits_to_keep=len(chunk) if scoring else 1)
                if scoring:
                    job.state.score_prompt(job.prefilled, logits)
            except Exception as exc:
                self._fail(job, exc, "evaluating its prompt")
                continue
            job.prefilled += len(chunk)
            if job.prefilled == len(job.prompt):
                job.eval_started_ns = time.perf_counter_ns()
                if scoring:
                    job.events.put(job.state.prompt_delta())
                if job.state.fitted.max_new_tokens == 0:  # max_tokens 0: evaluate the prompt only
                    self._finish(job, FINISH_LENGTH, {})
                else:
                    self._advance([job], logits[-1:].copy())

    @staticmethod
    def _chunk_size(left: int, budget: int) -> int:
        """Prompt tokens to evaluate now, of `left`, within `budget`; 0: wait for the next tick.

        A prompt of two or more tokens is never evaluated one token at a time: a one-token run
        takes the single-row kernels, whose rounding differs from a longer run's, and outputs
        would then depend on where the chunks (or a reused prefix) happened to end.
        """
        size = min(left, budget)
        if left - size == 1:  # leave two for the last chunk, not one
            size -= 1
        if size == 1 and left > 1:
            return 0
        return size

    def _decode_alone(self, jobs: list[Job], error: Exception) -> None:
        """A batched step failed: step each sequence by itself, so only the failing ones end.

        A failed run leaves the cache lengths as they were, so the retry computes the same step.
        """
        if len(jobs) == 1:
            self._fail(jobs[0], error, "a decode step")
            return
        log.warning("engine %s: a batched step of %d sequences failed (%s); stepping them one by one", self.name, len(jobs), error)
        for job in jobs:
            if job.finished:
                continue
            try:
                logits = self.decoder.decode([job.held_slot], [job.held_token])
            except Exception as exc:
                self._fail(job, exc, "a decode step")
                continue
            self._steps += 1
            self._advance([job], logits)

    def _verify(self, job: Job) -> None:
        """One speculative step of `job`: feed its token and a draft, keep what the model agrees with.

        Every run covers two positions or more, so the prompt kernels compute every position of
        the sequence (runtime/speculation.py says why): with no draft, the token itself is the
        guess that fills the run. There is always room for it: the prompt was fitted with its
        tokens to generate, and the last token generated is never fed.
        """
        decoder, slot, state, drafter = self.decoder, job.held_slot, job.state, job.drafter
        assert drafter is not None, "only a drafting job speculates"
        token, length = job.held_token, decoder.length(slot)
        room = decoder.max_length - length
        left = state.fitted.max_new_tokens - state.generated  # tokens the request may still generate
        draft = drafter.draft(min(room, left) - 1)
        guessed = len(draft)
        feed = [token, *(draft or [token])]
        try:
            logits = decoder.prefill(slot, np.asarray(feed, dtype=np.int64), logits_to_keep=len(feed))
        except Exception as exc:
            self._fail(job, exc, "a speculative step")
            return
        kept = 0  # draft tokens the samples agreed with
        for row in range(len(feed)):
            self._advance([job], logits[row : row + 1])
            if job.finished or row + 1 == len(feed) or job.next_token != feed[row + 1]:
                break
            kept += 1
        if not job.finished:  # positions past the last kept token hold rejected guesses
            decoder.truncate(slot, length + 1 + kept)
        spec = self._speculated
        self._speculated = SpeculationStats(spec.steps + 1, spec.tokens + kept + 1, spec.drafted + guessed, spec.accepted + min(kept, guessed))

    def _masks(self) -> MaskComputer:
        if self._mask_computer is None:
            self._mask_computer = MaskComputer(self.decoder.vocab_size)
        return self._mask_computer

    def _advance(self, jobs: list[Job], logits: np.ndarray, masks: np.ndarray | None = None) -> None:
        """Sample one token per job from its row of `logits`; send it; end finished jobs.

        Rows of constrained jobs are masked first: `masks` holds their bitmasks in row order,
        or is computed here when not given.
        """
        rows = [row for row, job in enumerate(jobs) if job.state.constraint is not None]
        try:
            if rows:
                if masks is None:
                    masks = self._masks().compute([c for c in (jobs[row].state.constraint for row in rows) if c is not None])
                apply_masks(logits, rows, masks)
            samples = sample_batch(logits, [job.state.sampler for job in jobs])
        except Exception as exc:
            if len(jobs) == 1:
                self._fail(jobs[0], exc, "sampling")
                return
            for row, job in enumerate(jobs):  # find the request whose sampling fails
                self._advance([job], logits[row : row + 1])
            return
        self._tokens += len(jobs)
        for job, sample in zip(jobs, samples):
            try:
                delta, reason, extra = job.state.absorb(sample)
            except Exception as exc:
                self._fail(job, exc, "turning its token into text")
                continue
            job.events.put(delta)
            if reason is None:
                job.next_token = sample.token_id
                if job.drafter is not None:
                    job.drafter.append(sample.token_id)
            else:
                self._finish(job, reason, extra)

    def _fail(self, job: Job, error: Exception, during: str) -> None:
        """End one request with `error` as its last event; the engine and the others go on."""
        log.error("engine %s: a request failed during %s: %s", self.name, during, error, exc_info=not isinstance(error, ApplianceError))
        if not isinstance(error, ApplianceError):
            error = InferenceError(f"engine {self.name!r} failed this request during {during} ({type(error).__name__}); the server log has the details")
        with self._wake:
            self._end(job, error)

    def _finish(self, job: Job, reason: str, extra: dict) -> None:
        state = job.state
        finished = time.perf_counter_ns()
        usage = Usage(
            prompt_tokens=len(job.prompt),
            completion_tokens=state.generated,
            load_duration_ns=job.prefill_started_ns - job.submitted_ns,
            prompt_eval_duration_ns=job.eval_started_ns - job.prefill_started_ns,
            eval_duration_ns=finished - job.eval_started_ns,
            total_duration_ns=finished - job.submitted_ns,
            prompt_tokens_truncated=state.fitted.dropped,
            cached_tokens=job.cached_tokens,
        )
        with self._wake:
            self._end(job, Finish(reason, usage, seed=state.sampler.seed_used, **extra))

    # -- slots (called with self._wake held) ------------------------------------------

    def _admit(self) -> None:
        """Interactive jobs take free slots first, oldest first; background jobs only while none
        waits, and within their cap."""
        while self._waiting and None in self._slots:
            self._take_slot(self._waiting.popleft())
        if self._waiting:
            return
        held = sum(1 for job in self._admitted if job.background)
        while self._background and None in self._slots and held < self.background_slots:
            held += self._take_slot(self._background.popleft())

    def _take_slot(self, job: Job) -> bool:
        if job.cancelled:
            return False
        job.slot = self._place(job)
        self._slots[job.slot] = job
        self._admitted.append(job)
        return True

    def _place(self, job: Job) -> int:
        """The free slot `job` takes, holding as much of its prompt as can be reused (reset when nothing is)."""
        free = [i for i, held in enumerate(self._slots) if held is None]
        if not self._reuse:
            self.decoder.reset(free[0])
            return free[0]
        decoder = self.decoder
        # Reuse at most all but the last two prompt tokens: the rest is evaluated in a run of two
        # or more, as a fresh prompt is (see _chunk_size), and gives the first token's logits.
        # A request scoring its prompt needs every position's logits: it reuses nothing.
        usable = () if job.state.wants_prompt_logprobs else job.prompt[: len(job.prompt) - 2]
        common, source = max((decoder.common_prefix(slot, usable, self._exact), -slot) for slot in free)
        source = -source
        # The cache to overwrite when none is taken over: an empty one, else the one freed longest ago.
        victim = min(free, key=lambda slot: (decoder.length(slot) > 0, self._freed_at[slot]))
        # Take the matching cache over when that loses little of it (a chat's next turn); when
        # only a short shared start matches a longer cache (a common system prompt), copy that
        # start into the victim's slot instead, so the longer cache stays for its own chat.
        take = common > 0 and (2 * common >= decoder.length(source) or source == victim)
        if not self._can_move:  # a GPU pool: no host copies, so a matching cache is always taken over in place
            target = source if common else victim
        else:
            target = free[0]  # active sequences stay packed in [0, n)
            if take:
                self._swap(source, target)  # the cache that was at target is kept, in source's place
            else:
                if victim != target:  # keep target's cache in the victim's place; the victim's goes
                    decoder.move(target, victim)
                    self._freed_at[victim] = self._freed_at[target]
                    if source == target:
                        source = victim
                if common:
                    decoder.copy_prefix(source, target, common)
        if common:
            decoder.truncate(target, common)
            job.prefilled = job.cached_tokens = common
            self._prefix_hits += 1
            self._cached_tokens += common
        else:
            decoder.reset(target)
        return target

    def _swap(self, a: int, b: int) -> None:
        self.decoder.swap(a, b)
        self._freed_at[a], self._freed_at[b] = self._freed_at[b], self._freed_at[a]

    def _expire(self) -> None:
        """End jobs past their deadline: waiting ones as overload (503), running ones as timed out (504)."""
        now = time.monotonic()
        overdue = [job for job in (*self._waiting, *self._background) if job.deadline is not None and now >= job.deadline and not job.cancelled]
        if overdue:
            self._waiting = deque(job for job in self._waiting if job not in overdue)
            self._background = deque(job for job in self._background if job not in overdue)
            for job in overdue:
                self._end(job, QueueTimeoutError(
                    f"engine {self.name!r} had no free slot for this request within the server's time limit of "
                    f"{job.timeout_s:g} s per request: it is overloaded; retry later"
                ))
        for job in [job for job in self._admitted if job.deadline is not None and now >= job.deadline and not job.cancelled]:
            self._end(job, RequestTimeoutError(
                f"the request ran past the server's time limit of {job.timeout_s:g} s per request and was stopped after "
                f"{job.state.generated} generated tokens; ask for fewer tokens (max_tokens) or a shorter prompt"
            ))

    def _release_cancelled(self) -> None:
        for job in [job for job in self._admitted if job.cancelled]:
            self._end(job, None)
        if any(job.cancelled for job in self._waiting):
            self._waiting = deque(job for job in self._waiting if not job.cancelled)
        if any(job.cancelled for job in self._background):
            self._background = deque(job for job in self._background if not job.cancelled)

    def _end(self, job: Job, last: Event | BaseException | None) -> None:
        """Give `job`'s slot back (packing the slots again) and send its last event."""
        job.finished = True
        if job.drafter is not None:
            job.drafter.close()  # a draft model's slot goes back
        if last is not None:
            job.events.put(last)
        if job in self._admitted:
            self._admitted.remove(job)
        if job.slot is None:
            return
        hole, job.slot = job.slot, None
        self._slots[hole] = None
        if self._reuse and not isinstance(last, BaseException):
            self._releases += 1
            self._freed_at[hole] = self._releases  # keep its cache for a prompt that starts the same
        else:  # after a failure the cache is not trusted
            self.decoder.reset(hole)
        highest = max((i for i, held in enumerate(self._slots) if held is not None), default=-1)
        if self._can_move and highest > hole:
            mover = self._slots[highest]
            assert mover is not None  # `highest` is a held slot
            if self._reuse:
                self._swap(highest, hole)
            else:
                self.decoder.move(highest, hole)
            self._slots[hole], self._slots[highest] = mover, None
            mover.slot = hole
        if self._reuse:
            self._trim_retained()

    def _trim_retained(self) -> None:
        """Drop the caches used longest ago from free slots until they hold at most the budget."""
        kept = [slot for slot, held in enumerate(self._slots) if held is None and self.decoder.length(slot)]
        total = sum(self.decoder.length(slot) for slot in kept)
        for slot in sorted(kept, key=lambda slot: self._freed_at[slot]):
            if total <= self._retain:
                break
            total -= self.decoder.length(slot)
            self.decoder.reset(slot)  # its memory pages go back to the system

    def _fail_all(self, error: BaseException) -> None:
        for job in list(self._admitted) + list(self._waiting) + list(self._background):
            self._end(job, error)
        self._waiting.clear()
        self._background.clear()
