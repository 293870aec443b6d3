"""The end of ``dist-peakd compress``: the front (``front.{md,json,png}``), the choice under the budget, the
chosen student exported (``chosen/onnx``, ``chosen/hf``) and carded with the front; or, when nothing meets
the budget, the closest candidate named and nothing exported."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from .. import console
from ..artifacts import atomic_write_text
from ..layout import SUMMARY
from ..sweep.front import choose, closest, describe_misses, front_table, pareto_front, to_json

CARD_SECTION = "Compression front"


def baseline_block(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The trivial-baseline block of the first trial summary that records one (every trial scores the same
    dev rows; a trial the scheduler ended records none), with the teacher's main metric on them."""
    for row in rows:
        try:
            block = json.loads((Path(row["run_dir"]) / SUMMARY).read_text()).get("baseline")
        except (OSError, ValueError):
            continue
        if isinstance(block, dict) and block.get("metrics"):
            return block
    return {}


def _baseline_line(block: dict[str, Any], main: str) -> str:
    if not block:
        return "Trivial baseline: not recorded by the trials."
    teacher = block.get("teacher")
    return (f"Teacher {main} {teacher:.4f}; " if teacher is not None else "Teacher: not recorded; ") + \
        (f"trivial baseline ({block.get('label')}, same {block.get('rows')} dev rows) {main} "
         f"{float(block['metrics'][main]):.4f}. `gain_kept`: the share of the teacher's gain over that baseline the "
         "candidate keeps (on its graph); `drop_points`: points below the teacher.")


def _conditions_line(c: dict[str, Any]) -> str:
    return (f"Latency: median of {c['runs']} runs after {c['warmup']} warm-up run(s), {c['runtime']}, "
            f"{c['threads']} thread(s), batch {c['batch']} x seq {c['seq']} (every position a token), on "
            f"{c['machine']}. Size: the graph file. Metric: dev {{main}} of the exported graph (onnxruntime).")


def _outcome_lines(chosen: Any, near: Any, budget: Any, main: str) -> list[str]:
    if chosen is not None:
        gain = chosen.get("gain_kept")
        return [f"Chosen ({budget.objective}): **{chosen['name']}** ({chosen['student']}, {chosen['precision']}): "
                f"{main} {chosen['metric']:.4f}"
                + (f", {chosen['drop_points']:.2f} points below the teacher" if chosen.get("drop_points") is not None
                   else "")
                + (f", keeps {100 * gain:.0f}% of the teacher's gain" if gain is not None else "")
                + f", {chosen['latency_ms']:.2f} ms, {chosen['size_mb']:.1f} MB -> chosen/onnx, chosen/hf."]
    if near is None:
        return ["**Nothing meets the budget**: no trial ran to its end, so there is nothing to measure."]
    point, missed = near
    return [f"**Nothing meets the budget** ({budget.describe()}); nothing exported. Closest: **{point['name']}** "
            f"({point['student']}, {point['precision']}; {main} {point['metric']:.4f}, {point['latency_ms']:.2f} ms, "
            f"{point['size_mb']:.1f} MB): {describe_misses(missed, budget)}."]


def render(name: str, task: Any, points: list[dict[str, Any]], front: list[Any], chosen: Any, near: Any,
           budget: Any, block: dict[str, Any], conditions: dict[str, Any], notes: list[str], trials: int) -> str:
    main = task.main_metric
    lines = [f"## dist-peakd compress {name} ({task.name}: {trials} trials, {len(points)} candidates, "
             f"{len(front)} on the front)", "",
             f"Budget: {budget.describe()}.", "", _baseline_line(block, main), "",
             _conditions_line(conditions).replace("{main}", main), "",
             "### Pareto front (metric vs latency vs size: no other candidate is at least as good on all three and "
             "better on one)", "", front_table(front, main, chosen), "", *_outcome_lines(chosen, near, budget, main)]
    dominated = [p for p in points if all(p is not q for q in front)]
    if dominated:
        lines += ["", "### Dominated candidates", "", front_table(dominated, main)]
    low = [p["name"] for p in points if p.get("at_or_below_baseline")]
    if low:
        lines += ["", f"**Warning**: {len(low)} of {len(points)} candidates score at or below the trivial baseline on "
                  f"{main} (no better than the constant predictor): {', '.join(low)}."]
    if notes:
        lines += ["", "Not measured: " + "; ".join(notes)]
    return "\n".join(lines) + "\n"


