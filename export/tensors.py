"""Tensor sources: a model's weights, read one tensor at a time, never the whole model in fp32.

The graph builder and the layer-streamed reference read weights through a `TensorSource`,
by their Hugging Face names (`model.layers.3.self_attn.q_proj.weight`):

* `GGUFTensors` reads a .gguf file through a memory map. `float()` de-quantizes one tensor
  with the gguf package (as transformers' GGUF loader does, with the same per-architecture
  processing, e.g. llama's q/k row order); `blocks()` hands over a quantized tensor's raw
  blocks, rows in the Hugging Face order, for the block carriers (export/blocks.py).
* `CheckpointTensors` reads a Hugging Face folder: safetensors lazily (bf16/fp16 tensors
  converted to fp32 one at a time), PyTorch .bin files memory-mapped.

A tensor asked for is materialised, used and dropped by the caller, so the export's memory
is bounded by the largest tensor (or layer), not by the model.
"""

from __future__ import annotations

import mmap
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from export.errors import CorruptSourceError, UnsupportedModelError


@dataclass(frozen=True)
class RawBlocks:
    """A GGUF tensor's quantized blocks: `data` uint8 [rows, bytes per row], rows in the Hugging
    Face order (out features), each row the blocks of its `columns` inputs."""

    kind: str  # the GGML type's name: "Q4_1", "Q8_0", ...
    data: np.ndarray
    columns: int


class TensorSource(Protocol):
    """Weights by Hugging Face name, one tensor at a time."""

    def names(self) -> set[str]: ...

    def float(self, name: str) -> np.ndarray:
        """The tensor in fp32, in the Hugging Face layout ([out, in] for linear weights)."""
        ...

    def rows(self, name: str, start: int, stop: int) -> np.ndarray:
        """Rows start..stop of a 2-D tensor in fp32 (the embedding, a slice at a time)."""
        ...

    def blocks(self, name: str) -> RawBlocks | None:
        """The quantized blocks as stored, or None when the tensor is stored as floats."""
        ...

    def nbytes(self) -> int:
        """Bytes the weights take in the source."""
        ...

    def release(self) -> None:
        """Give back the memory-mapped pages read so far (they stay in the page cache)."""
        ...


class GGUFTensors:
    """The tensors of a .gguf file, memory-mapped, under their Hugging Face names."""

    # Row-wise processing we can apply to raw blocks as well as to floats: none, or llama's
    # q/k row permutation (undoing llama.cpp's converter). Other processors change values.
    ROW_PROCESSORS = ("TensorProcessor", "LlamaTensorProcessor")

    def __init__(self, path: Path, skeleton: Any) -> None:
        """`skeleton`: the model built on the meta device from the GGUF's config (no weights), for
        transformers' GGUF → Hugging Face name map."""
        from gguf import GGUFReader
        from transformers.modeling_gguf_pytorch_utils import TENSOR_PROCESSORS, TensorProcessor, get_gguf_hf_weights_map

        self.path = path
        try:
            reader = GGUFReader(str(path))
        except Exception as exc:  # the reader raises ValueError/IndexError/... on damaged files
            raise CorruptSourceError(f"{path} cannot be read as GGUF ({type(exc).__name__}: {exc}); download it again") from exc
        field = reader.get_field("general.architecture")
        architecture = str(field.contents()) if field is not None else ""
        # Only the tensors and the mapping are kept: the reader's key/value fields (the vocabulary
        # as ~10^5 small arrays) take about 140 MB for a 49k-token tokenizer.
        self._all = list(reader.tensors)
        self._mapping = reader.data
        del reader, field
        # The processors read the config under its Hugging Face names (num_attention_heads, ...).
        self._processor = TENSOR_PROCESSORS.get(architecture, TensorProcessor)(config=skeleton.config.to_dict())
        self._row_wise = type(self._processor).__name__ in self.ROW_PROCESSORS
        to_hf = get_gguf_hf_weights_map(skeleton)
        self._tensors = {to_hf[t.name]: t for t in self._all if t.name in to_hf}
        self._gguf_names = {hf: t.name for hf, t in self._tensors.items()}

    def names(self) -> set[str]:
        return set(self._tensors)

    def _tensor(self, name: str) -> Any:
        try:
            return self._tensors[name]
        except KeyError:
            raise UnsupportedModelError(f"{self.path}: no tensor for {name} (GGUF names: {', '.join(sorted(self._gguf_names.values())[:6])}, ...)") from None

    def _process(self, array: np.ndarray, name: str) -> np.ndarray:
        return np.asarray(self._processor.process(weights=array, name=self._gguf_names[name]).weights)

    def float(self, name: str) -> np.ndarray:
        from gguf import dequantize

        tensor = self._tensor(name)
        array = np.ascontiguousarray(self._process(dequantize(tensor.data, tensor.tensor_type), name), dtype=np.float32)
        return array if array.flags.writeable else array.copy()  # an F32 tensor comes back as the file's read-only pages

    def rows(self, name: str, start: int, stop: int) -> np.ndarray:
        from gguf import dequantize

        tensor = self._tensor(name)
        if self._gguf_names[name] in ("token_embd.weight", "output.weight") or not self._row_wise:
            return dequantize(tensor.data[start:stop], tensor.tensor_type).astype(np.float32, copy=False)
        return self.float(name)[start:stop]  # a permuted tensor: its rows come from the whole

    def blocks(self, name: str) -> RawBlocks | None:
        from gguf import GGMLQuantizationType

        tensor = self._tensor(name)
        kind = GGMLQuantizationType(tensor.tensor_type)
        if kind in (GGMLQuantizationType.F32, GGMLQuantizationType.F16, GGMLQuantizationType.BF16) or not self._row_wise:
            return None
        data = self._process(np.asarray(tensor.data), name)
        return RawBlocks(kind.name, data, int(tensor.shape[0]))  # GGUF shapes list the inputs first

    def nbytes(self) -> int:
        return sum(int(t.n_bytes) for t in self._all)

    def release(self) -> None:
        # The file's pages, once read, count as this process's memory while mapped; the export
        # reads every byte once, so without this its resident size would grow to the file's.
        mapping = getattr(self._mapping, "_mmap", None)
        if mapping is not None and hasattr(mmap, "MADV_DONTNEED"):
            mapping.madvise(mmap.MADV_DONTNEED)


