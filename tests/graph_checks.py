"""Graph inspections shared by the tiny and the real-model export tests."""

from __future__ import annotations

from pathlib import Path

from runtime.manifest import Manifest


def kv_path_problems(directory: Path, manifest: Manifest) -> list[str]:
    """Everything that breaks "past and present share one buffer, no Concat on the KV path"."""
    import onnx

    graph = onnx.load(str(directory / manifest.graph_file), load_external_data=False).graph
    problems = [f"Concat node {n.name}" for n in graph.node if n.op_type == "Concat"]
    consumers: dict[str, list[str]] = {}
    producers: dict[str, str] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node.op_type)
        for name in node.output:
            producers[name] = node.op_type
    for spec in manifest.inputs:
        if spec.role in ("past_key", "past_value"):
            if consumers.get(spec.name) != ["GroupQueryAttention"]:
                problems.append(f"{spec.name} feeds {consumers.get(spec.name)}")
            if spec.shape[2] != manifest.kv_cache.max_length:
                problems.append(f"{spec.name} has length {spec.shape[2]}, not the buffer's {manifest.kv_cache.max_length}")
    for spec in manifest.outputs:
        if spec.role in ("present_key", "present_value") and producers.get(spec.name) != "GroupQueryAttention":
            problems.append(f"{spec.name} comes from {producers.get(spec.name)}")
    if not manifest.kv_cache.shared_buffer:
        problems.append("manifest does not declare a shared buffer")
    return problems
