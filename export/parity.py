"""Parity: run the engine under ONNX Runtime against the PyTorch model it came from.

Decoders: for each fixed prompt, both sides run the prompt and then greedy-decode a fixed
number of tokens (EOS ignored, so every prompt yields the full count). We record whether
the greedy tokens are identical, where they first differ, and the largest logit errors
over the prompt positions and over the decode steps fed identical tokens. The relative
error is max |ONNX − PyTorch| divided by the largest |PyTorch logit| of those positions.

Encoders: sentence vectors from our runtime (pooling as the manifest says) against
sentence-transformers' (or transformers + the same pooling when the folder is not a
sentence-transformers model), compared by cosine similarity.

Both also check that the runtime's tokenizer (tokenizers + tokenizer.json) produces the
very ids transformers produces.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from export.prompts import DECODER_PROMPTS, EMBEDDING_SENTENCES, ParityPrompt
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


def engine_greedy(decoder: Any, ids: Sequence[int], new_tokens: int) -> tuple[list[int], np.ndarray, np.ndarray]:
    """Greedy tokens, prompt logits and decode-step logits from the engine (slot 0).

    The engine follows its own greedy path; while that path equals the reference's, its
    step logits are comparable with the reference's, which is all the caller uses.
    """
    decoder.reset(0)
    prompt_logits = decoder.prefill(0, list(ids), logits_to_keep=len(ids))
    token = int(prompt_logits[-1].argmax())
    tokens, steps = [token], []
    for _ in range(new_tokens - 1):
        logits = decoder.decode([0], [token])[0]
        token = int(logits.argmax())
        steps.append(logits)
        tokens.append(token)
    return tokens, prompt_logits, np.stack(steps) if steps else np.zeros((0, prompt_logits.shape[1]), np.float32)


def _errors(ours: np.ndarray, ref: np.ndarray) -> tuple[float, float]:
    if ours.size == 0:
        return 0.0, 0.0
    abs_err = float(np.abs(ours - ref).max())
    return abs_err, abs_err / max(float(np.abs(ref).max()), 1e-12)


def decoder_parity(
    model: Any,
    hf_tokenizer: Any,
    engine_dir: Path,
    new_tokens: int = 64,
    prompts: Sequence[ParityPrompt] = DECODER_PROMPTS,
    on_prompt: Callable[[str], None] = lambda name: None,
    settings: RuntimeSettings = RuntimeSettings(),
) -> dict[str, Any]:
    """Compare the engine in `engine_dir` with `model`; return the parity record."""
    from runtime.decoder import open_decoder

    engine = load_engine(engine_dir, settings)
    decoder = open_decoder(engine, slots=1)
    # An engine exported with a short --max-context still gets every prompt: a prompt that
    # would not fit with its greedy tokens is cut to its beginning (and recorded as such).
    new_tokens = min(new_tokens, decoder.max_length // 2)
    room = decoder.max_length - new_tokens
    records = []
    for prompt in prompts:
        ids = render_prompt(hf_tokenizer, prompt)
        ours_ids = runtime_ids(engine.tokenizer, hf_tokenizer, prompt)
        cut = len(ids) > room
        tokenizer_identical = ours_ids == ids
        ids = ids[:room]
        ref_tokens, ref_prompt, ref_steps = torch_greedy(model, ids, new_tokens)
        tokens, prompt_logits, steps = engine_greedy(decoder, ids, new_tokens)
        diverged = next((i for i, (a, b) in enumerate(zip(tokens, ref_tokens)) if a != b), None)
        # Step i's logits follow token i; they are comparable while tokens 0..i agree.
        comparable = (new_tokens - 1) if diverged is None else diverged
        prompt_abs, prompt_rel = _errors(prompt_logits, ref_prompt)
        step_abs, step_rel = _errors(steps[:comparable], ref_steps[:comparable])
        records.append(
            {
                "name": prompt.name,
                "prompt_tokens": len(ids),
                "prompt_cut_to_fit_context": cut,
                "tokenizer_identical": tokenizer_identical,
                "greedy_tokens": new_tokens,
                "greedy_identical": diverged is None,
                "first_divergence": diverged,
                "max_abs_logit_error": max(prompt_abs, step_abs),
                "max_rel_logit_error": max(prompt_rel, step_rel),
                "engine_text": hf_tokenizer.decode(tokens),
            }
        )
        on_prompt(prompt.name)
    return {
        "kind": "decoder-vs-pytorch",
        "reference": "transformers PyTorch model (fp32) loaded from the same source",
        "providers": engine.providers,
        "greedy_tokens_per_prompt": new_tokens,
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


def quantized_parity(
    reference_dir: Path,
    engine_dir: Path,
    hf_tokenizer: Any,
    on_passage: Callable[[str], None] = lambda name: None,
    engine_settings: RuntimeSettings = RuntimeSettings(),
) -> dict[str, Any]:
    """Teacher-forced agreement of a quantized engine with the fp32 engine of the same model.

    Both engines read every reference passage in one prefill that keeps the logits of every
    position. Per position: do their most likely next tokens agree (top-1 agreement), and
    the KL divergence KL(fp32 ‖ quantized) of their next-token distributions. Each engine's
    perplexity on the text itself is recorded too (a quantized engine that agrees less but
    predicts the text as well is a different story from one that got worse).
    """
    from runtime.decoder import open_decoder

    decoders = [open_decoder(load_engine(d, s), slots=1) for d, s in ((reference_dir, RuntimeSettings()), (engine_dir, engine_settings))]
    room = min(d.max_length for d in decoders)
    records, agree_total, kl_total, positions = [], 0, 0.0, 0
    nll = [0.0, 0.0]
    max_kl = 0.0
    for name, ids in reference_sequences(hf_tokenizer):
        ids = ids[:room]
        logprobs = []
        for decoder in decoders:
            decoder.reset(0)
            logprobs.append(_log_softmax(decoder.prefill(0, ids, logits_to_keep=len(ids))))
        ref, ours = logprobs
        agree = int((ref.argmax(axis=1) == ours.argmax(axis=1)).sum())
        kl = (np.exp(ref) * (ref - ours)).sum(axis=1)
        targets = np.asarray(ids[1:])
        for side, lp in enumerate(logprobs):
            nll[side] += float(-lp[np.arange(len(targets)), targets].sum())
        records.append({"name": name, "tokens": len(ids), "top1_agreement": agree / len(ids), "mean_kl": float(kl.mean())})
        agree_total += agree
        kl_total += float(kl.sum())
        max_kl = max(max_kl, float(kl.max()))
        positions += len(ids)
        on_passage(name)
    predicted = positions - len(records)  # the last position of each passage has no target
    return {
        "kind": "quantized-vs-fp32-engine",
        "method": "teacher forcing over export/reference_text.py: every position of every passage",
        "positions": positions,
        "top1_agreement": agree_total / positions,
        "mean_kl": kl_total / positions,
        "max_kl": max_kl,
        "fp32_perplexity": float(np.exp(nll[0] / predicted)),
        "engine_perplexity": float(np.exp(nll[1] / predicted)),
        "passages": records,
    }
