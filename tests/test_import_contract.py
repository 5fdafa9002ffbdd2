"""The import contract: layers import downwards only, and LaMed's modules form no import cycle.

Read from the source with ``ast`` (every ``import`` statement, also those inside functions, so a
late import cannot hide an upward dependency). The layers, lowest first:

    utils  <-  data, models, metrics  <-  inference  <-  train  <-  commands, demo, cli

``data``, ``models`` and ``metrics`` know nothing of ``train``, ``inference``, ``commands``,
``demo`` or the CLI; ``inference`` nothing of ``train``, ``commands``, ``demo``; ``train`` nothing
of ``commands`` or ``demo``; the library imports nothing from ``Data/``, ``Bench/`` or ``scripts/``
(those are callers of the library, never the other way round).
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

# (importing packages, packages they must not import)
FORBIDDEN: list[tuple[tuple[str, ...], tuple[str, ...]]] = [
    (
        ("LaMed.utils",),
        (
            "LaMed.data",
            "LaMed.models",
            "LaMed.metrics",
            "LaMed.inference",
            "LaMed.train",
            "LaMed.commands",
            "LaMed.demo",
            "LaMed.cli",
        ),
    ),
    (
        ("LaMed.data", "LaMed.models", "LaMed.metrics"),
        ("LaMed.train", "LaMed.inference", "LaMed.commands", "LaMed.demo", "LaMed.cli"),
    ),
    (("LaMed.inference",), ("LaMed.train", "LaMed.commands", "LaMed.demo", "LaMed.cli")),
    (("LaMed.train",), ("LaMed.commands", "LaMed.demo", "LaMed.cli")),
    (("LaMed",), ("Data", "Bench", "scripts")),
]


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _within(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def _imports(path: Path, top_level_only: bool = False) -> Iterator[tuple[int, str]]:
    """``(line, imported module)`` of every import statement in ``path``."""
    module = _module_name(path)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    tree = ast.parse(path.read_text(encoding="utf-8"))
    nodes = tree.body if top_level_only else ast.walk(tree)
    for node in nodes:
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            yield node.lineno, target
            for alias in node.names:  # "from LaMed.models import convert" imports LaMed.models.convert
                yield node.lineno, f"{target}.{alias.name}"


def _library_files() -> list[Path]:
    return sorted((REPO / "LaMed").rglob("*.py"))


def test_layers_import_downwards_only():
    bad = []
    for path in _library_files():
        module = _module_name(path)
        for line, target in _imports(path):
            for sources, forbidden in FORBIDDEN:
                if any(_within(module, s) for s in sources) and any(_within(target, f) for f in forbidden):
                    bad.append(f"{path.relative_to(REPO)}:{line}: {module} imports {target}")
    assert not bad, "upward imports:\n" + "\n".join(sorted(set(bad)))


def _module_graph() -> dict[str, set[str]]:
    """Edges of the module-level imports between LaMed's modules (what runs at import time)."""
    modules = {_module_name(p): p for p in _library_files()}
    graph: dict[str, set[str]] = {m: set() for m in modules}

    def deepest(name: str) -> str:  # the module an imported dotted name lives in
        while name and name not in modules:
            name = name.rpartition(".")[0]
        return name

    for module, path in modules.items():
        package = module if path.name == "__init__.py" else module.rpartition(".")[0]
        for node in ast.parse(path.read_text(encoding="utf-8")).body:
            targets = []
            if isinstance(node, ast.Import):
                targets = [deepest(a.name) for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parts = package.split(".")
                    base = ".".join(parts[: len(parts) - (node.level - 1)] + ([node.module] if node.module else []))
                # "from pkg import sub" imports the submodule (fine while pkg is still initialising);
                # "from pkg import name" needs pkg itself, so a submodule doing it to its own package
                # while pkg's __init__ imports that submodule is a cycle
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else deepest(base) for a in node.names]
            graph[module].update(t for t in targets if t and t != module)
    return graph


def test_no_import_cycles():
    graph = _module_graph()
    state: dict[str, int] = {}
    cycles: list[list[str]] = []

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycles.append(stack[stack.index(nxt) :] + [nxt])
            elif nxt not in state:
                visit(nxt, stack)
        stack.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, [])
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles)


def test_the_checker_sees_an_upward_import(tmp_path, monkeypatch):
    # The rule applied to a module written here: a late import inside a function is still found.
    pkg = tmp_path / "LaMed" / "models"
    pkg.mkdir(parents=True)
    (pkg / "bad.py").write_text("def f():\n    from LaMed.train.main import run_training\n")
    monkeypatch.setattr(__import__(__name__), "REPO", tmp_path)
    found = list(_imports(pkg / "bad.py"))
    assert (2, "LaMed.train.main") in found
    with pytest.raises(AssertionError, match="LaMed.models.bad imports LaMed.train.main"):
        test_layers_import_downwards_only()
