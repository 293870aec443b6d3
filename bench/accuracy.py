"""The ablation matrix: teacher, the seven Pea-KD ablations and plain d-layer students, on GLUE dev (mean ± std).

    python bench/accuracy.py --device cuda --tasks mrpc,sst2 --seeds 0,1,2          # the full matrix (GPU)
    python bench/accuracy.py --device cpu --tasks mrpc --seeds 0 --variants kd,pkd,sps_shuffle_pkd,peakd

Every run goes through the product's own stages in one process (finetune-teacher, cache-teacher, ptp,
distill): one teacher and one cache per task (seed 0), one PTP encoder per (seed, student variant),
then each student. Writes JSON + Markdown (``docs/RESULTS.md``, generated, never hand-edited) and a PNG.
Settings default to the issue's orientation run: k=3, lr 5e-5, batch 32, 4 epochs, alpha 0.7, T 10,
beta 100, PTP 2 epochs, median thresholds; metrics of the final checkpoint and the best-on-dev one.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import shlex
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from bench import _common as bench_common  # noqa: E402

os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

# name -> (student variant, use PTP, alpha, beta, label)
VARIANTS: dict[str, tuple[str, bool, float, float, str]] = {
    "no_kd": ("none", False, 0.0, 0.0, "student fine-tuned, no KD"),
    "kd": ("none", False, 0.7, 0.0, "KD"),
    "pkd": ("none", False, 0.7, 100.0, "Patient-KD"),
    "sps_share_pkd": ("share", False, 0.7, 100.0, "SPS-share + PKD"),
    "sps_shuffle_pkd": ("shuffle", False, 0.7, 100.0, "SPS-shuffle + PKD"),
    "ptp_pkd": ("none", True, 0.7, 100.0, "PTP + PKD"),
    "peakd": ("shuffle", True, 0.7, 100.0, "Pea-KD (SPS-shuffle + PTP + PKD)"),
    # plain students (--student plain): variant "plain", their depth and layer map in PLAIN below
    "plain_kd_d2": ("plain", False, 0.7, 0.0, "plain 2-layer KD"),
    "plain_pkd_d2": ("plain", False, 0.7, 100.0, "plain 2-layer Patient-KD"),
    "plain_pkd_d2_alt": ("plain", False, 0.7, 100.0, "plain 2-layer Patient-KD, alternate layers"),
    "plain_pkd_d4": ("plain", False, 0.7, 100.0, "plain 4-layer Patient-KD"),
    "plain_kd_d4": ("plain", False, 0.7, 0.0, "plain 4-layer KD"),
    "plain_pkd_d6": ("plain", False, 0.7, 100.0, "plain 6-layer Patient-KD"),
    "plain_kd_d6": ("plain", False, 0.7, 0.0, "plain 6-layer KD"),
    # SPS entries at a fixed k (the entries above take --k)
    "sps_shuffle_pkd_k2": ("shuffle", False, 0.7, 100.0, "SPS-shuffle + PKD, k=2"),
    "peakd_k2": ("shuffle", True, 0.7, 100.0, "Pea-KD, k=2"),
}
#: name -> (depth, layer map) of the plain-student entries of VARIANTS.
PLAIN: dict[str, tuple[int, str]] = {"plain_kd_d2": (2, "bottom"), "plain_pkd_d2": (2, "bottom"),
                                     "plain_pkd_d2_alt": (2, "alternate"), "plain_pkd_d4": (4, "bottom"),
                                     "plain_kd_d4": (4, "bottom"), "plain_pkd_d6": (6, "bottom"),
                                     "plain_kd_d6": (6, "bottom")}
#: name -> k of the SPS entries whose k is fixed (the other SPS and ``none`` entries take ``--k``).
SPS_K: dict[str, int] = {"sps_shuffle_pkd_k2": 2, "peakd_k2": 2}
#: ``--variants matrix``: the compute-matched matrix for a 6-layer teacher (with ``--k 3``), in run order. Teacher
#: FLOPs (6 effective layers): SPS k=3 with and without PTP, plain 6-layer PKD and KD; 2/3 of them (4 effective
#: layers, the cheapest SPS level at or above half: k=1 runs 2, k=2 runs 4): SPS k=2 +/- PTP, plain 4-layer PKD and
#: KD; half (3 effective layers, no SPS schedule has 3): plain 3-layer PKD and KD (``pkd``/``kd`` with --k 3).
MATRIX: list[str] = ["peakd", "sps_shuffle_pkd", "plain_pkd_d6", "plain_kd_d6",
                     "peakd_k2", "sps_shuffle_pkd_k2", "plain_pkd_d4", "plain_kd_d4", "pkd", "kd"]


def missing_runs(parts: list[dict]) -> set[tuple[str, str, int]]:
    """The (task, variant, seed) students that a part stopped by its time budget asked for and no part ran (a
    follow-up run of the missing students completes a matrix)."""
    ran = {(r["task"], r["variant"], r["seed"]) for part in parts for r in part["runs"]}
    asked = {(task, variant, int(seed)) for part in parts if part["stopped_early"]
             for task in part["settings"]["tasks"].split(",") for variant in variant_names(part["settings"]["variants"])
             for seed in part["settings"]["seeds"].split(",")}
    return asked - ran


def student_options(name: str, k: int) -> dict:
    """The student shape options of a VARIANTS entry: ``k``/``variant`` (SPS) or ``student``/``depth``/``layer_map``."""
    if name in PLAIN:
        depth, layer_map = PLAIN[name]
        return {"student": "plain", "depth": depth, "layer_map": layer_map}
    return {"k": SPS_K.get(name, k), "variant": VARIANTS[name][0]}


def variant_names(spec: str) -> list[str]:
    """``--variants``: comma-separated VARIANTS names; ``matrix`` stands for :data:`MATRIX`."""
    names: list[str] = []
    for name in filter(None, spec.split(",")):
        names += MATRIX if name == "matrix" else [name]
    return list(dict.fromkeys(names))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--tasks", default="mrpc,sst2")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--variants", default=",".join(VARIANTS))
    p.add_argument("--k", type=int, default=3)
    p.add_argument("--lr", type=float, default=5e-5)
    p.add_argument("--batch_size", type=int, default=32)
    p.add_argument("--epochs", type=float, default=4.0)
    p.add_argument("--teacher_epochs", type=float, default=3.0)
    p.add_argument("--teacher_lr", type=float, default=5e-5)
    p.add_argument("--teacher_seeds", default="0",
                   help="teachers to fine-tune and report; students distill from the first one's cache")
    p.add_argument("--label", default=None, help="a title for this report's section in RESULTS.md")
    p.add_argument("--ptp_epochs", type=float, default=2.0)
    p.add_argument("--ptp_lr", type=float, default=5e-5)
    p.add_argument("--temperature", type=float, default=10.0)
    p.add_argument("--alpha", type=float, default=0.7)
    p.add_argument("--beta", type=float, default=100.0)
    p.add_argument("--max_length", type=int, default=128)
    p.add_argument("--max_train_examples", type=int, default=None)
    p.add_argument("--eval_every_steps", type=int, default=0)
    p.add_argument("--precision", default=None, help="default bf16 on cuda, fp32 on cpu")
    p.add_argument("--ds_config", default=None)
    p.add_argument("--glue_dir", default=None)
    p.add_argument("--backbone", default="minilm")
    p.add_argument("--work_dir", default="runs/accuracy")
    p.add_argument("--time_budget_s", type=float, default=None, help="stop starting new runs after this")
    p.add_argument("--out_json", default=None)
    p.add_argument("--out_md", default=str(DEFAULT_MD))
    p.add_argument("--phase", choices=["all", "teacher", "students", "report", "render"], default="all",
                   help="teacher: teachers + caches only; students: students only (teachers must exist), "
                        "e.g. one process per seed in parallel; report: merge --inputs into the report; "
                        "render: redraw --out_md from the reports in docs/bench/")
    p.add_argument("--inputs", default=None, help="with --phase report: comma-separated JSON files to merge")
    args = p.parse_args()
    unknown = [v for v in variant_names(args.variants) if v not in VARIANTS]
    if unknown:
        p.error(f"--variants: unknown {unknown}; expected 'matrix' or names from {list(VARIANTS)}")
    if args.phase == "render":
        render_outputs(load_reports(REPO / "docs" / "bench"), Path(args.out_md))
        return
    if args.phase == "report":
        parts = [json.loads(Path(f).read_text()) for f in args.inputs.split(",")]
        report = parts[0] | {"runs": [r for part in parts for r in part["runs"]],
                             "stopped_early": bool(missing_runs(parts)),
                             "wall_time_s": max(part["wall_time_s"] for part in parts),
                             "commands": [c for part in parts for c in commands_of(part)],
                             "label": args.label or parts[0].get("label")}
        report.pop("command", None)
        teacher_runs = {(r["task"], r["variant"], r["seed"]) for r in report["runs"] if r["variant"] == "teacher"}
        seen, runs = set(), []
        for r in report["runs"]:  # each teacher once
            key = (r["task"], r["variant"], r["seed"])
            if key in teacher_runs and key in seen:
                continue
            seen.add(key)
            runs.append(r)
        report["runs"] = runs
        write_outputs(report, args)
        return
    os.environ.setdefault("DS_ACCELERATOR", "cuda" if args.device == "cuda" else "cpu")
    precision = args.precision or ("bf16" if args.device == "cuda" else "fp32")
    ds_config = args.ds_config or ("bf16_zero0" if args.device == "cuda" else "fp32_zero0")

    from dist_peakd.config import build_options
    from dist_peakd.stages import cache_teacher, distill, finetune_teacher, ptp

    t_start = time.perf_counter()
    work = Path(args.work_dir)
    common = dict(glue_dir=args.glue_dir, backbone=args.backbone, max_length=args.max_length,
                  batch_size=args.batch_size, precision=precision, ds_config=ds_config,
                  max_train_examples=args.max_train_examples, eval_every_steps=args.eval_every_steps,
                  log_every_steps=50, cache_dir=str(work / "tok"))
    runs: list[dict] = []
    stopped_early = False

    def out_of_time() -> bool:
        return args.time_budget_s is not None and time.perf_counter() - t_start > args.time_budget_s

    variants = variant_names(args.variants)
    teacher_seeds = [int(t) for t in args.teacher_seeds.split(",")]
    for task in args.tasks.split(","):
        base = work / "base"
        for i, teacher_seed in enumerate(teacher_seeds if args.phase != "students" else teacher_seeds[:1]):
            t0 = time.perf_counter()
            teacher_base = base if i == 0 else work / f"base-teacher-seed{teacher_seed}"
            if args.phase == "students":
                teacher = json.loads((base / task / "teacher" / "summary.json").read_text())
            else:
                teacher = finetune_teacher.run(build_options(
                    finetune_teacher.FinetuneTeacherOptions, **common, task=task, output_dir=str(teacher_base),
                    seed=teacher_seed, epochs=args.teacher_epochs, lr=args.teacher_lr))
                if i == 0 and (args.phase == "teacher" or variants):  # the students' teacher: cache it
                    cache_fields = {f.name for f in dataclasses.fields(cache_teacher.CacheTeacherOptions)}
                    cache_teacher.run(build_options(  # the options of the cache-teacher command only
                        cache_teacher.CacheTeacherOptions, task=task, output_dir=str(base),
                        **{k: v for k, v in common.items() if k in cache_fields}))
            runs.append({"task": task, "variant": "teacher", "seed": teacher_seed, "final": teacher["final"],
                         "best": teacher["best"], "model_stats": teacher["model_stats"],
                         "baseline": (teacher.get("baseline") or {}).get("metrics"),
                         "wall_s": time.perf_counter() - t0})
        teacher_dir = str(base / task / "teacher" / "best")
        cache_dir = str(base / task / "teacher_cache")
        for seed in ([] if args.phase == "teacher" else map(int, args.seeds.split(","))):
            seed_dir = work / f"seed{seed}"
            for name in variants:
                if out_of_time():
                    stopped_early = True
                    break
                _, use_ptp, alpha, beta, _ = VARIANTS[name]
                t0 = time.perf_counter()
                ptp_dir = None
                if use_ptp:
                    popts = build_options(ptp.PTPOptions, **common, task=task, output_dir=str(seed_dir), seed=seed,
                                          **student_options(name, args.k), epochs=args.ptp_epochs, lr=args.ptp_lr,
                                          teacher_dir=teacher_dir, teacher_cache_dir=cache_dir)
                    ptp_stage = seed_dir / task / popts.stage_name()
                    if not (ptp_stage / "summary.json").is_file():
                        ptp.run(popts)
                    ptp_dir = str(ptp_stage / "best")
                summary = distill.run(build_options(
                    distill.DistillOptions, **common, task=task, output_dir=str(seed_dir), seed=seed,
                    **student_options(name, args.k), use_ptp=use_ptp, ptp_dir=ptp_dir, alpha=alpha, beta=beta,
                    temperature=args.temperature, epochs=args.epochs, lr=args.lr,
                    teacher_dir=teacher_dir, teacher_cache_dir=cache_dir, run_name=f"{name}"))
                runs.append({"task": task, "variant": name, "seed": seed, "final": summary["final"],
                             "best": summary["best"], "model_stats": summary["model_stats"],
                             "baseline": (summary.get("baseline") or {}).get("metrics"),
                             "wall_s": time.perf_counter() - t0})
                print(f"[accuracy] {task} seed {seed} {name}: final {summary['final']} ({runs[-1]['wall_s']:.0f} s)",
                      flush=True)
    report = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
              "label": args.label, "command": shlex.join(["python", *sys.argv]),
              "settings": vars(args) | {"precision": precision, "ds_config": ds_config},
              "environment": bench_common.environment(args.device), "runs": runs, "stopped_early": stopped_early,
              "wall_time_s": round(time.perf_counter() - t_start, 1)}
    if args.phase == "teacher":
        return
    if args.phase == "students":
        out_json = Path(args.out_json)
        out_json.parent.mkdir(parents=True, exist_ok=True)
        out_json.write_text(json.dumps(report, indent=2, default=str))
        return
    write_outputs(report, args)


DEFAULT_MD = REPO / "docs" / "RESULTS.md"
#: The issue's orientation run (an independent implementation of the method spec on an H200, MRPC, this backbone,
#: k=3, the default settings above; dev F1 x100 of the final checkpoint, mean ± std of 3 seeds). Reference values
#: quoted from the issue, shown beside ours, never mixed into our numbers.
ORIENTATION_MRPC_F1: dict[str, tuple[float, float]] = {
    "teacher": (86.9, 0.0), "no_kd": (80.5, 0.5), "kd": (81.6, 0.6), "pkd": (81.4, 0.3),
    "sps_shuffle_pkd": (83.1, 0.2), "peakd": (83.2, 0.2),
}


def write_outputs(report: dict, args: argparse.Namespace) -> None:
    """Write this run's JSON, then the Markdown + PNG: with the default ``--out_md`` (docs/RESULTS.md) they show
    every report in docs/bench/accuracy-*.json (e.g. the GPU matrix and the CPU subset), else this run only."""
    device = "cpu" if "CPU" in report["environment"]["device"] else "cuda"  # a merged report: its parts' device
    out_json = Path(args.out_json or REPO / "docs" / "bench" / f"accuracy-{device}.json")
    out_json.parent.mkdir(parents=True, exist_ok=True)
    out_json.write_text(json.dumps(report, indent=2, default=str))
    out_md = Path(args.out_md)
    reports = load_reports(REPO / "docs" / "bench") if out_md.resolve() == DEFAULT_MD.resolve() else [report]
    render_outputs(reports, out_md)


def load_reports(folder: Path) -> list[dict]:
    """Every accuracy report in ``folder`` (accuracy-*.json), GPU reports first, then by date."""
    reports = [json.loads(f.read_text()) for f in sorted(folder.glob("accuracy-*.json"))]
    return sorted(reports, key=lambda r: ("CPU" in r["environment"]["device"], r["date"]))


def render_outputs(reports: list[dict], out_md: Path) -> None:
    md = render_markdown(reports)
    out_md.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_md.with_suffix(".md.tmp")
    tmp.write_text(md)
    tmp.replace(out_md)
    plot(reports, out_md.with_suffix(".png"))
    print(md)


def commands_of(report: dict) -> list[str]:
    """The command(s) that produced a report (a merged report lists one per part)."""
    if "commands" in report:
        return list(report["commands"])
    return [c.strip() for c in report["command"].split(" | ")]  # older merged reports joined them with " | "


def aggregate(report: dict) -> list[dict]:
    """One row per (task, variant): mean ± std of the task's metrics over seeds, final and best."""
    from dist_peakd.data import get_task

    rows = []
    tasks = dict.fromkeys(r["task"] for r in report["runs"])
    for task in tasks:
        metrics = list(get_task(task).metrics)
        for variant in ["teacher", *VARIANTS]:
            rs = [r for r in report["runs"] if r["task"] == task and r["variant"] == variant]
            if not rs:
                continue
            row = {"task": task, "variant": variant, "seeds": len(rs), "metrics": metrics,
                   "parameters": rs[0]["model_stats"]["parameters"],
                   "flops_per_token": rs[0]["model_stats"]["flops_per_token"],
                   "wall_s": statistics.mean(r["wall_s"] for r in rs)}
            for which in ("final", "best"):
                for m in metrics:
                    vals = [100 * r[which][m] for r in rs]
                    row[f"{which}_{m}"] = (statistics.mean(vals), statistics.stdev(vals) if len(vals) > 1 else 0.0)
            rows.append(row)
    return rows


