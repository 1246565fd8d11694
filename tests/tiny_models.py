"""Tiny synthetic models that build in seconds, so most tests need no download.

Each factory writes a complete Hugging Face model folder (config, safetensors weights,
fast tokenizer with a chat template) with fixed seeds. Weights are initialised with a large
standard deviation so that logits are far apart and greedy decoding has no near-ties that
could flip between PyTorch and ONNX Runtime.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from export.prompts import DECODER_PROMPTS, EMBEDDING_SENTENCES

CHATML = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
_CORPUS = [p.text for p in DECODER_PROMPTS] + list(EMBEDDING_SENTENCES) + [
    "The quick brown fox jumps over the lazy dog.",
    "Tiny models make tests fast; real models make them honest.",
]


# Fill-in-the-middle tokens, StarCoder's spelling (make_tiny_llama(fim=True)).
FIM_TOKENS = ["<fim_prefix>", "<fim_suffix>", "<fim_middle>"]


def _byte_bpe(vocab_size: int, extra_special: list[str] | None = None):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>", *(extra_special or [])],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tokenizer.train_from_iterator(_CORPUS * 4, trainer)
    return tokenizer


def _save_decoder_tokenizer(folder: Path, vocab_size: int, extra_special: list[str] | None = None) -> int:
    from transformers import PreTrainedTokenizerFast

    fast = PreTrainedTokenizerFast(
        tokenizer_object=_byte_bpe(vocab_size, extra_special),
        bos_token="<|im_start|>",
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        unk_token="<|endoftext|>",
        **({"additional_special_tokens": extra_special} if extra_special else {}),
    )
    fast.chat_template = CHATML
    fast.save_pretrained(folder)
    return len(fast)


def _init_weights(model, std: float) -> None:
    import torch

    generator = torch.Generator().manual_seed(1234)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "norm" in name.lower() or ".ln_" in name:
                param.copy_(1.0 + 0.1 * torch.randn(param.shape, generator=generator))
            else:
                param.copy_(std * torch.randn(param.shape, generator=generator))


def make_tiny_llama(folder: Path, *, model_type: str = "llama", tie: bool = True, fim: bool = False, **config: Any) -> Path:
    """A 2-layer llama (or qwen2, with q/k/v biases; qwen3, with q/k norms; granite) with 4 query
    and 2 KV heads of 16 dims; with `fim`, its vocabulary has the fill-in-the-middle tokens too
    (FIM_TOKENS). `config` adds or overrides the family's config fields."""
    from transformers import AutoConfig, AutoModelForCausalLM

    folder.mkdir(parents=True, exist_ok=True)
    vocab = _save_decoder_tokenizer(folder, 600, FIM_TOKENS if fim else None)
    fields: dict[str, Any] = {
        "vocab_size": vocab,
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "head_dim": 16,
        "max_position_embeddings": 4096,
        "rope_theta": 10000.0,
        "rms_norm_eps": 1e-6,
        "tie_word_embeddings": tie,
        "bos_token_id": 1,
        "eos_token_id": 2,
        "pad_token_id": 0,
    }
    family = AutoConfig.for_model(model_type, **{**fields, **config})
    model = AutoModelForCausalLM.from_config(family)
    _init_weights(model, 0.25)
    model.save_pretrained(folder)
    return folder


def make_tiny_gpt2(folder: Path) -> Path:
    """A 2-layer GPT-2: an architecture our GQA builder does not cover (optimum fallback)."""
    from transformers import GPT2Config, GPT2LMHeadModel

    folder.mkdir(parents=True, exist_ok=True)
    vocab = _save_decoder_tokenizer(folder, 600)
    config = GPT2Config(vocab_size=vocab, n_embd=64, n_layer=2, n_head=4, n_positions=4096, bos_token_id=1, eos_token_id=2)
    model = GPT2LMHeadModel(config)
    _init_weights(model, 0.25)
    model.save_pretrained(folder)
    return folder


