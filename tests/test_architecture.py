"""The architecture of docs/ARCHITECTURE.md, checked from the source (AST): layers and import directions,
no import cycle, the trainer's parts shallow. File and function sizes are an advisory report, not a gate
(``python tests/arch_report.py``): splitting code to meet a line count made it harder to follow.

Every ``import`` counts, at module level, inside a function (a lazy import is still a dependency) or under
``if TYPE_CHECKING:`` (a type-only import is still a dependency of the design: it hid an
engine <-> checkpoints/export cycle until those took a protocol instead).
"""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "dist_peakd"

#: The layer of every top-level module / subpackage of dist_peakd (docs/ARCHITECTURE.md, "Layers").
#: A unit may import units of a LOWER layer only (and itself); a new unit needs a line here and in the doc.
LAYERS: dict[str, int] = {
    "__init__": 0, "errors": 0, "loss_output": 0, "console": 0, "outcome": 0,
    "artifacts": 1, "env": 1, "schema": 1,
    "data": 2, "locking": 2,
    "models": 3, "cache": 3, "distill": 3, "metrics": 3,
    "export": 4,
    "engine": 5, "layout": 5,
    "config": 6,
    "sweep": 7,
    "stages": 8,
    "guard": 9,
    "cli": 10,
}
#: Units that must not depend on the engine (the issue's rule: they are usable without DeepSpeed).
ENGINE_FREE = ("models", "data", "cache", "distill")
#: Units above the stages: nothing below the stages may import them.
TOP = ("stages", "cli", "guard")
#: The trainer's parts: each at most this deep in nested blocks (for/while/if/with/try).
TRAINER = PACKAGE / "engine" / "trainer.py"
MAX_TRAINER_NESTING = 3


def _module_name(path: Path) -> str:
    rel = path.relative_to(PACKAGE.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _imports(tree: ast.AST) -> list[ast.Import | ast.ImportFrom]:
    """Every import statement, those under ``if TYPE_CHECKING:`` included."""
    found: list[ast.Import | ast.ImportFrom] = []

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.Import | ast.ImportFrom):
            found.append(node)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return found


def _targets(module: str, is_package: bool, node: ast.Import | ast.ImportFrom, known: set[str]) -> set[str]:
    """dist_peakd modules an import statement loads (``from pkg import sub`` names the submodule)."""
    if isinstance(node, ast.Import):
        return {a.name for a in node.names if a.name.split(".")[0] == "dist_peakd"}
    if node.level:
        base = module.split(".") if is_package else module.split(".")[:-1]
        base = base[:len(base) - (node.level - 1)]
        target = ".".join(base + ([node.module] if node.module else []))
    else:
        target = node.module or ""
    if target.split(".")[0] != "dist_peakd":
        return set()
    out = set()
    for alias in node.names:
        sub = f"{target}.{alias.name}"
        out.add(sub if sub in known else target)
    return out


def _graph() -> dict[str, set[str]]:
    files = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    known = set(files)
    graph: dict[str, set[str]] = defaultdict(set)
    for module, path in files.items():
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in _imports(tree):
            graph[module] |= _targets(module, path.name == "__init__.py", node, known) - {module}
        graph.setdefault(module, set())
    return graph


def _unit(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


GRAPH = _graph()


def test_every_unit_has_a_layer():
    units = {_unit(m) for m in GRAPH}
    missing = sorted(units - set(LAYERS))
    assert not missing, f"{missing} have no layer: add them to LAYERS here and to docs/ARCHITECTURE.md"


def test_units_import_lower_layers_only():
    bad = [f"{m} (layer {LAYERS[_unit(m)]}) imports {t} (layer {LAYERS[_unit(t)]})"
           for m, targets in GRAPH.items() for t in targets
           if _unit(t) != _unit(m) and LAYERS.get(_unit(t), 99) >= LAYERS.get(_unit(m), -1)]
    assert not bad, "imports against the layers:\n" + "\n".join(sorted(bad))


def test_nothing_below_the_stages_imports_stages_or_cli():
    bad = [f"{m} imports {t}" for m, targets in GRAPH.items() for t in targets
           if _unit(m) not in TOP and _unit(t) in TOP]
    assert not bad, "\n".join(sorted(bad))


@pytest.mark.parametrize("unit", ENGINE_FREE)
def test_models_data_cache_distill_do_not_import_the_engine(unit):
    bad = [f"{m} imports {t}" for m, targets in GRAPH.items() for t in targets
           if _unit(m) == unit and _unit(t) == "engine"]
    assert not bad, "\n".join(sorted(bad))


def _find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_no_import_cycle_between_modules():
    cycle = _find_cycle(GRAPH)
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_no_import_cycle_between_units():
    units: dict[str, set[str]] = defaultdict(set)
    for m, targets in GRAPH.items():
        units[_unit(m)] |= {_unit(t) for t in targets} - {_unit(m)}
    cycle = _find_cycle(units)
    assert cycle is None, "import cycle between units: " + " -> ".join(cycle or [])


def test_the_checker_sees_cycles_and_lazy_imports():
    """The rules above cannot pass vacuously: a cycle and a function-level import are found."""
    assert _find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _find_cycle({"a": {"b"}, "b": set()}) is None
    tree = ast.parse("def f():\n    from ..engine import Engine\nif TYPE_CHECKING:\n    from ..stages import x\n")
    targets = set().union(*(_targets("dist_peakd.models.teacher", False, n, set()) for n in _imports(tree)))
    assert targets == {"dist_peakd.engine", "dist_peakd.stages"}  # the TYPE_CHECKING one counts
    assert "dist_peakd.engine.trainer" in GRAPH["dist_peakd.stages.distill"]
    assert "dist_peakd.errors" in GRAPH["dist_peakd.artifacts"]


def _depth(node: ast.AST, level: int = 0) -> int:
    blocks = (ast.For, ast.While, ast.If, ast.With, ast.Try)
    deepest = level
    for child in ast.iter_child_nodes(node):
        if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda):
            continue
        deepest = max(deepest, _depth(child, level + 1 if isinstance(child, blocks) else level))
    return deepest


def test_the_trainer_has_named_shallow_parts():
    tree = ast.parse(TRAINER.read_text())
    trainer = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "Trainer")
    methods = {n.name: n for n in trainer.body if isinstance(n, ast.FunctionDef)}
    assert {"fit", "train_epoch", "train_step", "evaluate", "maybe_checkpoint", "resume"} <= set(methods)
    deep = {name: d for name, fn in methods.items() if (d := _depth(fn)) > MAX_TRAINER_NESTING}
    assert not deep, f"trainer methods nested more than {MAX_TRAINER_NESTING} deep: {deep}"
    assert not [n for fn in methods.values() for n in ast.walk(fn)
                if isinstance(n, ast.FunctionDef) and n is not fn], "closures inside the trainer's methods"
