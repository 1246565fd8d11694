"""Parity: run the engine under ONNX Runtime against the PyTorch model it came from.

Decoders, in three passes so that the engine and the reference are never in memory together
(export/reference.py computes the reference a layer at a time):

1. `run_engine`: the engine greedy-decodes a fixed number of tokens for each fixed prompt
   (EOS ignored) and, for quantized engines, reads the reference passages; its logits go to
   scratch files and the engine is closed.
2. the reference reads each prompt followed by the engine's tokens, and each passage.
3. `compare_decoder`: whether the greedy tokens are identical (the reference ranks each of the
   engine's tokens first), where they first differ, and the largest logit errors over the
   prompt positions and the decode steps fed identical tokens; the relative error is
   max |ONNX − PyTorch| divided by the largest |PyTorch logit| of those positions.
   `compare_quantized`: teacher-forced top-1 agreement and KL over the passages.

Encoders: sentence vectors from our runtime (pooling as the manifest says) against
sentence-transformers' (or transformers + the same pooling when the folder is not a
sentence-transformers model), compared by cosine similarity.

Both also check that the runtime's tokenizer (tokenizers + tokenizer.json) produces the
very ids transformers produces.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from export.prompts import DECODER_PROMPTS, EMBEDDING_SENTENCES, ParityPrompt
from export.reference import Reference
from runtime.engine import load_engine
from runtime.settings import RuntimeSettings

COSINE_BAR = 0.9999
# The bar for a quantized encoder (int8 blocks of 32 reach ~0.9996 on all-MiniLM-L6-v2; int4 ~0.89).
QUANTIZED_COSINE_BAR = 0.999


def render_prompt(tokenizer: Any, prompt: ParityPrompt) -> list[int]:
    """Token ids of `prompt` as transformers produces them (chat template when the model has one)."""
    if prompt.chat and tokenizer.chat_template:
        ids = tokenizer.apply_chat_template([{"role": "user", "content": prompt.text}], add_generation_prompt=True, tokenize=True)
        if isinstance(ids, dict) or hasattr(ids, "input_ids"):
            ids = ids["input_ids"]
        return [int(i) for i in ids]
    return [int(i) for i in tokenizer(prompt.text)["input_ids"]]


def runtime_ids(engine_tokenizer: Any, hf_tokenizer: Any, prompt: ParityPrompt) -> list[int]:
    """The ids our runtime gets for `prompt`: the template rendered to text, then tokenizers."""
    if prompt.chat and hf_tokenizer.chat_template:
        text = hf_tokenizer.apply_chat_template([{"role": "user", "content": prompt.text}], add_generation_prompt=True, tokenize=False)
        return engine_tokenizer.encode(text, add_special_tokens=False).ids
    return engine_tokenizer.encode(prompt.text).ids


def torch_greedy(model: Any, ids: Sequence[int], new_tokens: int) -> tuple[list[int], np.ndarray, np.ndarray]:
    """Greedy tokens, prompt logits [S, V] and decode-step logits [new_tokens - 1, V] from PyTorch."""
    import torch

    with torch.inference_mode():
        out = model(input_ids=torch.tensor([list(ids)]), use_cache=True)
        prompt_logits = out.logits[0].float().numpy()
        past, token = out.past_key_values, int(prompt_logits[-1].argmax())
        tokens, steps = [token], []
        for _ in range(new_tokens - 1):
            out = model(input_ids=torch.tensor([[token]]), past_key_values=past, use_cache=True)
            logits = out.logits[0, -1].float().numpy()
            past, token = out.past_key_values, int(logits.argmax())
            steps.append(logits)
            tokens.append(token)
    return tokens, prompt_logits, np.stack(steps) if steps else np.zeros((0, prompt_logits.shape[1]), np.float32)


def engine_greedy(
    decoder: Any, ids: Sequence[int], new_tokens: int, chunk: int | None = None, keep: Callable[[np.ndarray], None] | None = None
) -> tuple[list[int], np.ndarray, np.ndarray]:
    """Greedy tokens, prompt logits and decode-step logits from the engine (slot 0).

    With `chunk`, a longer prompt is read in chunks of that many positions, as the scheduler
    reads long prompts, so ONNX Runtime never holds more than a chunk's [positions, vocabulary].
    With `keep`, each chunk's logits go to it as they come and the prompt logits returned are
    empty: the whole prompt's are never in memory at once.
    """
    decoder.reset(0)
    ids = list(ids)
    step = len(ids) if chunk is None or len(ids) <= chunk else chunk
    parts = []
    for i in range(0, len(ids), step):
        part = decoder.prefill(0, ids[i : i + step], logits_to_keep=len(ids[i : i + step]))
        last = part[-1]
        if keep is not None:
            keep(part)
        else:
            parts.append(part)
        del part
    prompt_logits = np.concatenate(parts) if parts else np.zeros((0, last.shape[0]), np.float32)
    token = int(last.argmax())
    tokens, steps = [token], []
    for _ in range(new_tokens - 1):
        logits = decoder.decode([0], [token])[0]
        token = int(logits.argmax())
        steps.append(logits)
        tokens.append(token)
    return tokens, prompt_logits, np.stack(steps) if steps else np.zeros((0, last.shape[0]), np.float32)


def _errors(pairs: Iterable[tuple[np.ndarray, np.ndarray]]) -> tuple[float, float]:
    """Largest |ours − ref| over (ours, ref) pairs of rows, and that over the largest |ref|, a few
    rows at a time (no full-size temporaries)."""
    abs_err, largest = 0.0, 0.0
    for ours, ref in pairs:
        for start in range(0, len(ref), ROWS_AT_ONCE):
            rows = slice(start, start + ROWS_AT_ONCE)
            abs_err = max(abs_err, float(np.abs(ours[rows] - ref[rows]).max()))
            largest = max(largest, float(np.abs(ref[rows]).max()))
    return abs_err, abs_err / max(largest, 1e-12)


# Prompts longer than this are read in chunks of it (memory: a chunk's logits, not the prompt's).
PROMPT_CHUNK = 256
# Logit rows compared at once: keeps the comparison's temporaries small at any vocabulary size.
ROWS_AT_ONCE = 64


@dataclass
class EngineRun:
    """What the engine produced, its logits kept on disk (`scratch`) rather than in memory."""

    scratch: Path
    providers: list[str]
    new_tokens: int
    prompts: list[dict[str, Any]] = field(default_factory=list)  # name, ids, tokens, cut, tokenizer_identical
    passages: list[tuple[str, list[int]]] = field(default_factory=list)

    def sequences(self) -> list[list[int]]:
        """What the reference reads: each prompt followed by the engine's greedy tokens (but the
        last), then each reference passage."""
        return [p["ids"] + p["tokens"][:-1] for p in self.prompts] + [ids for _, ids in self.passages]

    def forward_ends(self) -> list[list[int]]:
        """For each of sequences(): where each of the engine's forwards over it ended (the prompt's
        chunks, then one per decode step). LongRoPE picks its factors by that length."""
        ends = []
        for index, p in enumerate(self.prompts):
            chunk_ends = np.cumsum([len(rows) for rows in self.prompt_chunks(index)]).tolist()
            ends.append(chunk_ends + list(range(len(p["ids"]) + 1, len(p["ids"]) + len(p["tokens"]))))
        return ends + [[len(ids)] for _, ids in self.passages]

    def logits(self, kind: str, index: int) -> np.ndarray:
        """The engine's logits: kind "steps" (a prompt's decode steps) or "passage"."""
        return np.load(self.scratch / f"{kind}-{index}.npy", mmap_mode="r")

    def prompt_chunks(self, index: int) -> list[np.ndarray]:
        """The logits of prompt `index`'s positions, chunk by chunk as the engine read them."""
        return [np.load(path, mmap_mode="r") for path in self.prompts[index]["chunks"]]


