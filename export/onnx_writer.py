"""Writing ONNX graphs the way our builder needs: `GraphWriter` streams each large initializer
into the external-data file as it is made (memory stays at the tensor being written), and
`write_kv_copy_graph` writes the KV pool's slot-to-slot copy graph. Only onnx's helpers and
numpy; the layers themselves are export/gqa_builder.py's.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import numpy as np

OPSET = 21
IR_VERSION = 10  # what onnxruntime >= 1.20 reads
MS_DOMAIN = "com.microsoft"
GRAPH_FILE = "model.onnx"
DATA_FILE = "model.onnx.data"
COPY_GRAPH_FILE = "kv_copy.onnx"
# Initializers this large or larger (as onnx.save counts: the bytes object's size) go to DATA_FILE.
EXTERNAL_THRESHOLD = 1024


class GraphWriter:
    """Nodes and initializers; initializers of 1 KiB or more go straight to the external-data
    file as they are made (onnx.save's layout: appended in creation order, no padding), so the
    graph never holds the weights: memory stays at the tensor being written."""

    def __init__(self, data_path: Path, float_type: type = np.float32) -> None:
        from onnx import helper, numpy_helper

        # Floating-point constants are stored in the graph's compute dtype.
        self.float_type = float_type
        self.helper = helper
        self.numpy_helper = numpy_helper
        self.nodes: list[Any] = []
        self.initializers: list[Any] = []
        self.data_path = data_path
        self.data = open(data_path, "wb")
        self.data_bytes = 0

    def const(self, name: str, array: np.ndarray, keep_dtype: bool = False) -> str:
        """An initializer; floats are converted to the compute dtype unless `keep_dtype`."""
        import onnx

        if np.issubdtype(array.dtype, np.floating) and not keep_dtype:
            array = array.astype(self.float_type, copy=False)
        array = np.ascontiguousarray(array)
        if sys.getsizeof(b"") + array.nbytes < EXTERNAL_THRESHOLD:
            self.initializers.append(self.numpy_helper.from_array(array, name))
            return name
        tensor = onnx.TensorProto()
        tensor.name = name
        tensor.dims.extend(array.shape)
        tensor.data_type = self.helper.np_dtype_to_tensor_dtype(array.dtype)
        array.tofile(self.data)
        for key, value in (("location", DATA_FILE), ("offset", str(self.data_bytes)), ("length", str(array.nbytes))):
            entry = tensor.external_data.add()
            entry.key, entry.value = key, value
        tensor.data_location = onnx.TensorProto.EXTERNAL
        self.data_bytes += array.nbytes
        self.initializers.append(tensor)
        return name

    def as_compute(self, name: str, array16: np.ndarray) -> str:
        """An fp16 constant (a GGUF's scales, kept as stored) in the compute dtype: a Cast that
        ONNX Runtime folds once at load for fp32 engines, the constant itself for fp16 ones."""
        stored = self.const(f"{name}_f16", array16, keep_dtype=True)
        if self.float_type == np.float16:
            return stored
        return self.node("Cast", [stored], [name], f"{name}/cast", to=self.helper.np_dtype_to_tensor_dtype(np.dtype(self.float_type)))[0]

    def node(self, op: str, inputs: list[str], outputs: list[str], name: str, domain: str = "", **attrs: Any) -> list[str]:
        self.nodes.append(self.helper.make_node(op, inputs, outputs, name=name, domain=domain or None, **attrs))
        return outputs

    def finish(self) -> None:
        self.data.close()


def write_kv_copy_graph(path: Path, tensors: int, slot_shape: list[int], element_type: int) -> None:
    """The KV pool's slot-to-slot copy (KVLayout.copy_graph): target.i = Identity(source.i).

    The runtime binds each source at one slot of the pool and each target at another; the
    Identity kernels copy device to device (CUDA) or memory to memory (CPU).
    """
    import onnx

    h = onnx.helper
    shape: list[str | int] = ["slot_rows", *slot_shape]
    nodes = [h.make_node("Identity", [f"source.{i}"], [f"target.{i}"], name=f"copy.{i}") for i in range(tensors)]
    graph = h.make_graph(
        nodes, "kv-slot-copy",
        [h.make_tensor_value_info(f"source.{i}", element_type, shape) for i in range(tensors)],
        [h.make_tensor_value_info(f"target.{i}", element_type, shape) for i in range(tensors)],
    )  # fmt: skip
    onnx.save_model(h.make_model(graph, opset_imports=[h.make_opsetid("", OPSET)], producer_name="appliance", ir_version=IR_VERSION), str(path))