def export_chosen(opts: Any, chosen: dict[str, Any], section: str, conditions: dict[str, Any], out_dir: Path
                  ) -> dict[str, str]:
    """The chosen trial's checkpoint (``final/``, see :func:`.compress_search.checkpoint_of`) as ONNX (int8 too
    when chosen) and HF (compact), carded with the front."""
    from ..config import build_options
    from ..export import read_folder_record, update_card
    from .compress_trial import GRAPH_COLUMNS, GRAPH_FILES, export_options, measure_options
    from .export import ExportOptions, export_folder

    final, measure = Path(chosen["run_dir"]) / chosen["checkpoint"], measure_options(opts)
    shutil.rmtree(out_dir, ignore_errors=True)  # an earlier (resumed) run's choice
    folders = {"onnx": out_dir / "onnx", "hf": out_dir / "hf"}
    export_folder(export_options(final, folders["onnx"], measure, chosen["precision"] == "int8"))
    export_folder(build_options(ExportOptions, model_dir=str(final), format="hf", out=str(folders["hf"]),
                                **measure.data))
    row = {"runtime": f"onnxruntime {chosen['precision']} ({GRAPH_FILES[chosen['precision']]})",
           "batch": conditions["batch"], "seq": conditions["seq"], "threads": conditions["threads"],
           "median_ms": round(chosen["latency_ms"], 3), "machine": conditions["machine"]}
    demoted = "\n".join("#" + line if line.startswith("#") else line for line in section.splitlines())  # under ##
    for folder in folders.values():
        dev = dict(read_folder_record(folder)["card"]["dev_metrics"])
        dev[GRAPH_COLUMNS[chosen["precision"]]] = chosen["metrics"]
        update_card(folder, latency=[row], dev_metrics=dev, sections={CARD_SECTION: demoted})
    return {k: str(v) for k, v in folders.items()}


def finish(opts: Any, task: Any, sweep_dir: Path, rows: list[dict[str, Any]], points: list[dict[str, Any]],
           notes: list[str], conditions: dict[str, Any]) -> dict[str, Any]:
    """Front, choice, reports, export; console lines. Returns the compress result."""
    from ..sweep.front_plot import plot_front

    budget, main = opts.budget(), task.main_metric
    block = baseline_block(rows)
    teacher = block.get("teacher")
    front = pareto_front(points)
    chosen, feasible = choose(points, budget, teacher)
    near = None if chosen is not None else closest(points, budget, teacher)
    name = sweep_dir.name.removeprefix("sweep-")
    md = render(name, task, points, front, chosen, near, budget, block, conditions, notes, len(rows))
    floor = None if teacher is None or budget.max_metric_drop is None else teacher - budget.max_metric_drop / 100
    plot = plot_front(points, front, sweep_dir / "front.png", main, chosen,
                      {"teacher": teacher, f"trivial baseline ({block.get('label')})":
                       (block.get("metrics") or {}).get(main), "budget: lowest metric": floor}, budget.max_latency_ms)
    atomic_write_text(sweep_dir / "front.md", md + (f"\n![front]({plot.name})\n" if plot else ""))
    if chosen is None:  # an earlier run of this search (another budget) chose one: not this run's answer
        shutil.rmtree(sweep_dir / "chosen", ignore_errors=True)
    exported = export_chosen(opts, dict(chosen), md, conditions, sweep_dir / "chosen") if chosen else None
    result = {"compress_dir": str(sweep_dir), "task": task.name, "metric": main, "budget": budget.__dict__,
              "teacher": teacher, "baseline": block or None, "conditions": conditions, "points": points,
              "front": [p["name"] for p in front], "chosen": chosen, "feasible": [p["name"] for p in feasible],
              "closest": ({"name": near[0]["name"], "trial": near[0]["trial"], "misses": near[1]} if near else None),
              "exported": exported, "notes": notes, "plot": str(plot) if plot else None}
    atomic_write_text(sweep_dir / "front.json", to_json(result))
    console.echo(md)
    for line in _outcome_lines(chosen, near, budget, main):
        (console.info if chosen is not None else console.warn)(line.replace("**", ""))
    if chosen is not None and chosen.get("at_or_below_baseline"):
        console.warn(f"the chosen student's {main} {chosen['metric']:.4f} is at or below the trivial baseline's "
                     f"({block.get('label')}): it is no better than the constant predictor")
    console.info(f"front: {sweep_dir / 'front.md'} (and .json{', .png' if plot else ''})")
    return result