def target_lines(rows: list[dict]) -> list[str]:
    """The issue's accuracy targets, checked against this report's rows (final checkpoint, main metric)."""
    from dist_peakd.data import get_task

    def final(task: str, variant: str) -> tuple[float, float, int] | None:
        row = next((r for r in rows if r["task"] == task and r["variant"] == variant), None)
        return None if row is None else (*row[f"final_{get_task(task).main_metric}"], row["seeds"])

    lines = []
    peakd = final("mrpc", "peakd")
    ref = ORIENTATION_MRPC_F1["peakd"]
    if peakd is None:
        lines.append("- Pea-KD on MRPC >= the orientation run: not measured in this report")
    else:
        verdict = "met" if peakd[0] >= ref[0] else f"missed by {ref[0] - peakd[0]:.2f} points"
        lines.append(f"- Pea-KD on MRPC (F1, final) >= orientation {ref[0]:.1f} ± {ref[1]:.1f}: "
                     f"{format_stat(peakd[:2], peakd[2])} ({seeds_text(peakd[2])}) -> {verdict}")
    gaps = {}
    for task in ("mrpc", "sst2"):
        pk, kd = final(task, "peakd"), final(task, "kd")
        if pk is not None and kd is not None:
            gaps[task] = pk[0] - kd[0]
    shown = ", ".join(f"{t}: {g:+.2f}" for t, g in gaps.items()) or "neither task has both"
    if gaps:
        shown += f"; {seeds_text(min(final(t, v)[2] for t in gaps for v in ('peakd', 'kd')))}"
    if len(gaps) == 2:
        mean_gap = statistics.mean(gaps.values())
        lines.append(f"- Pea-KD - KD, mean of MRPC and SST-2 >= 1.5 points: {mean_gap:+.2f} ({shown}) -> "
                     f"{'met' if mean_gap >= 1.5 else 'missed'}")
    else:
        lines.append(f"- Pea-KD - KD, mean of MRPC and SST-2 >= 1.5 points: not measurable here ({shown}; "
                     "needs both tasks)")
    return lines


