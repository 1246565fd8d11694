"""Fake engines with the runtime's interface, for testing the HTTP layer without ONNX Runtime.

`FakeGenerator` answers every prompt with the same scripted tokens (one Delta per token,
then a Finish with fixed durations), so stream transcripts are byte-exact. It validates
requests with the runtime's own `fit_context` and `SamplingParams.validate`, as the real
generator does.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from api.models.registry import LoadedModel, ModelInfo
from runtime.chat import normalise_messages
from runtime.embeddings import BatchStats, EmbeddingResult
from runtime.errors import ContextLengthError, InferenceError
from runtime.events import FINISH_LENGTH, FINISH_STOP, KEEP_ALIVE, Delta, Finish, KeepAlive, PromptLogprobs, TokenChoice, TokenLogprobs, Usage
from runtime.job import SchedulerStats
from runtime.manifest import TASK_EMBEDDING, TASK_TEXT_GENERATION
from runtime.request import FittedPrompt, GenerationRequest, fit_context

REPLY = ("Hello", ",", " wor", "ld", " – ", "ça", " va", "?")
EOS = 0


class FakeGenerator:
    """Text 'model' whose vocabulary is the reply's pieces plus one id per character of prompts."""

    def __init__(self, context_length: int = 64, reply: Sequence[str] = REPLY, fail_after: int | None = None, stalls: int = 0, chat_template_source: str | None = "{{ messages }}") -> None:
        self.context_length = context_length
        # Heartbeat intervals that pass before the first token (as if queued), for streams that ask for them.
        self.stalls = stalls
        self.reply = tuple(reply)
        self.fail_after = fail_after
        self.has_chat_template = True
        # A template source with "<tool_call>" makes the API use the Hermes tool format.
        self.chat_template_source: str | None = chat_template_source
        self.requests: list[GenerationRequest] = []
        self.closed = 0
        # Fill-in-the-middle tokens (prefix, suffix, middle); None: the 'model' has none.
        self.fim_token_ids: tuple[int, int, int] | None = None

    # text in and out: one token per character, id = code point + 100 (ids 1..len(reply) are the reply's)
    def tokenize(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return ([1000] if add_special_tokens else []) + [ord(c) + 100 for c in text]

    def detokenize(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str:
        return "".join(self._piece(i) for i in ids if i != 1000)

    def _piece(self, token_id: int) -> str:
        return self.reply[token_id - 1] if 1 <= token_id <= len(self.reply) else chr(token_id - 100)

    def chat_prompt_ids(self, messages: Sequence[Any], tools: Any = None) -> list[int]:
        # Tools the template is given, and calls in the history, are written out as JSON (as a tool-aware template would).
        head = f"<tools>{json.dumps(list(tools))}</tools>" if tools else ""
        text = head + "".join(f"<{m['role']}>{m['content']}" + (json.dumps(m["tool_calls"]) if m.get("tool_calls") else "") for m in normalise_messages(messages)) + "<assistant>"
        return self.tokenize(text, add_special_tokens=False)

    def prepare(self, request: GenerationRequest, prompt_param: str | None = None) -> FittedPrompt:
        request.sampling.validate(100_000)
        if request.grammar is not None:
            request.grammar.check()  # as the real engine compiles it: a GrammarError is a 400
        context = min(self.context_length, request.context_length or self.context_length)
        return fit_context(request.prompt_ids, request.max_tokens, context, request.context_policy, request.prompt_truncate_len, param=prompt_param)

    def generate(self, request: GenerationRequest, heartbeat_s: float | None = None, fitted: FittedPrompt | None = None) -> Iterator[Delta | Finish | KeepAlive]:
        fitted = fitted or self.prepare(request)
        self.requests.append(request)
        try:
            if heartbeat_s is not None:
                for _ in range(self.stalls):
                    yield KEEP_ALIVE
            if request.prompt_logprobs is not None:
                # Prompt token i (after the first) gets log-probability -i/10, its alternatives less.
                rest = tuple(
                    TokenLogprobs(self._choice(t, -i / 10), tuple(self._choice(t + j, -i / 10 - j) for j in range(request.prompt_logprobs)))
                    for i, t in enumerate(fitted.ids[1:], 1)
                )
                yield Delta("", (), prompt_logprobs=PromptLogprobs(fitted.ids[0], self._piece(fitted.ids[0]) if fitted.ids[0] != 1000 else "<s>", rest))
            text_so_far, reason, count = "", FINISH_STOP, 0
            for index, piece in enumerate(self.reply):
                if count >= fitted.max_new_tokens:
                    reason = FINISH_LENGTH
                    break
                if self.fail_after is not None and index == self.fail_after:
                    raise InferenceError("the fake engine failed on purpose")
                token = index + 1
                count += 1
                logprobs = ()
                if request.sampling.logprobs:
                    chosen = TokenChoice(token, piece, piece.encode(), -0.5)
                    top = tuple(TokenChoice(t, self._piece(t), self._piece(t).encode(), -0.5 - i) for i, t in enumerate((token, EOS + 100)))
                    logprobs = (TokenLogprobs(chosen, top[: request.sampling.top_logprobs]),)
                stop = next((s for s in request.stop if s in text_so_far + piece), None)
                if stop is not None:
                    cut = (text_so_far + piece).index(stop)
                    yield Delta((text_so_far + piece)[len(text_so_far) : cut] if cut > len(text_so_far) else "", (token,), logprobs)
                    yield self._finish(fitted, count, FINISH_STOP, stop_sequence=stop, seed=request.sampling.seed)
                    return
                text_so_far += piece
                yield Delta(piece, (token,), logprobs)
            else:
                reason = FINISH_STOP
            yield self._finish(fitted, count, reason, seed=request.sampling.seed)
        finally:
            self.closed += 1

    def _choice(self, token: int, logprob: float) -> TokenChoice:
        piece = self._piece(token) if token != 1000 else "<s>"
        return TokenChoice(token, piece, piece.encode(), logprob)

    def stats(self) -> SchedulerStats:
        return SchedulerStats(slots=1, active=0, waiting=0, steps=0, tokens=0)

    @staticmethod
    def _finish(fitted: FittedPrompt, count: int, reason: str, **extra: Any) -> Finish:
        usage = Usage(len(fitted.ids), count, 1_000, 2_000_000, 3_000_000 * max(count, 1), 5_000_000 + 3_000_000 * max(count, 1), fitted.dropped)
        return Finish(reason, usage, **extra)


class FakeEmbedder:
    """Deterministic 4-dimensional unit vectors from each text's hash; 8 tokens at most."""

    dimension = 4
    max_tokens = 8
    batch_stats = BatchStats()

    def token_ids(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return [ord(c) for c in text]

    def decode(self, ids: Sequence[int]) -> str:
        return "".join(chr(i) for i in ids)

    def encode(self, texts: Sequence[str], truncate: bool = True) -> EmbeddingResult:
        return self.encode_ids([[ord(c) for c in t] or [0] for t in texts], truncate)

    def encode_ids(self, inputs: Sequence[Sequence[int]], truncate: bool = False) -> EmbeddingResult:
        vectors, counts = [], []
        for index, ids in enumerate(inputs):
            if len(ids) > self.max_tokens and not truncate:
                raise ContextLengthError(f"input {index} has {len(ids)} tokens but the fake accepts at most {self.max_tokens}")
            ids = list(ids)[: self.max_tokens]
            digest = hashlib.sha256(bytes(str(ids), "utf-8")).digest()
            vector = np.frombuffer(digest[:16], dtype=np.uint32).astype(np.float32)
            vectors.append(vector / np.linalg.norm(vector))
            counts.append(len(ids))
        return EmbeddingResult(np.stack(vectors), tuple(counts))


def info(name: str, task: str = TASK_TEXT_GENERATION, context_length: int = 64) -> ModelInfo:
    return ModelInfo(
        name=name,
        task=task,
        created=1_700_000_000,
        size_bytes=1234,
        digest="ab" * 32,
        family="fake",
        architecture="FakeForCausalLM" if task == TASK_TEXT_GENERATION else "FakeModel",
        precision="fp32",
        providers=("CPUExecutionProvider",),
        context_length=context_length,
        parameter_count=135_000_000,
        chat_template="{{ messages }}" if task == TASK_TEXT_GENERATION else None,
        embedding_dimension=FakeEmbedder.dimension if task == TASK_EMBEDDING else None,
    )


def fake_models(generator: FakeGenerator | None = None) -> list[LoadedModel]:
    return [
        LoadedModel(info("fake-chat"), generator=generator or FakeGenerator()),
        LoadedModel(info("fake-embed", TASK_EMBEDDING, 8), embedder=FakeEmbedder()),
    ]