def _save_wordpiece_tokenizer(folder: Path, **init: Any):
    """A lowercasing BERT WordPiece tokenizer trained on the test corpus, with BERT's pair template."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import BertTokenizerFast

    wordpiece = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    wordpiece.normalizer = normalizers.BertNormalizer(lowercase=True)
    wordpiece.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    wordpiece.decoder = decoders.WordPiece()
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    wordpiece.train_from_iterator(_CORPUS * 4, trainers.WordPieceTrainer(vocab_size=500, special_tokens=specials))
    wordpiece.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1", special_tokens=[("[CLS]", 2), ("[SEP]", 3)]
    )
    fast = BertTokenizerFast(
        tokenizer_object=wordpiece, unk_token="[UNK]", sep_token="[SEP]", pad_token="[PAD]", cls_token="[CLS]", mask_token="[MASK]", **init
    )
    fast.save_pretrained(folder)
    return fast


def make_tiny_sentence_encoder(folder: Path) -> Path:
    """A 2-layer BERT laid out as a sentence-transformers folder (mean pooling, normalised)."""
    from transformers import BertConfig, BertModel

    folder.mkdir(parents=True, exist_ok=True)
    fast = _save_wordpiece_tokenizer(folder)
    config = BertConfig(vocab_size=len(fast), hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, max_position_embeddings=128, pad_token_id=0)
    model = BertModel(config)
    _init_weights(model, 0.1)
    model.save_pretrained(folder)
    (folder / "modules.json").write_text(json.dumps([
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
        {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"},
    ]))  # fmt: skip
    (folder / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": 64, "do_lower_case": False}))
    (folder / "1_Pooling").mkdir(exist_ok=True)
    (folder / "1_Pooling" / "config.json").write_text(json.dumps({"word_embedding_dimension": 32, "pooling_mode_mean_tokens": True}))
    (folder / "2_Normalize").mkdir(exist_ok=True)
    return folder


def make_tiny_cross_encoder(folder: Path, *, layout: str = "sentence-transformers", activation: str | None = None, max_length: int = 48) -> Path:
    """A 2-layer BertForSequenceClassification with one label (a cross-encoder, as ms-marco-MiniLM is).

    `layout` "sentence-transformers" saves it through sentence-transformers' CrossEncoder (modules.json,
    config_sentence_transformers.json naming the activation); "legacy" is a plain transformers folder
    whose config.json names the activation the pre-v4 way (`sbert_ce_default_activation_function`), as
    the ms-marco cross-encoders on the Hub do. `activation` is a torch class path (None: CrossEncoder's
    default, sigmoid); `max_length` the pair length it was "trained" with (the tokenizer's model_max_length).
    """
    from transformers import BertConfig, BertForSequenceClassification

    folder.mkdir(parents=True, exist_ok=True)
    fast = _save_wordpiece_tokenizer(folder, model_max_length=max_length)
    config = BertConfig(
        vocab_size=len(fast), hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
        max_position_embeddings=128, pad_token_id=0, num_labels=1, architectures=["BertForSequenceClassification"],
    )  # fmt: skip
    if layout == "legacy" and activation is not None:
        config.sbert_ce_default_activation_function = activation
    model = BertForSequenceClassification(config)
    _init_weights(model, 0.1)
    model.save_pretrained(folder)
    if layout == "sentence-transformers":
        import torch
        from sentence_transformers import CrossEncoder
        from sentence_transformers.util import import_from_string

        function = import_from_string(activation)() if activation else torch.nn.Sigmoid()
        CrossEncoder(str(folder), local_files_only=True, activation_fn=function).save(str(folder))
    elif layout != "legacy":
        raise ValueError(f"unknown layout {layout!r}")
    return folder


def make_tiny_xlmr_cross_encoder(folder: Path, max_length: int = 40) -> Path:
    """A 2-layer XLMRobertaForSequenceClassification with one label, as bge-reranker is: RoBERTa's pair
    template (`<s> A </s></s> B </s>`), no token types, a plain transformers folder (sigmoid by default)."""
    from tokenizers import processors
    from transformers import PreTrainedTokenizerFast, XLMRobertaConfig, XLMRobertaForSequenceClassification

    folder.mkdir(parents=True, exist_ok=True)
    bpe = _byte_bpe(600, ["<s>", "</s>", "<pad>"])
    bos, eos = bpe.token_to_id("<s>"), bpe.token_to_id("</s>")
    bpe.post_processor = processors.RobertaProcessing(("</s>", eos), ("<s>", bos), trim_offsets=False)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=bpe, bos_token="<s>", eos_token="</s>", sep_token="</s>", cls_token="<s>", pad_token="<pad>", model_max_length=max_length
    )
    fast.save_pretrained(folder)
    config = XLMRobertaConfig(
        vocab_size=len(fast), hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, max_position_embeddings=130,
        pad_token_id=fast.pad_token_id, bos_token_id=bos, eos_token_id=eos, num_labels=1, type_vocab_size=1,
        architectures=["XLMRobertaForSequenceClassification"],
    )  # fmt: skip
    model = XLMRobertaForSequenceClassification(config)
    _init_weights(model, 0.1)
    model.save_pretrained(folder)
    return folder


def write_gguf(path: Path, architecture: str = "llama") -> Path:
    """A small but well-formed GGUF file (header, metadata, one tensor) for the source checks."""
    import numpy as np
    from gguf import GGUFWriter

    writer = GGUFWriter(str(path), architecture)
    writer.add_block_count(1)
    writer.add_tensor("token_embd.weight", np.arange(4096, dtype=np.float32).reshape(64, 64))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def write_tiny_llama_gguf(path: Path, hf_folder: Path, matrix_type: str = "Q4_1") -> Path:
    """The tiny llama of `hf_folder` (make_tiny_llama, tied) converted to GGUF the way llama.cpp's
    converter does it (tests/gguf_blocks.write_gguf): projections quantized to `matrix_type`
    (any type tests/gguf_blocks.quantize writes, or "F32"), the embedding to Q8_0, norms F32."""
    from tests.gguf_blocks import write_gguf

    return write_gguf(path, hf_folder, lambda name: "Q8_0" if name == "token_embd.weight" else matrix_type)