def format_stat(stat: tuple[float, float], seeds: int) -> str:
    """``mean ± std`` over seeds; a single seed has no spread to show."""
    return f"{stat[0]:.2f} ± {stat[1]:.2f}" if seeds > 1 else f"{stat[0]:.2f}"


def seeds_text(n: int) -> str:
    return f"{n} seed{'s' if n != 1 else ''}"


def render_report(report: dict) -> list[str]:
    env = report["environment"]
    commands = commands_of(report)
    rows = aggregate(report)
    title = f"{env['device']}: {report['date'][:10]}" + (f", {report['label']}" if report.get("label") else "")
    lines = [f"## {title}", "",
             f"- hardware: {env['device']}; torch {env['torch']}, deepspeed {env['deepspeed']}",
             f"- date: {report['date']}; "
             + (f"wall time: {report['wall_time_s']} s (the longest of the merged runs)" if len(commands) > 1
                else f"total wall time: {report['wall_time_s']} s")
             + (" (time budget reached: matrix incomplete)" if report["stopped_early"] else ""),
             "- command" + ("s (their reports merged with `--phase report`):" if len(commands) > 1 else ":"),
             *[f"  - `{c}`" for c in commands], ""]
    for task in dict.fromkeys(r["task"] for r in report["runs"]):
        task_rows = [r for r in rows if r["task"] == task]
        metrics = task_rows[0]["metrics"]
        orientation = task == "mrpc"
        cols = ["model", "seeds", *[f"{m} final" for m in metrics], *[f"{m} best" for m in metrics],
                *(["f1 final, orientation run"] if orientation else []), "parameters", "MFLOPs/token", "wall s/run"]
        lines += [f"### {task}", "", "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
        for r in task_rows:
            label = "teacher" if r["variant"] == "teacher" else VARIANTS[r["variant"]][4]
            vals = [label, str(r["seeds"])]
            vals += [format_stat(r[f"final_{m}"], r["seeds"]) for m in metrics]
            vals += [format_stat(r[f"best_{m}"], r["seeds"]) for m in metrics]
            if orientation:
                ref = ORIENTATION_MRPC_F1.get(r["variant"])
                vals.append((f"{ref[0]:.1f} ± {ref[1]:.1f}" if ref[1] else f"{ref[0]:.1f}") if ref else "-")
            wall = f"{r['wall_s']:.0f}" if r["wall_s"] >= 0.5 else "-"  # a teacher read back, not trained here
            vals += [f"{r['parameters']:,}", f"{r['flops_per_token'] / 1e6:.1f}", wall]
            lines.append("| " + " | ".join(vals) + " |")
        lines.append("")
        teachers = [r for r in report["runs"] if r["task"] == task and r["variant"] == "teacher"]
        if len(teachers) > 1 and len(task_rows) > 1:
            main = metrics[0]
            per_seed = ", ".join(f"seed {r['seed']}: {100 * r['final'][main]:.2f}" for r in teachers)
            lines += [f"Teachers by seed ({main} final): {per_seed}; the students learned from the seed "
                      f"{teachers[0]['seed']} teacher.", ""]
        lines += compute_matched_lines(report, task, task_rows)
    lines += ["Targets (computed from the rows above):", "", *target_lines(rows), ""]
    return lines


def student_kind(variant: str) -> str:
    """``SPS`` (a schedule that runs layers twice) or ``plain`` (each layer once: ``none`` and ``--student plain``)."""
    return "SPS" if VARIANTS[variant][0] in ("share", "shuffle") else "plain"


def paired(report: dict, task: str, a: str, b: str, metric: str) -> list[float]:
    """Per-seed differences ``a - b`` (x100, final checkpoint) over the seeds both variants ran."""
    def by_seed(variant: str) -> dict[int, float]:
        return {r["seed"]: 100 * r["final"][metric] for r in report["runs"]
                if r["task"] == task and r["variant"] == variant}
    sa, sb = by_seed(a), by_seed(b)
    return [sa[s] - sb[s] for s in sorted(sa.keys() & sb.keys())]


def verdict(diffs: list[float], a: str, b: str) -> str:
    """What per-seed differences ``a - b`` say: a win needs every seed on the same side (and at least 2 seeds)."""
    if not diffs:
        return "no common seeds"
    shown = f"{statistics.mean(diffs):+.2f} points (per seed: {', '.join(f'{d:+.2f}' for d in diffs)})"
    if len(diffs) >= 2 and all(d > 0 for d in diffs):
        return f"{shown}: **{a} wins** on every seed"
    if len(diffs) >= 2 and all(d < 0 for d in diffs):
        return f"{shown}: **{b} wins** on every seed"
    return f"{shown}: **as good** (the seeds disagree{'' if len(diffs) >= 2 else '; one seed'})"


def compute_matched_lines(report: dict, task: str, task_rows: list[dict]) -> list[str]:
    """The students grouped by FLOPs per token (x the teacher's) with the teacher and the trivial baseline, the
    share of the teacher's gain each keeps, and the verdicts at equal compute; empty unless some FLOPs level has
    both an SPS and a plain student."""
    from dist_peakd.data import get_task
    from dist_peakd.metrics import gain_kept

    teacher = next((r for r in task_rows if r["variant"] == "teacher"), None)
    students = [r for r in task_rows if r["variant"] != "teacher"]
    if teacher is None:
        return []
    level = {r["variant"]: round(r["flops_per_token"] / teacher["flops_per_token"], 2) for r in students}
    levels = sorted(set(level.values()), reverse=True)
    kinds = {lv: {student_kind(v) for v, x in level.items() if x == lv} for lv in levels}
    if not any(k == {"SPS", "plain"} for k in kinds.values()):
        return []
    main, metrics = get_task(task).main_metric, teacher["metrics"]
    k = report.get("settings", {}).get("k", 3)  # the depth of the ``none`` entries (plain k-layer students)
    label = {v: VARIANTS[v][4] + (f" (plain {k}-layer)" if VARIANTS[v][0] == "none" else "") for v in VARIANTS}
    base = next((r["baseline"] for r in report["runs"] if r["task"] == task and r.get("baseline")), None)
    t_main = teacher[f"final_{main}"][0]
    b_main = None if base is None else 100 * base[main]

    def kept(value: float) -> str:
        share = None if b_main is None else gain_kept(value, b_main, t_main)
        return "-" if share is None else f"{round(100 * share):d}%"  # an int: no "-0%"

    cols = ["FLOPs/token (x teacher)", "model", "kind", "parameters (x teacher)", "seeds",
            *[f"{m} final" for m in metrics], f"gain kept ({main})"]
    lines = [f"#### {task}: students at equal compute", "",
             "Grouped by FLOPs per token as a share of the teacher's; `gain kept` = (student - baseline) / "
             "(teacher - baseline) on the mean final " + main + ".", "",
             "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols),
             "| 1.00 | teacher | plain | 1.00 | " + str(teacher["seeds"]) + " | "
             + " | ".join(format_stat(teacher[f"final_{m}"], teacher["seeds"]) for m in metrics) + " | 100% |"]
    if base is not None:
        lines.append("| - | trivial baseline (majority class / mean, same dev rows) | - | - | - | "
                     + " | ".join(f"{100 * base[m]:.2f}" for m in metrics) + " | 0% |")
    for lv in levels:
        for r in sorted((r for r in students if level[r["variant"]] == lv),
                        key=lambda r: (student_kind(r["variant"]) != "SPS", r["variant"])):
            vals = [f"{lv:.2f}", label[r["variant"]], student_kind(r["variant"]),
                    f"{r['parameters'] / teacher['parameters']:.2f}", str(r["seeds"]),
                    *[format_stat(r[f"final_{m}"], r["seeds"]) for m in metrics], kept(r[f"final_{main}"][0])]
            lines.append("| " + " | ".join(vals) + " |")
    lines += ["", f"Verdicts ({main}, final checkpoint; a win needs every seed on the same side):", ""]

    def best(lv: float, kind: str) -> dict | None:
        pool = [r for r in students if level[r["variant"]] == lv and student_kind(r["variant"]) == kind]
        return max(pool, key=lambda r: r[f"final_{main}"][0], default=None)

    sps_levels = [lv for lv in levels if "SPS" in kinds[lv]]
    for lv in levels:
        plain = best(lv, "plain")
        if plain is None:
            continue
        if "SPS" in kinds[lv]:
            for r in sorted((r for r in students if level[r["variant"]] == lv and student_kind(r["variant"]) == "SPS"),
                            key=lambda r: r["variant"]):
                a, b = r["variant"], plain["variant"]
                lines.append(f"- {lv:.2f}x the teacher's FLOPs: {label[a]} - {label[b]} (the best plain student "
                             f"there): {verdict(paired(report, task, a, b, main), label[a], label[b])}")
        else:
            above = [x for x in sps_levels if x > lv]
            if above:
                sps = best(min(above), "SPS")
                a, b = sps["variant"], plain["variant"]
                lines.append(f"- {lv:.2f}x: no SPS student has this cost; the best SPS student at {min(above):.2f}x, "
                             f"{label[a]}, - {label[b]} ({lv:.2f}x): "
                             f"{verdict(paired(report, task, a, b, main), label[a], label[b])}")
    for r in sorted(students, key=lambda r: r["variant"]):  # PTP's part: the same SPS student without it
        name, (variant, use_ptp, *_rest) = r["variant"], VARIANTS[r["variant"]]
        twin = next((x["variant"] for x in students if student_kind(name) == "SPS" and use_ptp
                     and VARIANTS[x["variant"]][0] == variant and not VARIANTS[x["variant"]][1]
                     and level[x["variant"]] == level[name] and x["parameters"] == r["parameters"]), None)
        if twin:
            lines.append(f"- PTP at {level[name]:.2f}x: {label[name]} - {label[twin]}: "
                         f"{verdict(paired(report, task, name, twin, main), label[name], label[twin])}")
    for r in sorted(students, key=lambda r: r["variant"]):  # equal parameters (the paper's comparison)
        name = r["variant"]
        same = [x for x in students if student_kind(x["variant"]) == "plain" and x["parameters"] == r["parameters"]
                and VARIANTS[x["variant"]][3] > 0 and not VARIANTS[x["variant"]][1]]
        if student_kind(name) == "SPS" and VARIANTS[name][1] and same:
            b = same[0]["variant"]
            lines.append(f"- equal parameters, {level[name] / level[b]:.1f}x the FLOPs: {label[name]} - {label[b]}: "
                         f"{verdict(paired(report, task, name, b, main), label[name], label[b])}")
    lines.append("")
    return lines


def render_markdown(reports: list[dict]) -> str:
    lines = ["# Accuracy: the Pea-KD ablation matrix", "",
             "Generated by `bench/accuracy.py` from `docs/bench/accuracy-*.json`; do not edit by hand.", "",
             "Metrics x100 on GLUE dev, mean ± sample std over the seeds run (a single seed: the value); "
             "`final` = last checkpoint, `best` = best "
             "evaluation on dev (optimistic, as in the reference code). The orientation column quotes the issue's "
             "independent run (H200, same backbone and settings) for comparison; it is not ours. What the numbers "
             "show and what is missing: [ACCURACY_NOTES.md](ACCURACY_NOTES.md).", ""]
    for report in reports:
        lines += render_report(report)
    return "\n".join(lines)


def plot(reports: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [(report, task, [r for r in aggregate(report) if r["task"] == task])
              for report in reports for task in dict.fromkeys(r["task"] for r in report["runs"])]
    fig, axes = plt.subplots(1, len(panels), figsize=(6 * len(panels), 4.2), squeeze=False)
    for ax, (report, task, rs) in zip(axes[0], panels, strict=True):
        m = rs[0]["metrics"][0]
        names = [r["variant"] for r in rs]
        means = [r[f"final_{m}"][0] for r in rs]
        stds = [r[f"final_{m}"][1] for r in rs]
        ax.bar(range(len(rs)), means, yerr=stds, color=["grey" if n == "teacher" else "tab:blue" for n in names])
        ax.set_xticks(range(len(rs)), names, rotation=35, ha="right", fontsize=8)
        ax.set_ylabel(f"dev {m} (final) x100")
        ax.set_ylim(min(means) - 10, max(means) + 5)
        seeds = max((r["seeds"] for r in rs if r["variant"] != "teacher"), default=rs[0]["seeds"])
        label = report.get("label") or ""
        label = f"\n{label[:60]}{'...' if len(label) > 60 else ''}" if label else ""
        ax.set_title(f"{task}: {report['environment']['device']}, students: {seeds_text(seeds)}{label}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    main()
