"""Opening a model source for export (the export's heavy half).

`open_decoder_source` reads what a decoder export needs without loading the model: the
config, the fast tokenizer, the special tokens, a weightless skeleton of the transformers
model (on the meta device: its module classes and names, for the layer-streamed reference)
and a tensor source (export/tensors.py) that hands out the weights a tensor at a time. The
graph builder and the reference both read that one source, so an engine is always compared
with exactly the weights it was built from.

`load_decoder` loads the whole model in fp32 for the optimum fallback, which exports from a
PyTorch module.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from export.errors import CorruptSourceError, UnsupportedModelError
from export.sources import ModelSource
from export.tensors import CheckpointTensors, GGUFTensors, TensorSource


@dataclass
class DecoderText:
    """A decoder's fast tokenizer, special tokens, chat template and trained context."""

    tokenizer: Any
    bos_token_id: int | None
    eos_token_ids: tuple[int, ...]
    pad_token_id: int | None
    chat_template: str | None
    model_context_length: int


@dataclass
class LoadedDecoder(DecoderText):
    """A causal LM loaded whole in fp32 and eval mode (optimum's fallback), with its text side."""

    model: Any


def quiet_libraries() -> None:
    """Keep transformers' and optimum's own bars and warnings out of our one-line-per-step output."""
    import transformers

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    # The GGUF loader draws its own tqdm bar, outside transformers' switch above.
    from transformers import modeling_gguf_pytorch_utils as gguf_utils

    if hasattr(gguf_utils, "tqdm") and not isinstance(gguf_utils.tqdm, functools.partial):
        gguf_utils.tqdm = functools.partial(gguf_utils.tqdm, disable=True)
    try:
        from optimum.utils import logging as optimum_logging

        optimum_logging.set_verbosity_error()
    except ImportError:  # optimum is only needed for the fallback and encoder paths
        pass


@dataclass
class DecoderSource(DecoderText):
    """A decoder's config and text side, with its weights left in the source."""

    config: Any
    skeleton: Any  # the transformers model on the meta device: classes and names, no weights
    tensors: TensorSource

    @property
    def architecture(self) -> str:
        return type(self.skeleton).__name__


@contextmanager
def _reading(source: ModelSource) -> Iterator[None]:
    """transformers' errors while reading `source`, as the one-line export errors they mean."""
    try:
        yield
    except ValueError as exc:  # transformers' way of saying "unknown architecture"
        raise UnsupportedModelError(f"{source.path}: transformers cannot load this model ({_first_line(exc)})") from exc
    except (OSError, KeyError, RuntimeError) as exc:
        raise CorruptSourceError(f"{source.path}: cannot be loaded ({_first_line(exc)}); check or re-download the model") from exc


def read_decoder_config(source: ModelSource) -> Any:
    """The transformers config of a .gguf file or a HF folder (seconds: no weights, no tokenizer)."""
    from transformers import AutoConfig

    quiet_libraries()
    where, extra = _where(source)
    with _reading(source):
        return AutoConfig.from_pretrained(where, **extra)


def open_decoder_source(source: ModelSource, config: Any) -> DecoderSource:
    """Tokenizer, special tokens and a tensor source for a .gguf file or a HF folder whose config
    read_decoder_config gave; no weights loaded."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    quiet_libraries()
    where, extra = _where(source)
    with _reading(source):
        tokenizer = AutoTokenizer.from_pretrained(where, **extra)
        with torch.device("meta"):
            # transformers' SDPA path ignores Gemma 2's attention soft-capping: its eager path is the model.
            eager = {"attn_implementation": "eager"} if getattr(config, "attn_logit_softcapping", None) else {}
            skeleton = AutoModelForCausalLM.from_config(config, **eager)
    if not getattr(tokenizer, "is_fast", False):
        raise UnsupportedModelError(f"{source.path}: no fast (tokenizer.json) tokenizer, which the runtime needs")
    tensors: TensorSource = GGUFTensors(source.path, skeleton) if source.kind == "gguf" else CheckpointTensors(source.path)
    try:
        generation = GenerationConfig.from_pretrained(where) if source.kind == "hf" and (source.path / "generation_config.json").is_file() else None
    except (OSError, ValueError):
        generation = None
    generation = generation or GenerationConfig.from_model_config(config)
    return DecoderSource(**vars(_text_side(source, config, generation, tokenizer)), config=config, skeleton=skeleton, tensors=tensors)


def _text_side(source: ModelSource, config: Any, generation: Any, tokenizer: Any) -> DecoderText:
    bos, eos, pad = _special_tokens(source, config, generation, tokenizer)
    context = int(getattr(config, "max_position_embeddings", 0) or 0)
    return DecoderText(tokenizer, bos, eos, pad, _chat_template(tokenizer), context)


def _where(source: ModelSource) -> tuple[str, dict[str, str]]:
    if source.kind == "gguf":
        return str(source.path.parent), {"gguf_file": source.path.name}
    return str(source.path), {}


def _chat_template(tokenizer: Any) -> str | None:
    template = tokenizer.chat_template
    if isinstance(template, dict):  # several named templates: the default one serves chat
        template = template.get("default") or next(iter(template.values()), None)
    return template


def load_decoder(source: ModelSource) -> LoadedDecoder:
    """Load a .gguf file or a HF folder as an fp32 causal LM."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    quiet_libraries()
    where, extra = _where(source)
    with _reading(source):
        tokenizer = AutoTokenizer.from_pretrained(where, **extra)
        model = AutoModelForCausalLM.from_pretrained(where, dtype=torch.float32, **extra)
    if not getattr(tokenizer, "is_fast", False):
        raise UnsupportedModelError(f"{source.path}: no fast (tokenizer.json) tokenizer, which the runtime needs")
    model.eval()
    return LoadedDecoder(**vars(_text_side(source, model.config, getattr(model, "generation_config", None), tokenizer)), model=model)


