"""The package's import order: each layer imports only from the layers below it.

Layers, bottom to top (``docs/architecture.md``)::

    config < ops < nn < generation < model < {hf, data} < train < analysis < evals
        < experiments < cli

``hf`` and ``data`` are peers: neither imports the other. A module may import freely inside its
own top-level package. Imports under ``if TYPE_CHECKING:`` are annotations, not arrows, and the
package's own ``__init__`` / ``__main__`` (the public facade) sit above every layer.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import gated_attention

LAYERS: tuple[tuple[str, ...], ...] = (
    ("config",),
    ("ops",),
    ("nn",),
    ("generation",),
    ("model",),
    ("hf", "data", "_transformers_hook"),
    ("train",),
    ("analysis",),
    ("evals",),
    ("experiments",),
    ("cli",),
)
RANK = {name: i for i, names in enumerate(LAYERS) for name in names}
FACADE = ("__init__", "__main__")
ROOT = Path(gated_attention.__file__).parent


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(tree: ast.AST, package: list[str]) -> list[tuple[int, str]]:
    """``(line, absolute module)`` of every runtime import of ``gated_attention.*``."""
    found: list[tuple[int, str]] = []

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            found.extend((node.lineno, a.name) for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
                names = [module] if node.module else [f"{module}.{a.name}" for a in node.names]
                found.extend((node.lineno, m) for m in names)
            elif node.module == "gated_attention":  # metadata such as __version__ is no arrow
                names = [a.name for a in node.names if not a.name.startswith("__")]
                found.extend((node.lineno, f"gated_attention.{n}") for n in names)
            elif node.module:
                found.append((node.lineno, node.module))
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return [(line, m) for line, m in found if m.startswith("gated_attention.")]


def _layer(module_path: Path) -> str:
    return module_path.relative_to(ROOT).parts[0].removesuffix(".py")


def upward_imports() -> list[str]:
    problems = []
    for path in sorted(ROOT.rglob("*.py")):
        src = _layer(path)
        if src in FACADE:
            continue
        rel = path.relative_to(ROOT).with_suffix("")
        package = ["gated_attention", *rel.parts[:-1]]
        for line, module in _imports(ast.parse(path.read_text()), package):
            dst = module.split(".")[1]
            if dst == src:
                continue
            if dst not in RANK or src not in RANK:
                problems.append(f"{path.relative_to(ROOT)}:{line}: {module} (unknown layer)")
            elif RANK[dst] >= RANK[src]:
                problems.append(
                    f"{path.relative_to(ROOT)}:{line}: {src} imports {module} "
                    f"({dst} is not below {src})"
                )
    return problems


def test_every_top_level_module_has_a_layer():
    names = {p.name.removesuffix(".py") for p in ROOT.iterdir() if p.suffix == ".py" or p.is_dir()}
    names -= {"__pycache__", *FACADE}
    assert names <= set(RANK), sorted(names - set(RANK))


def test_no_import_points_up_or_across():
    assert upward_imports() == []


def test_the_walk_sees_an_upward_import(tmp_path, monkeypatch):
    """The check itself can fail: a planted upward import is reported."""
    (tmp_path / "ops").mkdir()
    (tmp_path / "ops" / "bad.py").write_text(
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n    from gated_attention.model import GatedLM\n"
        "def f():\n    from gated_attention.train import train\n"
        "from ..nn import block\n"
    )
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    problems = upward_imports()
    assert len(problems) == 2
    assert "ops imports gated_attention.train" in problems[0]
    assert "ops imports gated_attention.nn" in problems[1]
