"""The package layering of docs/architecture.md, checked on the source."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
HEAVY = {"torch", "transformers", "optimum", "sentence_transformers", "accelerate", "tensorrt", "onnx", "gguf"}


def imported_modules(package: str) -> dict[str, set[str]]:
    """Top-level module names imported anywhere (also inside functions) by each file of `package`."""
    found = {}
    for path in sorted((ROOT / package).rglob("*.py")):
        names = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names.add(node.module.split(".")[0])
        found[str(path.relative_to(ROOT))] = names
    return found


@pytest.mark.parametrize("package", ["runtime", "api"])
def test_serving_packages_never_import_heavy_libraries(package):
    offenders = {f: sorted(n & HEAVY) for f, n in imported_modules(package).items() if n & HEAVY}
    assert not offenders, f"{package}/ must stay light: {offenders}"


def test_runtime_imports_neither_export_nor_api():
    offenders = {f: sorted(n & {"export", "api"}) for f, n in imported_modules("runtime").items() if n & {"export", "api"}}
    assert not offenders


def test_api_reaches_onnxruntime_only_through_runtime():
    offenders = [f for f, n in imported_modules("api").items() if "onnxruntime" in n]
    assert not offenders


def test_nothing_imports_api():
    for package in ("runtime", "export"):
        offenders = [f for f, n in imported_modules(package).items() if "api" in n]
        assert not offenders


def test_cli_parser_loads_without_heavy_imports():
    code = f"import sys, appliance.cli; appliance.cli.build_parser(); print(sorted(m for m in sys.modules if m.split('.')[0] in {HEAVY!r}))"
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


def project_import_graph() -> dict[str, set[str]]:
    """Each module of the project's packages → the project modules it imports (anywhere in it,
    TYPE_CHECKING blocks and function bodies included: a circle there is still a circle)."""
    packages = ("runtime", "api", "export", "appliance")
    paths = {".".join(p.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__"): p for package in packages for p in sorted((ROOT / package).rglob("*.py"))}
    graph = {}
    for module, path in paths.items():
        found = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                found.update(f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in paths else node.module for a in node.names)
            elif isinstance(node, ast.Import):
                found.update(a.name for a in node.names)
        graph[module] = {m for m in found if m in paths and m != module}
    return graph


def test_no_import_circle_anywhere():
    graph, state, stack, circles = project_import_graph(), {}, [], []

    def visit(module: str) -> None:
        state[module] = "open"
        stack.append(module)
        for other in sorted(graph[module]):
            if state.get(other) == "open":
                circles.append(" → ".join([*stack[stack.index(other) :], other]))
            elif other not in state:
                visit(other)
        stack.pop()
        state[module] = "done"

    for module in sorted(graph):
        if module not in state:
            visit(module)
    assert not circles, circles
    assert "runtime.sequence" in graph["runtime.scheduler"] and "runtime.request" in graph["runtime.sequence"]
