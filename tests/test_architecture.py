"""The shape of the code: no import cycle among the project's modules, no module over 500 lines."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = {"accel": "accel", "kernels": "accel.kernels", "viz": "viz", "profiling": "profiling"}
MAX_LINES = 500
SIZE_CHECKED = ("accel", "viz", "profiling")  # and app.py


def _modules() -> dict[str, Path]:
    """Every project module by dotted name (the top-level kernels/ folder installs as accel.kernels)."""
    out = {"app": ROOT / "app.py"}
    for folder, package in PACKAGES.items():
        for path in (ROOT / folder).rglob("*.py"):
            parts = list(path.relative_to(ROOT / folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            out[".".join([package, *parts])] = path
    return out


def _type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(tree: ast.AST, name: str, is_package: bool, known: set[str]) -> set[str]:
    """The project modules ``name`` imports anywhere (also inside functions), except under ``if TYPE_CHECKING``."""
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _type_checking(node):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            for alias in node.names:
                found.add(alias.name)
        elif isinstance(node, ast.ImportFrom):
            base = name if is_package else name.rpartition(".")[0]
            for _ in range(max(node.level - 1, 0)):
                base = base.rpartition(".")[0]
            module = f"{base}.{node.module}" if node.level and node.module else (node.module or base)
            for alias in node.names:
                found.add(f"{module}.{alias.name}" if f"{module}.{alias.name}" in known else module)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return {m for m in found if m in known and m != name}


def import_graph() -> dict[str, set[str]]:
    modules = _modules()
    known = set(modules)
    return {
        name: _imports(ast.parse(path.read_text(encoding="utf-8")), name, path.name == "__init__.py", known)
        for name, path in modules.items()
    }


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

    def connect(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                connect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            connect(v)
    return out


def test_no_import_cycle_among_the_projects_modules():
    assert cycles(import_graph()) == []


def test_the_cycle_finder_finds_a_function_level_cycle_and_ignores_type_checking_imports():
    a = ast.parse("def f():\n    from accel import b\n")
    b = ast.parse("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from accel import a\nimport accel.a\n")
    known = {"accel", "accel.a", "accel.b"}
    graph = {"accel.a": _imports(a, "accel.a", False, known), "accel.b": _imports(b, "accel.b", False, known)}
    assert graph == {"accel.a": {"accel.b"}, "accel.b": {"accel.a"}}
    assert cycles(graph) == [["accel.a", "accel.b"]]
    typed_only = ast.parse("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from accel import a\n")
    assert _imports(typed_only, "accel.b", False, known) == set()


def _top_level_imports(module: ast.Module, name: str, known: set[str]) -> set[str]:
    """What importing the module runs: its imports outside functions and classes."""
    body = [n for n in module.body if not isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))]
    return _imports(ast.Module(body=body, type_ignores=[]), name, name == "accel.methods", known)


def test_the_registry_loads_no_implementation():
    """The registry and the method modules import no implementation when they load (an implementation loads when
    a builder or installer runs), so listing the methods imports neither torch nor diffusers."""
    modules = _modules()
    heavy = ("accel.attention", "accel.cache", "accel.kernels", "accel.models", "accel.runner", "accel.ebc")
    for name in [m for m in modules if m == "accel.methods" or m.startswith("accel.methods.")]:
        module = ast.parse(modules[name].read_text(encoding="utf-8"))
        assert not [m for m in _top_level_imports(module, name, set(modules)) if m.startswith(heavy)], name


def test_no_module_is_over_500_lines():
    paths = [ROOT / "app.py", *(p for folder in SIZE_CHECKED for p in (ROOT / folder).rglob("*.py"))]
    long = {str(p.relative_to(ROOT)): n for p in paths if (n := len(p.read_text(encoding="utf-8").splitlines())) > 500}
    assert long == {}