def run_engine(
    engine_dir: Path,
    hf_tokenizer: Any,
    scratch: Path,
    new_tokens: int = 64,
    prompts: Sequence[ParityPrompt] = DECODER_PROMPTS,
    passages: bool = False,
    on_item: Callable[[str], None] = lambda name: None,
    settings: RuntimeSettings = RuntimeSettings(),
) -> EngineRun:
    """Greedy-decode every parity prompt with the engine and, with `passages`, read every reference
    passage in one prefill; the logits go to files in `scratch`, and the engine is closed after."""
    from runtime.decoder import open_decoder

    engine = load_engine(engine_dir, dataclasses.replace(settings, cpu_arena=False))  # a lower peak: runtime/settings.py
    decoder = open_decoder(engine, slots=1)
    # An engine exported with a short --max-context still gets every prompt: a prompt that
    # would not fit with its greedy tokens is cut to its beginning (and recorded as such).
    new_tokens = min(new_tokens, decoder.max_length // 2)
    room = decoder.max_length - new_tokens
    run = EngineRun(scratch, list(engine.providers), new_tokens)
    for index, prompt in enumerate(prompts):
        ids = render_prompt(hf_tokenizer, prompt)
        ours_ids = runtime_ids(engine.tokenizer, hf_tokenizer, prompt)
        kept = ids[:room]
        record: dict[str, Any] = {"name": prompt.name, "cut": len(ids) > room, "tokenizer_identical": ours_ids == ids, "ids": kept}
        chunks: list[Path] = []

        def keep(rows: np.ndarray, index: int = index, chunks: list[Path] = chunks) -> None:
            chunks.append(scratch / f"prompt-{index}-{len(chunks)}.npy")
            np.save(chunks[-1], rows)

        tokens, _, steps = engine_greedy(decoder, kept, new_tokens, PROMPT_CHUNK, keep)
        np.save(scratch / f"steps-{index}.npy", steps)
        del steps
        run.prompts.append(record | {"tokens": tokens, "chunks": chunks})
        on_item(prompt.name)
    if passages:
        for index, (name, ids) in enumerate(reference_sequences(hf_tokenizer)):
            ids = ids[: decoder.max_length]
            decoder.reset(0)
            np.save(scratch / f"passage-{index}.npy", decoder.prefill(0, ids, logits_to_keep=len(ids)))
            run.passages.append((name, ids))
            on_item(name)
    return run


def compare_decoder(run: EngineRun, reference: Reference, hf_tokenizer: Any) -> dict[str, Any]:
    """The parity record: the engine's greedy tokens and logits against the reference's.

    Greedy tokens: the reference, fed the prompt and the engine's tokens, must rank each of the
    engine's tokens first at the step that produced it; the first step where it does not is the
    divergence (its own greedy decode would go elsewhere from there). Logit errors cover the
    prompt positions and the decode steps up to the divergence, where both read the same tokens.
    """
    records = []
    for index, prompt in enumerate(run.prompts):
        ids, tokens = prompt["ids"], prompt["tokens"]
        ref = reference.logits(index)
        prompt_len = len(ids)
        ref_next = ref[prompt_len - 1 :].argmax(axis=1)  # the reference's choice at each of the engine's steps
        diverged = next((i for i, (a, b) in enumerate(zip(tokens, ref_next)) if a != b), None)
        comparable = (len(tokens) - 1) if diverged is None else diverged  # step i's logits follow token i
        chunks = run.prompt_chunks(index)
        starts = np.cumsum([0] + [len(rows) for rows in chunks])
        prompt_abs, prompt_rel = _errors((rows, ref[start : start + len(rows)]) for rows, start in zip(chunks, starts))
        step_abs, step_rel = _errors([(run.logits("steps", index)[:comparable], ref[prompt_len : prompt_len + comparable])])
        del ref
        records.append(
            {
                "name": prompt["name"],
                "prompt_tokens": prompt_len,
                "prompt_cut_to_fit_context": prompt["cut"],
                "tokenizer_identical": prompt["tokenizer_identical"],
                "greedy_tokens": len(tokens),
                "greedy_identical": diverged is None,
                "first_divergence": diverged,
                "max_abs_logit_error": max(prompt_abs, step_abs),
                "max_rel_logit_error": max(prompt_rel, step_rel),
                "engine_text": hf_tokenizer.decode(tokens),
            }
        )
    return {
        "kind": "decoder-vs-pytorch",
        "reference": reference.description,
        "providers": run.providers,
        "greedy_tokens_per_prompt": run.new_tokens,
        "greedy_identical": all(r["greedy_identical"] for r in records),
        "tokenizer_identical": all(r["tokenizer_identical"] for r in records),
        "max_abs_logit_error": max(r["max_abs_logit_error"] for r in records),
        "max_rel_logit_error": max(r["max_rel_logit_error"] for r in records),
        "longest_prompt_tokens": max(r["prompt_tokens"] for r in records),
        "prompts": records,
    }


def reference_embeddings(model_folder: Path, pooling: str, normalize: bool, max_tokens: int, sentences: Sequence[str]) -> np.ndarray:
    """Sentence vectors from PyTorch: sentence-transformers when the folder is one."""
    import torch

    if (model_folder / "modules.json").is_file():
        from sentence_transformers import SentenceTransformer

        st = SentenceTransformer(str(model_folder), device="cpu", local_files_only=True)
        return np.asarray(st.encode(list(sentences), convert_to_numpy=True, normalize_embeddings=False), dtype=np.float32)
    from transformers import AutoModel, AutoTokenizer

    from runtime.embeddings import l2_normalize, pool

    tokenizer = AutoTokenizer.from_pretrained(str(model_folder))
    model = AutoModel.from_pretrained(str(model_folder), dtype=torch.float32).eval()
    batch = tokenizer(list(sentences), padding=True, truncation=True, max_length=max_tokens, return_tensors="pt")
    with torch.inference_mode():
        hidden = model(**batch).last_hidden_state.float().numpy()
    vectors = pool(hidden, batch["attention_mask"].numpy(), pooling)
    return l2_normalize(vectors) if normalize else vectors


def encoder_parity(
    model_folder: Path, engine_dir: Path, sentences: Sequence[str] = EMBEDDING_SENTENCES, cosine_bar: float = COSINE_BAR
) -> dict[str, Any]:
    """Compare the embedding engine in `engine_dir` with the PyTorch model in `model_folder`."""
    from runtime.embeddings import Embedder

    engine = load_engine(engine_dir, RuntimeSettings())
    embedder = Embedder(engine)
    spec = embedder.spec
    ours = embedder.encode(list(sentences), truncate=True)
    ref = reference_embeddings(model_folder, spec.pooling, spec.normalize, spec.max_input_tokens, sentences)
    cosines = (ours.vectors * ref).sum(axis=1) / (np.linalg.norm(ours.vectors, axis=1) * np.linalg.norm(ref, axis=1) + 1e-12)
    return {
        "kind": "encoder-vs-pytorch",
        "reference": "sentence-transformers" if (model_folder / "modules.json").is_file() else "transformers + manifest pooling",
        "sentences": len(sentences),
        "min_cosine": float(cosines.min()),
        "cosines": [float(c) for c in cosines],
        "max_abs_error": float(np.abs(ours.vectors - ref).max()),
        "token_counts": list(ours.token_counts),
        "cosine_bar": cosine_bar,
        "passed": bool(cosines.min() >= cosine_bar),
    }


def reference_sequences(hf_tokenizer: Any) -> list[tuple[str, list[int]]]:
    """The reference passages (export/reference_text.py) as token ids, as the runtime reads them."""
    from export.reference_text import REFERENCE_CONVERSATION, REFERENCE_PASSAGES

    sequences = [(name, [int(i) for i in hf_tokenizer(text)["input_ids"]]) for name, text in REFERENCE_PASSAGES]
    if hf_tokenizer.chat_template:
        ids = hf_tokenizer.apply_chat_template(list(REFERENCE_CONVERSATION), tokenize=True)
        if isinstance(ids, dict) or hasattr(ids, "input_ids"):
            ids = ids["input_ids"]
        sequences.append(("conversation", [int(i) for i in ids]))
    return sequences


def _log_softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits.astype(np.float64) - logits.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


def compare_quantized(run: EngineRun, reference: Reference) -> dict[str, Any]:
    """Teacher-forced agreement of a quantized engine with the fp32 reference of the same model.

    Both read every reference passage with the logits of every position. Per position: do
    their most likely next tokens agree (top-1 agreement), and the KL divergence
    KL(fp32 ‖ quantized) of their next-token distributions. Each side's perplexity on the text
    itself is recorded too (a quantized engine that agrees less but predicts the text as well
    is a different story from one that got worse).
    """
    records, agree_total, kl_total, positions = [], 0, 0.0, 0
    nll = [0.0, 0.0]
    max_kl = 0.0
    for index, (name, ids) in enumerate(run.passages):
        ref_logits, our_logits = reference.logits(len(run.prompts) + index), run.logits("passage", index)
        targets = np.asarray(ids[1:])
        agree, kls = 0, []
        for start in range(0, len(ids), ROWS_AT_ONCE):  # float64 log-softmax a few rows at a time
            rows = slice(start, start + ROWS_AT_ONCE)
            ref, ours = _log_softmax(ref_logits[rows]), _log_softmax(our_logits[rows])
            agree += int((ref.argmax(axis=1) == ours.argmax(axis=1)).sum())
            kls.append((np.exp(ref) * (ref - ours)).sum(axis=1))
            wanted = targets[rows]
            for side, lp in enumerate((ref, ours)):
                nll[side] += float(-lp[np.arange(len(wanted)), wanted].sum())
        kl = np.concatenate(kls)
        records.append({"name": name, "tokens": len(ids), "top1_agreement": agree / len(ids), "mean_kl": float(kl.mean())})
        agree_total += agree
        kl_total += float(kl.sum())
        max_kl = max(max_kl, float(kl.max()))
        positions += len(ids)
    predicted = positions - len(records)  # the last position of each passage has no target
    return {
        "kind": "quantized-vs-fp32-reference",
        "reference": reference.description,
        "method": "teacher forcing over export/reference_text.py: every position of every passage",
        "positions": positions,
        "top1_agreement": agree_total / positions,
        "mean_kl": kl_total / positions,
        "max_kl": max_kl,
        "fp32_perplexity": float(np.exp(nll[0] / predicted)),
        "engine_perplexity": float(np.exp(nll[1] / predicted)),
        "passages": records,
    }
