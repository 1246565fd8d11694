"""Text generation on a decoder engine: prompt → tokens → streamed text events.

`TextGenerator` owns one decoder (and its KV cache) of one engine and its scheduler.
`prepare(request)` validates a request and fits its prompt into the context
(`runtime/request.py`: refused, or truncated by the request's policy); `generate(request,
fitted=...)` queues it with what `prepare` made of it (preparing it first when not given, so
the API validates once: api/generation/runs.py) and returns an `EventStream` of `Delta`
events and one `Finish`. Its settings are one `GeneratorSettings` (`runtime/settings.py`). The decode loop itself runs on
the engine's scheduler thread (`runtime/scheduler.py`), which steps every active request in
one batched decode step:

1. evaluate the prompt in bounded chunks (prefill), reusing a cached prefix where it can,
   keeping only the last position's logits (every position's, for a request that wants its
   prompt's log-probabilities);
2. repeat: sample a token from the logits, turn it into text (holding back incomplete
   characters and possible stop-string beginnings), send a `Delta`, stop on EOS, a stop
   token, a stop string, max_tokens or a full context, else take part in the next step;
3. send one `Finish` with the reason, the counts and the timings.

Closing the stream early (a client went away) cancels the request: its slot is free at the
scheduler's next tick. `SequenceState` (`runtime/sequence.py`) is the per-request part
(sampler, detokenizer, stop matching), so a request's tokens do not depend on its company.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import replace
from functools import partial
from typing import Any

from runtime.decoder import open_decoder
from runtime.engine import Engine, load_engine
from runtime.errors import ChatTemplateError, RequestError
from runtime.events import Delta, Event, Finish
from runtime.grammar import GrammarVocabulary
from runtime.job import Job, SchedulerStats
from runtime.request import PRIORITY_BACKGROUND, FittedPrompt, GenerationRequest, fit_context
from runtime.sampling import MAX_TOP_LOGPROBS
from runtime.scheduler import Scheduler
from runtime.sequence import SequenceState
from runtime.settings import GeneratorSettings, takes_generator_settings
from runtime.speculation import DraftModel, PromptLookup, Speculation, same_vocabulary
from runtime.text import TokenBytes

log = logging.getLogger("appliance.generation")

# Fill-in-the-middle tokens (prefix, suffix, middle) as vocabularies spell them: StarCoder's,
# SantaCoder's and SmolLM's; Qwen2.5-Coder's.
FIM_SPELLINGS = (("<fim_prefix>", "<fim_suffix>", "<fim_middle>"), ("<fim-prefix>", "<fim-suffix>", "<fim-middle>"), ("<|fim_prefix|>", "<|fim_suffix|>", "<|fim_middle|>"))


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

    @takes_generator_settings
    def __init__(self, engine: Engine, settings: GeneratorSettings | None = None, draft: Engine | None = None, **generator: Any) -> None:
        """`settings`, or GeneratorSettings' fields as keywords (over the defaults, or over `settings`);
        `draft`, the draft engine when speculate is "draft", if already loaded (else it is loaded
        from `draft_engine`)."""
        self.settings = settings = (settings or GeneratorSettings()).but(**generator)
        self.engine = engine
        self.manifest = engine.manifest
        self.tokenizer = engine.tokenizer
        self.decoder = open_decoder(engine, slots=settings.slots, batch_invariant=settings.batch_invariant)
        self.token_bytes = TokenBytes(engine.tokenizer)
        self.eos_ids = tuple(self.manifest.eos_token_ids)
        # The vocabulary as the grammar engine sees it, self-tested now (grammars are refused if it fails).
        self.grammars = GrammarVocabulary(engine.tokenizer.to_str(), self.manifest.vocab_size, self.eos_ids, self.token_bytes.compute, self.token_bytes.special_ids)
        self.scheduler = Scheduler(
            self.decoder, prefill_chunk=settings.prefill_chunk, queue_limit=settings.queue_limit, name=engine.name,
            prefix_cache_tokens=settings.prefix_cache_tokens, reuse_decoded=settings.reuse_decoded, speculation=self._speculation(draft),
            background_slots=settings.background_slots, background_prefill_chunk=settings.background_prefill_chunk,
        )  # fmt: skip

    def _speculation(self, draft: Engine | None) -> Speculation | None:
        """How the scheduler speculates, as the settings ask and the engines allow (None: it does not)."""
        settings = self.settings
        self.draft_model: DraftModel | None = None  # the draft engine's caches, with --speculate draft
        if settings.speculate is None:
            return None
        if not self.decoder.can_truncate:
            log.warning(
                "engine %s: not speculating (--speculate %s): its graph style (%s) cannot cut its cache back past rejected drafts; "
                "export it with our GroupQueryAttention builder to speculate", self.engine.name, settings.speculate, self.manifest.style,
            )  # fmt: skip
            return None
        if settings.speculate == "ngram":
            return Speculation("ngram", partial(PromptLookup, draft_tokens=settings.draft_tokens), settings.speculate_max_streams)
        if draft is None:
            draft = load_engine(str(settings.draft_engine))
        if not same_vocabulary(self.engine, draft):
            log.warning("engine %s: not speculating with draft engine %s: their vocabularies differ (a draft's token ids must be the target's)", self.engine.name, draft.name)
            return None
        model = self.draft_model = DraftModel(draft, settings.slots)
        return Speculation("draft", partial(model.drafter, draft_tokens=settings.draft_tokens), settings.speculate_max_streams)

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

    def prepare(self, request: GenerationRequest, prompt_param: str | None = None) -> FittedPrompt:
        """Validate `request` and fit its prompt into the context; a prompt that does not fit is
        blamed on `prompt_param` (what the client called the prompt)."""
        if not request.prompt_ids:
            raise RequestError("the prompt is empty: give at least one token", param="prompt")
        self._check_ids(request.prompt_ids, "prompt")
        self._check_ids(request.stop_token_ids, "stop_token_ids")
        request.sampling.validate(self.manifest.vocab_size)
        if request.prompt_logprobs is not None and not 0 <= request.prompt_logprobs <= MAX_TOP_LOGPROBS:
            raise RequestError(f"prompt_logprobs must be between 0 and {MAX_TOP_LOGPROBS} (got {request.prompt_logprobs})", param="logprobs")
        if request.max_tokens is not None and request.max_tokens < 0:
            raise RequestError(f"max_tokens must be 0 or more (got {request.max_tokens})", param="max_tokens")
        limit = self.settings.max_tokens_limit  # requests that name no limit stop there too
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
        fitted = fit_context(request.prompt_ids, request.max_tokens, context, request.context_policy, request.prompt_truncate_len, bos, param=prompt_param)
        if limit is not None and fitted.max_new_tokens > limit:  # no max_tokens given: the server's limit applies
            fitted = replace(fitted, max_new_tokens=limit)
        return fitted

    def generate(self, request: GenerationRequest, heartbeat_s: float | None = None, fitted: FittedPrompt | None = None) -> EventStream:
        """Stream the completion of `request` as Delta events, then one Finish.

        The request is validated (unless `fitted`, what `prepare` made of it, is given) and
        queued for a slot at once (RequestError, or QueueFullError when the engine is
        saturated, comes from this call), then run by the
        engine's scheduler beside whatever else is generating. Closing the stream early (a
        client went away) cancels it: its slot is free at the scheduler's next tick. With
        `heartbeat_s`, the stream yields KEEP_ALIVE whenever no event came for that long.
        """
        submitted = time.perf_counter_ns()
        if fitted is None:
            fitted = self.prepare(request)
        job = Job(
            SequenceState(request, fitted, self.eos_ids, self), submitted, timeout_s=self.settings.request_timeout_s,
            background=request.priority == PRIORITY_BACKGROUND,
        )  # fmt: skip
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