def _special_tokens(source: ModelSource, config: Any, generation: Any, tokenizer: Any) -> tuple[int | None, tuple[int, ...], int | None]:
    """bos, eos ids and pad, trusting the GGUF header first, then config and generation config.

    (transformers' GGUF tokenizer conversion can get eos wrong: for SmolLM2 it reports
    <|im_start|> while the header and config say <|im_end|>.)
    """
    meta = source.gguf

    def first(*values: Any) -> Any:
        return next((v for v in values if v is not None), None)

    bos = first(meta.get("tokenizer.ggml.bos_token_id"), config.bos_token_id, tokenizer.bos_token_id)
    eos: list[int] = []
    for value in (meta.get("tokenizer.ggml.eos_token_id"), config.eos_token_id, getattr(generation, "eos_token_id", None)):
        for token in value if isinstance(value, (list, tuple)) else [value]:
            if token is not None and int(token) not in eos:
                eos.append(int(token))
    if not eos and tokenizer.eos_token_id is not None:
        eos.append(int(tokenizer.eos_token_id))
    pad = first(meta.get("tokenizer.ggml.padding_token_id"), config.pad_token_id, tokenizer.pad_token_id)
    return (int(bos) if bos is not None else None), tuple(eos), (int(pad) if pad is not None else None)


def save_tokenizer(tokenizer: Any, path: Path) -> tuple[str, ...]:
    """Write the fast tokenizer as tokenizer.json, as transformers runs it; the changes made, if any.

    The one change is `normalise_decoder`'s, made only when every token decodes the same after it.
    """
    tokenizer.backend_tokenizer.save(str(path))
    config = json.loads(path.read_text())
    change = normalise_decoder(config)
    if change is None:
        return ()
    path.write_text(json.dumps(config, ensure_ascii=False, indent=2))
    return (change,)


# Decoder steps that change nothing in a byte-level vocabulary: it has no <0xNN> pieces (ByteFallback)
# and no "▁" (Replace, Strip of SentencePiece's marker), and Fuse only joins the pieces.
_INERT_BESIDE_BYTE_LEVEL = {"ByteFallback", "Fuse", "Replace", "Strip"}


def normalise_decoder(config: dict[str, Any]) -> str | None:
    """Give a byte-level tokenizer a plain ByteLevel decoder, in `config` (tokenizer.json), if it decodes the same.

    GGUF-converted tokenizers carry a SentencePiece-style `Sequence` decoder around their
    ByteLevel step. transformers decodes the same through it, but llguidance (constrained
    decoding) reads such a vocabulary wrongly and then rejects space and newline tokens in
    JSON. Returns what was changed (for the manifest), or None when nothing was. The change
    is kept only if every token, and a few mixed texts, decode to the same string after it.
    """
    from tokenizers import Tokenizer

    decoder = config.get("decoder") or {}
    pre_tokenizer = json.dumps(config.get("pre_tokenizer"))
    if decoder.get("type") != "Sequence" or '"ByteLevel"' not in pre_tokenizer:
        return None
    steps = [step.get("type") for step in decoder.get("decoders", [])]
    byte_level = [step for step in decoder.get("decoders", []) if step.get("type") == "ByteLevel"]
    if len(byte_level) != 1 or not set(steps) - {"ByteLevel"} <= _INERT_BESIDE_BYTE_LEVEL:
        return None
    before = Tokenizer.from_str(json.dumps(config))
    changed = dict(config, decoder=byte_level[0])
    after = Tokenizer.from_str(json.dumps(changed))
    samples = [[i] for i in range(before.get_vocab_size())]
    samples += [before.encode(text).ids for text in ("Hello, wörld!\n  {\"a\": [1, 2]}", "▁ <0x41> ça va? 日本語 🙂\t end")]
    for ids in samples:
        for skip in (True, False):
            if before.decode(ids, skip_special_tokens=skip) != after.decode(ids, skip_special_tokens=skip):
                return None
    config["decoder"] = byte_level[0]
    return f"decoder Sequence({', '.join(steps)}) replaced by its ByteLevel step: every token decodes the same, and llguidance reads it"


def read_sentence_transformers_config(folder: Path) -> dict[str, Any]:
    """Pooling, normalisation and max length from a sentence-transformers folder (or {})."""
    result: dict[str, Any] = {}
    modules_path = folder / "modules.json"
    if not modules_path.is_file():
        return result
    modules = json.loads(modules_path.read_text())
    for module in modules:
        kind = module.get("type", "")
        if kind.endswith("Pooling"):
            pooling = json.loads((folder / module["path"] / "config.json").read_text())
            result["pooling"] = _pooling_mode(pooling)
            result["dimension"] = int(pooling.get("word_embedding_dimension", 0))
        elif kind.endswith("Normalize"):
            result["normalize"] = True
    st_config = folder / "sentence_bert_config.json"
    if st_config.is_file():
        result["max_seq_length"] = int(json.loads(st_config.read_text()).get("max_seq_length", 0) or 0)
    return result


def _pooling_mode(pooling: dict[str, Any]) -> str:
    modes = {"pooling_mode_mean_tokens": "mean", "pooling_mode_cls_token": "cls", "pooling_mode_max_tokens": "max", "pooling_mode_lasttoken": "last"}
    chosen = [mode for key, mode in modes.items() if pooling.get(key)]
    if len(chosen) != 1:
        raise UnsupportedModelError(f"pooling {pooling} combines several modes (or none); only one of mean, cls, max, last is supported")
    return chosen[0]


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__
