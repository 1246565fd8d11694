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
    assert "runtime.job" in graph["runtime.scheduler"] and "runtime.sequence" in graph["runtime.job"] and "runtime.request" in graph["runtime.sequence"]


# -- the seams inside api/ (docs/architecture.md: the module map) ---------------------------------

DIALECTS = ("api.openai", "api.ollama", "api.extras", "api.rerank", "api.anthropic")
# The one allowed edge between dialects: Anthropic's Messages API is a translation onto chat
# completions (as the Responses API is, inside api.openai), so it builds OpenAI's chat request
# and runs OpenAI's chat parser; nothing else of another dialect.
DIALECT_EDGES = {"api.anthropic": ("api.openai.bodies", "api.openai.protocol")}
HOSTS = ("api.server", "api.scaleout")


def _within(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


def _api_imports() -> dict[str, set[str]]:
    """Each module under api/ → the modules it imports by name (anywhere in it), dotted in full."""
    found = {}
    for path in sorted((ROOT / "api").rglob("*.py")):
        module = ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
        names = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names.add(node.module)
                names.update(f"{node.module}.{alias.name}" for alias in node.names)
        found[module] = names
    return found


def test_dialects_import_neither_each_other_nor_the_hosts():
    offenders = {}
    for module, names in _api_imports().items():
        dialect = next((d for d in DIALECTS if _within(module, d)), None)
        if dialect is None:
            continue
        allowed = DIALECT_EDGES.get(dialect, ())
        bad = sorted(n for n in names if any(_within(n, p) for p in (*DIALECTS, *HOSTS) if p != dialect) and not any(_within(n, a) for a in allowed))
        if bad:
            offenders[module] = bad
    assert not offenders, offenders


def test_nothing_in_api_imports_the_hosts_but_the_hosts():
    """gunicorn's host (api/server/) and Ray's (api/scaleout/) sit on top; Ray's replicas run the
    server that api/server/assemble.py assembles, the one import between them."""
    offenders = {}
    for module, names in _api_imports().items():
        if _within(module, "api.server"):
            bad = sorted(n for n in names if _within(n, "api.scaleout"))
        elif _within(module, "api.scaleout"):
            bad = sorted(n for n in names if _within(n, "api.server") and not _within(n, "api.server.assemble"))
        else:
            bad = sorted(n for n in names if any(_within(n, host) for host in HOSTS))
        if bad:
            offenders[module] = bad
    assert not offenders, offenders


@pytest.mark.parametrize("package", ["runtime", "api", "export", "appliance"])
def test_ray_and_starlette_only_in_the_ray_host(package):
    offenders = {f: sorted(n & {"ray", "starlette"}) for f, n in imported_modules(package).items() if n & {"ray", "starlette"} and not f.startswith("api/scaleout/")}
    assert not offenders, offenders


@pytest.mark.parametrize("folder", ["api/generation", "api/tools"])
def test_the_request_path_and_tool_calling_know_no_http(folder):
    """The dialect-neutral request path and tool calling import no falcon and no dialect or host."""
    http = {f: sorted(n & {"falcon"}) for f, n in imported_modules(folder).items() if "falcon" in n}
    assert not http, http
    package = folder.replace("/", ".")
    above = {m: sorted(n for n in names if any(_within(n, p) for p in (*DIALECTS, *HOSTS))) for m, names in _api_imports().items() if _within(m, package)}
    assert not any(above.values()), above


def test_api_root_holds_at_most_a_dozen_modules():
    modules = sorted(p.name for p in (ROOT / "api").glob("*.py") if p.name != "__init__.py")
    assert len(modules) <= 12, modules


def test_no_module_outside_bench_is_over_600_lines():
    long = {str(p.relative_to(ROOT)): n for package in ("api", "runtime", "export", "appliance") for p in (ROOT / package).rglob("*.py") if (n := len(p.read_text().splitlines())) > 600}
    assert not long, long


def test_every_package_says_what_it_holds_and_may_import():
    for init in sorted(p for package in ("api", "runtime", "export", "appliance") for p in [ROOT / package / "__init__.py", *(ROOT / package).rglob("*/__init__.py")]):
        doc = ast.get_docstring(ast.parse(init.read_text())) or ""
        assert len(doc) > 80 and "import" in doc, f"{init.relative_to(ROOT)}: say what the package holds and what it may import"


def test_tool_calling_builds_on_the_request_path_not_the_other_way():
    backwards = {m: sorted(n for n in names if _within(n, "api.tools")) for m, names in _api_imports().items() if _within(m, "api.generation")}
    assert not any(backwards.values()), backwards
