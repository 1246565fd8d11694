"""Text generation on a decoder engine: prompt → tokens → streamed text events.

`TextGenerator` owns one decoder (and its KV cache) of one engine. `generate(request)` is
the decode loop, a plain generator:

1. fit the prompt into the context (or refuse it, by the request's policy);
2. evaluate the prompt in bounded chunks (prefill), keeping only the last position's logits
   (every position's, for a request that wants its prompt's log-probabilities);
3. repeat: sample a token from the logits, turn it into text (holding back incomplete
   characters and possible stop-string beginnings), yield a `Delta`, stop on EOS, a stop
   token, a stop string, max_tokens or a full context, else run one decode step;
4. yield one `Finish` with the reason, the counts and the timings.

Closing the generator early (a client went away) frees the slot at once.

The loop runs on the engine's scheduler thread (`runtime/scheduler.py`), which steps every
active request in one batched decode step; `SequenceState` is the per-request part
(sampler, detokenizer, stop matching), so a request's tokens do not depend on its company.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from runtime.decoder import open_decoder
from runtime.engine import Engine
from runtime.errors import ChatTemplateError, ContextLengthError, RequestError
from runtime.events import FINISH_LENGTH, FINISH_STOP, Delta, Event, Finish, PromptLogprobs, TokenChoice, TokenLogprobs
from runtime.grammar import Constraint, Grammar, GrammarVocabulary
from runtime.sampling import MAX_TOP_LOGPROBS, Sample, SamplingParams, SequenceSampler, TokenLogprob, prompt_logprobs
from runtime.scheduler import DEFAULT_PREFIX_CACHE_TOKENS, Job, Scheduler, SchedulerStats
from runtime.text import IncrementalDetokenizer, StopMatcher, TokenBytes

CONTEXT_ERROR = "error"  # a prompt (plus max_tokens) that does not fit is refused, as OpenAI does
CONTEXT_TRUNCATE = "truncate"  # the oldest prompt tokens make way for max_tokens (see fit_context)
CONTEXT_POLICIES = (CONTEXT_ERROR, CONTEXT_TRUNCATE)
# Fill-in-the-middle tokens (prefix, suffix, middle) as vocabularies spell them: StarCoder's,
# SantaCoder's and SmolLM's; Qwen2.5-Coder's.
FIM_SPELLINGS = (("<fim_prefix>", "<fim_suffix>", "<fim_middle>"), ("<fim-prefix>", "<fim-suffix>", "<fim-middle>"), ("<|fim_prefix|>", "<|fim_suffix|>", "<|fim_middle|>"))


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
) -> FittedPrompt:
    """Fit a prompt and its completion into `context_length` positions, or refuse.

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
                f"a completion; shorten the prompt or ask for truncation (context_length_exceeded_behavior=truncate)"
            )
        if max_tokens is not None and len(ids) + max_tokens > context_length:
            raise ContextLengthError(
                f"the context holds {context_length} tokens but {len(ids) + max_tokens} were requested "
                f"({len(ids)} in the prompt, {max_tokens} for the completion); lower max_tokens, shorten the "
                f"prompt, or ask for truncation (context_length_exceeded_behavior=truncate)"
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


class SequenceState:
    """One request's progress: sampler, detokenizer, stop matching, counts."""

    def __init__(self, request: GenerationRequest, fitted: FittedPrompt, eos_ids: Sequence[int], generator: TextGenerator) -> None:
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


class EventStream:
    """The events of one queued generation; closing it (or dropping it) cancels the generation."""

    def __init__(self, job: Job, scheduler: Scheduler, heartbeat_s: float | None = None) -> None:
        self._job = job
        self._scheduler = scheduler
        self._events = job.events_until_finish(heartbeat_s)

    def __iter__(self) -> EventStream:
        return self

    def __next__(self) -> Event:
        try:
            return next(self._events)
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        if not self._job.finished and not self._job.cancelled:
            self._scheduler.cancel(self._job)

    def __del__(self) -> None:
        self.close()


class TextGenerator:
    """Generates text with one decoder engine: up to `slots` requests at once, batched."""

    def __init__(
        self,
        engine: Engine,
        prefill_chunk: int = 512,
        slots: int = 1,
        queue_limit: int = 64,
        max_tokens_limit: int | None = None,
        request_timeout_s: float | None = None,
        prefix_cache_tokens: int = DEFAULT_PREFIX_CACHE_TOKENS,
        reuse_decoded: bool = False,
        batch_invariant: bool = True,
    ) -> None:
        if max_tokens_limit is not None and max_tokens_limit < 1:
            raise ValueError("max_tokens_limit must be at least 1")
        if request_timeout_s is not None and request_timeout_s <= 0:
            raise ValueError("request_timeout_s must be positive")
        self.engine = engine
        # Most tokens one request may ask for; requests that name no limit stop there too.
        self.max_tokens_limit = max_tokens_limit
        # Wall-clock limit per request, queueing included (None: none).
        self.request_timeout_s = request_timeout_s
        self.manifest = engine.manifest
        self.tokenizer = engine.tokenizer
        self.decoder = open_decoder(engine, slots=slots, batch_invariant=batch_invariant)
        self.prefill_chunk = prefill_chunk
        self.token_bytes = TokenBytes(engine.tokenizer)
        self.eos_ids = tuple(self.manifest.eos_token_ids)
        # The vocabulary as the grammar engine sees it, self-tested now (grammars are refused if it fails).
        self.grammars = GrammarVocabulary(engine.tokenizer.to_str(), self.manifest.vocab_size, self.eos_ids, self.token_bytes.compute, self.token_bytes.special_ids)
        self.scheduler = Scheduler(
            self.decoder, prefill_chunk=prefill_chunk, queue_limit=queue_limit, name=engine.name,
            prefix_cache_tokens=prefix_cache_tokens, reuse_decoded=reuse_decoded,
        )  # fmt: skip

    @property
    def name(self) -> str:
        return self.engine.name

    @property
    def context_length(self) -> int:
        return self.decoder.max_length

    @property
    def has_chat_template(self) -> bool:
        return self.engine.chat_template is not None

    @property
    def fim_token_ids(self) -> tuple[int, int, int] | None:
        """The vocabulary's fill-in-the-middle tokens (prefix, suffix, middle); None if it has none."""
        for spelling in FIM_SPELLINGS:
            ids = [self.tokenizer.token_to_id(token) for token in spelling]
            if all(i is not None for i in ids):
                prefix, suffix, middle = (int(i) for i in ids if i is not None)
                return prefix, suffix, middle
        return None

    @property
    def chat_template_source(self) -> str | None:
        """The chat template's Jinja source (the API reads from it which tool-call format the model uses)."""
        return self.engine.chat_template.source if self.engine.chat_template is not None else None

    # -- text in -------------------------------------------------------------------

    def tokenize(self, text: str, add_special_tokens: bool = True) -> list[int]:
        """Token ids of `text`; with add_special_tokens the model's BOS is added if it uses one."""
        return self.tokenizer.encode(text, add_special_tokens=add_special_tokens).ids

    def detokenize(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str:
        self._check_ids(ids, "tokens")
        return self.tokenizer.decode(list(ids), skip_special_tokens=skip_special_tokens)

    def render_chat(self, messages: Sequence[Mapping[str, Any]], add_generation_prompt: bool = True, tools: Sequence[Mapping[str, Any]] | None = None) -> str:
        """The prompt text of a conversation, through the model's chat template."""
        template = self.engine.chat_template
        if template is None:
            raise ChatTemplateError(f"model {self.name!r} has no chat template; send a plain prompt (completions) instead")
        return template.render(messages, add_generation_prompt=add_generation_prompt, tools=tools)

    def chat_prompt_ids(self, messages: Sequence[Mapping[str, Any]], tools: Sequence[Mapping[str, Any]] | None = None) -> list[int]:
        """Token ids of a conversation; the template writes the special tokens itself."""
        return self.tokenize(self.render_chat(messages, tools=tools), add_special_tokens=False)

    def _check_ids(self, ids: Sequence[int], param: str) -> None:
        vocab = self.manifest.vocab_size
        bad = next((i for i in ids if not 0 <= int(i) < vocab), None)
        if bad is not None:
            raise RequestError(f"token id {bad} is outside the vocabulary (0..{vocab - 1})", param=param)

    # -- the decode loop -----------------------------------------------------------

    def prepare(self, request: GenerationRequest) -> FittedPrompt:
        """Validate `request` and fit its prompt into the context."""
        if not request.prompt_ids:
            raise RequestError("the prompt is empty: give at least one token", param="prompt")
        self._check_ids(request.prompt_ids, "prompt")
        self._check_ids(request.stop_token_ids, "stop_token_ids")
        request.sampling.validate(self.manifest.vocab_size)
        if request.prompt_logprobs is not None and not 0 <= request.prompt_logprobs <= MAX_TOP_LOGPROBS:
            raise RequestError(f"prompt_logprobs must be between 0 and {MAX_TOP_LOGPROBS} (got {request.prompt_logprobs})", param="logprobs")
        if request.max_tokens is not None and request.max_tokens < 0:
            raise RequestError(f"max_tokens must be 0 or more (got {request.max_tokens})", param="max_tokens")
        limit = self.max_tokens_limit
        if limit is not None and request.max_tokens is not None and request.max_tokens > limit:
            raise RequestError(f"max_tokens is {request.max_tokens} but this server generates at most {limit} tokens per request", param="max_tokens")
        if request.min_tokens < 0 or (request.max_tokens is not None and request.min_tokens > request.max_tokens):
            raise RequestError(f"min_tokens must be between 0 and max_tokens (got {request.min_tokens})", param="min_tokens")
        if request.grammar is not None:
            self.grammars.compile(request.grammar)  # kept for the sequence's copy, or GrammarError
        context = self.context_length
        if request.context_length is not None:
            if request.context_length < 1:
                raise RequestError("the context length must be at least 1", param="num_ctx")
            context = min(context, request.context_length)
        bos = self.manifest.bos_token_id if self.manifest.add_bos_token else None
        fitted = fit_context(request.prompt_ids, request.max_tokens, context, request.context_policy, request.prompt_truncate_len, bos)
        if limit is not None and fitted.max_new_tokens > limit:  # no max_tokens given: the server's limit applies
            fitted = replace(fitted, max_new_tokens=limit)
        return fitted

    def generate(self, request: GenerationRequest, heartbeat_s: float | None = None) -> EventStream:
        """Stream the completion of `request` as Delta events, then one Finish.

        The request is validated and queued for a slot at once (RequestError, or
        QueueFullError when the engine is saturated, comes from this call), then run by the
        engine's scheduler beside whatever else is generating. Closing the stream early (a
        client went away) cancels it: its slot is free at the scheduler's next tick. With
        `heartbeat_s`, the stream yields KEEP_ALIVE whenever no event came for that long.
        """
        submitted = time.perf_counter_ns()
        fitted = self.prepare(request)
        job = Job(SequenceState(request, fitted, self.eos_ids, self), submitted, timeout_s=self.request_timeout_s)
        self.scheduler.submit(job)
        return EventStream(job, self.scheduler, heartbeat_s)

    def warm_up(self) -> None:
        """Run one decode step at every batch size the scheduler can form, before any request.

        ONNX Runtime plans memory and picks kernels on a graph's first run at each input
        shape; without this the first requests that meet at a new batch size pay hundreds of
        milliseconds each. Call it before serving: it uses the decoder outside the scheduler.
        """
        if self.stats().active or self.stats().waiting:
            raise RuntimeError("warm_up() runs before any request")
        slots = list(range(self.decoder.slots))
        for count in range(1, len(slots) + 1):
            self.decoder.decode(slots[:count], [0] * count)
        for slot in slots:
            self.decoder.reset(slot)

    def stats(self) -> SchedulerStats:
        """Slots in use, requests waiting, steps and tokens so far."""
        return self.scheduler.stats()

    def close(self) -> None:
        """Stop the scheduler thread (requests still running end with an error)."""
        self.scheduler.close()

    def complete(self, request: GenerationRequest) -> tuple[str, Finish]:
        """The whole completion at once: its text and the Finish event."""
        parts, finish = [], None
        for event in self.generate(request):
            if isinstance(event, Delta):
                parts.append(event.text)
            elif isinstance(event, Finish):  # no KeepAlive: generate() without heartbeat_s sends none
                finish = event
        assert finish is not None
        return "".join(parts), finish
