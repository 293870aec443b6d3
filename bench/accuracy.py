"""The ablation matrix: teacher and seven students on GLUE dev, mean ± std over seeds.

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
import datetime
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
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
}


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
    p.add_argument("--out_md", default=str(REPO / "docs" / "RESULTS.md"))
    p.add_argument("--phase", choices=["all", "teacher", "students", "report"], default="all",
                   help="teacher: teachers + caches only; students: students only (teachers must exist), "
                        "e.g. one process per seed in parallel; report: merge --inputs into the report")
    p.add_argument("--inputs", default=None, help="with --phase report: comma-separated JSON files to merge")
    args = p.parse_args()
    if args.phase == "report":
        parts = [json.loads(Path(f).read_text()) for f in args.inputs.split(",")]
        report = parts[0] | {"runs": [r for part in parts for r in part["runs"]],
                             "stopped_early": any(part["stopped_early"] for part in parts),
                             "wall_time_s": max(part["wall_time_s"] for part in parts),
                             "command": " | ".join(part["command"] for part in parts)}
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

    for task in args.tasks.split(","):
        base = work / "base"
        t0 = time.perf_counter()
        if args.phase == "students":
            teacher = json.loads((base / task / "teacher" / "summary.json").read_text())
        else:
            teacher = finetune_teacher.run(build_options(
                finetune_teacher.FinetuneTeacherOptions, **common, task=task, output_dir=str(base), seed=0,
                epochs=args.teacher_epochs, lr=args.teacher_lr))
            cache_teacher.run(build_options(cache_teacher.CacheTeacherOptions, **common, task=task,
                                            output_dir=str(base)))
        runs.append({"task": task, "variant": "teacher", "seed": 0, "final": teacher["final"], "best": teacher["best"],
                     "model_stats": teacher["model_stats"], "wall_s": time.perf_counter() - t0})
        teacher_dir = str(base / task / "teacher" / "best")
        cache_dir = str(base / task / "teacher_cache")
        for seed in ([] if args.phase == "teacher" else map(int, args.seeds.split(","))):
            seed_dir = work / f"seed{seed}"
            for name in args.variants.split(","):
                if out_of_time():
                    stopped_early = True
                    break
                variant, use_ptp, alpha, beta, _ = VARIANTS[name]
                t0 = time.perf_counter()
                ptp_dir = None
                if use_ptp:
                    popts = build_options(ptp.PTPOptions, **common, task=task, output_dir=str(seed_dir), seed=seed,
                                          k=args.k, variant=variant, epochs=args.ptp_epochs, lr=args.ptp_lr,
                                          teacher_dir=teacher_dir, teacher_cache_dir=cache_dir)
                    ptp_stage = seed_dir / task / popts.stage_name()
                    if not (ptp_stage / "summary.json").is_file():
                        ptp.run(popts)
                    ptp_dir = str(ptp_stage / "best")
                summary = distill.run(build_options(
                    distill.DistillOptions, **common, task=task, output_dir=str(seed_dir), seed=seed, k=args.k,
                    variant=variant, use_ptp=use_ptp, ptp_dir=ptp_dir, alpha=alpha, beta=beta,
                    temperature=args.temperature, epochs=args.epochs, lr=args.lr,
                    teacher_dir=teacher_dir, teacher_cache_dir=cache_dir, run_name=f"{name}"))
                runs.append({"task": task, "variant": name, "seed": seed, "final": summary["final"],
                             "best": summary["best"], "model_stats": summary["model_stats"],
                             "wall_s": time.perf_counter() - t0})
                print(f"[accuracy] {task} seed {seed} {name}: final {summary['final']} ({runs[-1]['wall_s']:.0f} s)",
                      flush=True)
    report = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
              "command": " ".join(["python", *sys.argv]), "settings": vars(args) | {"precision": precision,
                                                                                  "ds_config": ds_config},
              "environment": environment(args.device), "runs": runs, "stopped_early": stopped_early,
              "wall_time_s": round(time.perf_counter() - t_start, 1)}
    if args.phase == "teacher":
        return
    if args.phase == "students":
        out_json = Path(args.out_json)
        out_json.parent.mkdir(parents=True, exist_ok=True)
        out_json.write_text(json.dumps(report, indent=2, default=str))
        return
    write_outputs(report, args)


def write_outputs(report: dict, args: argparse.Namespace) -> None:
    out_json = Path(args.out_json or REPO / "docs" / "bench" / f"accuracy-{args.device}.json")
    out_json.parent.mkdir(parents=True, exist_ok=True)
    out_json.write_text(json.dumps(report, indent=2, default=str))
    md = render_markdown(report)
    Path(args.out_md).write_text(md)
    plot(report, Path(args.out_md).with_suffix(".png"))
    print(md)


def environment(device: str) -> dict:
    import deepspeed
    import torch

    name = torch.cuda.get_device_name(0) if device == "cuda" else f"{platform.machine()} CPU x {os.cpu_count()}"
    return {"device": name, "torch": torch.__version__, "deepspeed": deepspeed.__version__}


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


def render_markdown(report: dict) -> str:
    env = report["environment"]
    lines = ["# Accuracy: the Pea-KD ablation matrix", "",
             "Generated by `bench/accuracy.py`; do not edit by hand.", "",
             f"- date: {report['date']}", f"- command: `{report['command']}`",
             f"- hardware: {env['device']}; torch {env['torch']}, deepspeed {env['deepspeed']}",
             f"- total wall time: {report['wall_time_s']} s" + (" (time budget reached: matrix incomplete)"
                                                                if report["stopped_early"] else ""),
             "- metrics x100 on GLUE dev, mean ± std over the seeds run; `final` = last checkpoint, "
             "`best` = best evaluation on dev (optimistic, as in the reference code)", ""]
    for task in dict.fromkeys(r["task"] for r in report["runs"]):
        rows = [r for r in aggregate(report) if r["task"] == task]
        metrics = rows[0]["metrics"]
        cols = ["model", "seeds", *[f"{m} final" for m in metrics], *[f"{m} best" for m in metrics],
                "parameters", "MFLOPs/token", "wall s/run"]
        lines += [f"## {task}", "", "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
        for r in rows:
            label = "teacher" if r["variant"] == "teacher" else VARIANTS[r["variant"]][4]
            vals = [label, str(r["seeds"])]
            vals += [f"{r[f'final_{m}'][0]:.2f} ± {r[f'final_{m}'][1]:.2f}" for m in metrics]
            vals += [f"{r[f'best_{m}'][0]:.2f} ± {r[f'best_{m}'][1]:.2f}" for m in metrics]
            vals += [f"{r['parameters']:,}", f"{r['flops_per_token'] / 1e6:.1f}", f"{r['wall_s']:.0f}"]
            lines.append("| " + " | ".join(vals) + " |")
        lines.append("")
    return "\n".join(lines)


def plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = aggregate(report)
    tasks = list(dict.fromkeys(r["task"] for r in rows))
    fig, axes = plt.subplots(1, len(tasks), figsize=(6 * len(tasks), 4), squeeze=False)
    for ax, task in zip(axes[0], tasks, strict=True):
        rs = [r for r in rows if r["task"] == task]
        m = rs[0]["metrics"][0]
        names = [r["variant"] for r in rs]
        means = [r[f"final_{m}"][0] for r in rs]
        stds = [r[f"final_{m}"][1] for r in rs]
        ax.bar(range(len(rs)), means, yerr=stds, color=["grey" if n == "teacher" else "tab:blue" for n in names])
        ax.set_xticks(range(len(rs)), names, rotation=35, ha="right", fontsize=8)
        ax.set_ylabel(f"dev {m} (final) x100")
        ax.set_ylim(min(means) - 10, max(means) + 5)
        ax.set_title(task)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    main()