class CheckpointTensors:
    """A Hugging Face folder's weights: safetensors opened lazily, .bin files memory-mapped."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self._where: dict[str, Path] = {}
        self._open: dict[Path, Any] = {}
        files = sorted(folder.glob("*.safetensors")) or sorted(folder.glob("pytorch_model*.bin")) or sorted(folder.glob("model*.bin"))
        if not files:
            raise CorruptSourceError(f"{folder} has no weights (*.safetensors or pytorch_model*.bin); download the complete model")
        for file in files:
            for key in self._handle(file).keys():
                self._where[key] = file
        # Checkpoints saved from the bare model (LlamaModel) lack the "model." prefix.
        if "model.embed_tokens.weight" not in self._where and "embed_tokens.weight" in self._where:
            self._where = {f"model.{k}" if not k.startswith("lm_head.") else k: f for k, f in self._where.items()}
            self._prefixless = True
        else:
            self._prefixless = False

    def _handle(self, file: Path) -> Any:
        if file not in self._open:
            try:
                if file.suffix == ".safetensors":
                    from safetensors import safe_open

                    self._open[file] = safe_open(str(file), framework="pt")
                else:
                    import torch

                    self._open[file] = torch.load(str(file), map_location="cpu", mmap=True, weights_only=True)
            except Exception as exc:
                raise CorruptSourceError(f"{file} cannot be read ({type(exc).__name__}: {exc}); re-download the model") from exc
        return self._open[file]

    def names(self) -> set[str]:
        return set(self._where)

    def _torch(self, name: str) -> Any:
        file = self._where.get(name)
        if file is None:
            raise UnsupportedModelError(f"{self.folder}: the checkpoint has no tensor {name}")
        key = name[len("model.") :] if self._prefixless and name.startswith("model.") else name
        handle = self._handle(file)
        return handle.get_tensor(key) if file.suffix == ".safetensors" else handle[key]

    def float(self, name: str) -> np.ndarray:
        import torch

        return self._torch(name).to(torch.float32).numpy()

    def rows(self, name: str, start: int, stop: int) -> np.ndarray:
        import torch

        file = self._where.get(name)
        if file is not None and file.suffix == ".safetensors":
            key = name[len("model.") :] if self._prefixless and name.startswith("model.") else name
            return self._handle(file).get_slice(key)[start:stop].to(torch.float32).numpy()
        return self.float(name)[start:stop]

    def blocks(self, name: str) -> RawBlocks | None:
        return None

    def nbytes(self) -> int:
        return sum(f.stat().st_size for f in set(self._where.values()))

    def release(self) -> None:
        pass  # safetensors copies each tensor out of its own mapping


def iter_row_chunks(source: TensorSource, name: str, vocab: int, rows: int = 4096) -> Iterator[tuple[int, np.ndarray]]:
    """(start, rows start..start+rows in fp32) over a 2-D tensor: the vocabulary a slice at a time."""
    for start in range(0, vocab, rows):
        yield start, source.rows(name, start, min(vocab, start + rows))

