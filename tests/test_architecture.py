"""The architecture of docs/ARCHITECTURE.md, checked from the source (AST) and from a run: layers and import
directions, no import cycle, the trainer's parts shallow, and each training command's loss within 3 files of
the command line. File and function sizes are an advisory report, not a gate (``python tests/arch_report.py``):
splitting code to meet a line count made it harder to follow.

Every ``import`` counts, at module level, inside a function (a lazy import is still a dependency) or under
``if TYPE_CHECKING:`` (a type-only import is still a dependency of the design: it hid an
engine <-> checkpoints/export cycle until those took a protocol instead).
"""

from __future__ import annotations

import ast
import shutil
import sys
from collections import defaultdict
from pathlib import Path

import pytest
import torch
from reliab_helpers import args_of, run_cli, teacher_run  # noqa: F401  (fixture)

PACKAGE = Path(__file__).resolve().parents[1] / "dist_peakd"

#: The layer of every top-level module / subpackage of dist_peakd (docs/ARCHITECTURE.md, "Layers").
#: A unit may import units of a LOWER layer only (and itself); a new unit needs a line here and in the doc.
LAYERS: dict[str, int] = {
    "__init__": 0, "errors": 0, "loss_output": 0, "console": 0, "outcome": 0, "layout": 0,
    "artifacts": 1, "env": 1, "schema": 1,
    "integrity": 2,
    "data": 3, "locking": 3,
    "models": 4, "cache": 4, "distill": 4, "metrics": 4,
    "export": 5,
    "engine": 6,
    "config": 7,
    "sweep": 8,
    "stages": 9,
    "guard": 10,
    "cli": 11,
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
    assert {"steps", "epoch_steps", "end_step", "finish", "evaluate", "maybe_checkpoint", "resume"} <= set(methods)
    deep = {name: d for name, fn in methods.items() if (d := _depth(fn)) > MAX_TRAINER_NESTING}
    assert not deep, f"trainer methods nested more than {MAX_TRAINER_NESTING} deep: {deep}"
    assert not [n for fn in methods.values() for n in ast.walk(fn)
                if isinstance(n, ast.FunctionDef) and n is not fn], "closures inside the trainer's methods"


# ------------------------------------------------------------------------------ from the command to its loss
#: Pass-through frames between the command line and a stage's ``run``, one each: the guard turns a failure
#: into its exit code (guard.py), the stage's folder locks are released when it returns (stage_folder.py).
WRAPPERS = {("guard.py", "run_guarded"), ("stage_folder.py", "wrapper")}
MAX_FILES_TO_LOSS = 3  # cli.py, the stage's file, the loss's module
MAX_HOPS_FROM_RUN = 3  # the stage's run -> its recipe [-> its loss helper] -> the loss


class _Reached(Exception):
    """Raised by the spy at the loss's first call: the stack is recorded, the run need not go on."""


def _spy_first_call(monkeypatch, owner, name: str, seen: list) -> None:
    """Replace ``owner.name`` (and every dist_peakd module's binding of it) by a spy that records the
    Python stack of its first call, then stops the run."""
    real = getattr(owner, name)

    def spy(*args, **kwargs):
        frame, stack = sys._getframe(1), []
        while frame is not None:
            stack.append((Path(frame.f_code.co_filename), frame.f_code.co_name))
            frame = frame.f_back
        seen.append(stack)
        raise _Reached(name)

    monkeypatch.setattr(owner, name, spy)
    for module_name, module in list(sys.modules.items()):
        if module_name.startswith("dist_peakd") and module is not None and getattr(module, name, None) is real:
            monkeypatch.setattr(module, name, spy)


def _path_to_loss(stack: list[tuple[Path, str]], stage_file: str) -> tuple[list[str], int]:
    """(dist_peakd files from the CLI to the loss's caller, outermost first, wrappers left out; hops from the
    stage's ``run`` to the loss)."""
    ours = [(p.relative_to(PACKAGE).as_posix(), fn) for p, fn in stack if p.is_relative_to(PACKAGE)]
    ours.reverse()  # outermost first: cli.py ... the loss's caller
    assert ours and ours[0][0] == "cli.py", ours
    wrappers = [(Path(f).name, fn) for f, fn in ours if (Path(f).name, fn) in WRAPPERS]
    assert sorted(wrappers) == sorted(WRAPPERS), f"expected one frame of each wrapper {WRAPPERS}: {ours}"
    run_at = next(i for i, (f, fn) in enumerate(ours) if f == stage_file and fn == "run")
    files = list(dict.fromkeys(f for f, fn in ours if (Path(f).name, fn) not in WRAPPERS))
    return files, len(ours) - run_at


@pytest.mark.parametrize("command, loss", [
    ("finetune-teacher", "cross_entropy"),   # the stage's classification_loss -> F.cross_entropy
    ("ptp", "cross_entropy"),                # F.cross_entropy of the PTP labels
    ("distill", "distillation_loss"),        # distill/losses.py
])
def test_each_training_command_reaches_its_loss_within_three_files(command, loss, teacher_run, tmp_path,  # noqa: F811
                                                                    monkeypatch, capsys):
    """A newcomer follows ``dist-peakd <command>`` to its loss in at most 3 files (cli.py, the stage, the
    loss's module) and a few hops from the stage's ``run``: the training step is written in the stage's own
    file, not reached through trainer/engine closures (on c77f647 each command went cli.py -> the stage ->
    stages/common.py -> engine/trainer.py -> engine/engine.py -> the stage's closure -> the loss: 6 files,
    7 calls from ``run``; this test failed there for all three commands)."""
    import torch.nn.functional as F

    from dist_peakd import distill as distill_pkg

    src, opts = teacher_run
    out = tmp_path / "run"
    if command != "finetune-teacher":
        shutil.copytree(src, out)
    args = dict(opts, output_dir=str(out)) if command != "distill" else dict(opts, output_dir=str(out), use_ptp=False)
    owner = F if loss == "cross_entropy" else distill_pkg
    seen: list = []
    _spy_first_call(monkeypatch, owner, loss, seen)
    code, _, err = run_cli([command, *args_of(args)], capsys)
    assert seen, f"{command} never called {loss} (exit {code}): {err[-2000:]}"
    assert code == 1 and "_Reached" in err  # the spy stopped the run at the loss's first call
    stage_file = f"stages/{command.replace('-', '_')}.py"
    files, hops = _path_to_loss(seen[0], stage_file)
    loss_module = "distill/losses.py" if loss == "distillation_loss" else "torch.nn.functional"
    reads = [*files, loss_module] if files[-1] != loss_module else files
    assert reads[:2] == ["cli.py", stage_file] and len(reads) <= MAX_FILES_TO_LOSS, \
        f"dist-peakd {command} reaches {loss} through {len(reads)} files: {' -> '.join(reads)}"
    assert hops <= MAX_HOPS_FROM_RUN, f"{hops} calls from {stage_file}'s run to {loss}"


def test_the_call_path_check_counts_every_file_and_hop():
    """The check above cannot pass vacuously: the old shape (run -> common -> trainer -> engine -> closure)
    is measured as 5 files and 7 hops."""
    pkg = PACKAGE
    old = [(pkg / "stages/distill.py", "loss_fn"), (pkg / "engine/engine.py", "train_step"),
           (pkg / "engine/trainer.py", "train_step"), (pkg / "engine/trainer.py", "train_epoch"),
           (pkg / "engine/trainer.py", "fit"), (pkg / "stages/common.py", "fit_tracked"),
           (pkg / "stages/distill.py", "run"), (pkg / "stages/stage_folder.py", "wrapper"),
           (pkg / "guard.py", "run_guarded"), (pkg / "cli.py", "command"), (pkg / "cli.py", "main"),
           (Path(torch.__file__), "<module>")]
    files, hops = _path_to_loss(old, "stages/distill.py")
    assert files == ["cli.py", "stages/distill.py", "stages/common.py", "engine/trainer.py", "engine/engine.py"]
    assert hops == 7
