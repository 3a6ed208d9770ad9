"""The package's folders are its layers: a module imports its own folder, lower layers and
zorba.errors only (imports inside functions count: a lazy import is still a dependency), no modules
import each other in a circle, and every module lives in a folder the layer table names."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"

# Lowest first. A folder may import the folders before it, never those after.
LAYERS = ("wire", "core", "memory", "planner", "federation", "methods", "flower", "experiments", "cli")
# The only modules outside a layer: the package itself, the one exception type everyone raises, and
# `python -m zorba`, which only starts the command line.
TOP = {"zorba": -1, "zorba.errors": -1, "zorba.__main__": len(LAYERS)}


def modules(src: Path = SRC) -> dict[str, Path]:
    """Dotted name -> file, for every module of the zorba package (a folder's __init__ is the folder)."""
    found = {}
    for path in (src / "zorba").rglob("*.py"):
        parts = list(path.relative_to(src).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


def imports(name: str, path: Path, known: dict[str, Path]) -> set[str]:
    """The zorba modules `name` imports anywhere in its file, resolved to the longest known module."""
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    targets = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module
            if node.level:
                base = ".".join(package[: len(package) - node.level + 1] + ([node.module] if node.module else []))
            targets += [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names]
    found = set()
    for target in targets:
        parts = target.split(".")
        while parts and ".".join(parts) not in known:
            parts.pop()
        if parts and ".".join(parts) != name:
            found.add(".".join(parts))
    return found


def graph(src: Path = SRC) -> dict[str, set[str]]:
    known = modules(src)
    return {name: imports(name, path, known) for name, path in known.items()}


def layer(name: str) -> int:
    """The module's layer index; a module outside every layer is a KeyError (test (c) names it)."""
    if name in TOP:
        return TOP[name]
    return LAYERS.index(name.split(".")[1])


def upward(edges: dict[str, set[str]]) -> list[str]:
    """Imports that go to a higher layer (or, from a top-level module, into any layer)."""
    return sorted(f"{a} -> {b}" for a, targets in edges.items() for b in targets
                  if b != "zorba" and layer(b) > layer(a) and not (a in TOP and TOP[a] == len(LAYERS)))


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    index, low, stack, on_stack, found, counter = {}, {}, [], set(), [], 0
    for root in sorted(edges):
        if root in index:
            continue
        work = [(root, iter(sorted(edges[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(edges.get(child, ())))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def test_every_module_is_in_a_named_layer():
    strays = [name for name in modules() if name not in TOP and (
        name.count(".") < 1 or name.split(".")[1] not in LAYERS)]
    assert not strays, f"modules outside the layer folders (move them into one): {strays}"
    for folder in LAYERS:  # every layer is a package that says what it owns and may import
        init = SRC / "zorba" / folder / "__init__.py"
        assert init.is_file() and ast.get_docstring(ast.parse(init.read_text())), folder


def test_imports_only_go_down():
    assert upward(graph()) == []


def test_no_import_cycles():
    assert cycles(graph()) == []


def test_the_checks_can_fail(tmp_path):
    """A stray top-level module, an upward import and a circle are each caught."""
    pkg = tmp_path / "zorba"
    for folder in ("", "wire", "core"):
        (pkg / folder).mkdir(parents=True, exist_ok=True)
        (pkg / folder / "__init__.py").write_text('"""x"""\n')
    (pkg / "wire" / "codec.py").write_text("def f():\n    from zorba.core import rng\n")
    (pkg / "core" / "rng.py").write_text("from zorba.core.zo import step\n")
    (pkg / "core" / "zo.py").write_text("from . import rng\n")
    (pkg / "stray.py").write_text("")
    edges = graph(tmp_path)
    assert upward(edges) == ["zorba.wire.codec -> zorba.core.rng"]
    assert cycles(edges) == [["zorba.core.rng", "zorba.core.zo"]]
    with pytest.raises(ValueError):
        layer("zorba.stray")
