"""A sweep of N trials vs N independent pipelines: same settings, same trials, timed side by side in one run.

    python bench/sweep_reuse.py --device cpu                              # MRPC, 4 trials (T x alpha), 512 examples
    python bench/sweep_reuse.py --device cpu --max_train_examples 0       # the full train set (slow on CPU)

Both arms run the product's own CLI in subprocesses, one after the other, on the same trial settings:

  pipelines  ``dist-peakd pipeline`` once per trial, each in its own output folder: every pipeline
             fine-tunes its teacher, builds its teacher cache, trains its PTP encoder and distills;
  sweep      ``dist-peakd sweep`` over the same grid: the teacher, its cache and the PTP encoder are built
             once by the driver, then each Ray Tune trial only distills from the shared cache.

Reported: wall time of each arm (and of every pipeline), the ratio, how many teacher fine-tunes / cache
passes / PTP encoders each arm built (counted from the folders it wrote), and each trial's dev metric in
both arms plus the largest difference between their logged training losses (same seed and settings:
they should agree up to thread-level float noise). The sweep runs
its trials one at a time with all CPUs (``--max_concurrent_trials 1``), as each pipeline does, so the
difference is the shared work, not extra parallelism. JSON under docs/bench/, a dated table appended to
docs/BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import datetime
import itertools
import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench import _common as bench_common  # noqa: E402


def cli(args: argparse.Namespace, stage: str, *extra: str) -> list[str]:
    cmd = [sys.executable, "-m", "dist_peakd.cli", stage, "--task", args.task, "--preset", args.preset,
           "--k", str(args.k), "--seed", "0", "--ds_config", args.ds_config, "--precision", args.precision]
    if args.max_train_examples:
        cmd += ["--max_train_examples", str(args.max_train_examples)]
    if args.glue_dir:
        cmd += ["--glue_dir", args.glue_dir]
    return cmd + list(extra)


def run_timed(cmd: list[str], log: Path, device: str) -> float:
    """Run one command (output to ``log``); raise with the log's tail if it fails. Returns wall seconds."""
    env = os.environ | {"HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
                        "DS_ACCELERATOR": device, "RAY_AUTH_MODE": "disabled",
                        "PYTHONPATH": str(REPO)}
    t0 = time.perf_counter()
    with open(log, "w") as f:
        rc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, env=env, cwd=REPO).returncode
    wall = time.perf_counter() - t0
    if rc != 0:
        tail = log.read_text(errors="replace")[-3000:]
        raise SystemExit(f"command failed (exit {rc}): {' '.join(cmd)}\n--- {log} (tail) ---\n{tail}")
    return wall


def count_built(root: Path) -> dict[str, int]:
    """How many teachers, teacher caches and PTP encoders a folder tree holds (each has its summary/manifest)."""
    return {"teacher_finetunes": len(list(root.rglob("teacher/summary.json"))),
            "teacher_caches": len(list(root.rglob("teacher_cache/manifest.json"))),
            "ptp_encoders": len([p for p in root.rglob("summary.json") if p.parent.name.startswith("ptp")])}


def train_losses(run_dir: Path) -> dict[int, float]:
    """step -> logged training loss of one distillation run (its ``train_log.jsonl``)."""
    rows = [json.loads(line) for line in (run_dir / "train_log.jsonl").read_text().splitlines() if line.strip()]
    return {r["step"]: r["train/loss"] for r in rows if "train/loss" in r}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--task", default="mrpc")
    p.add_argument("--temperatures", default="2,10")
    p.add_argument("--alphas", default="0.5,0.7")
    p.add_argument("--k", type=int, default=3)
    p.add_argument("--preset", default="cpu-fast")
    p.add_argument("--max_train_examples", type=int, default=512, help="0: the full train set")
    p.add_argument("--ds_config", default=None)
    p.add_argument("--precision", default=None)
    p.add_argument("--glue_dir", default=None)
    p.add_argument("--work_dir", default="runs/bench_sweep_reuse")
    p.add_argument("--out_json", default=None)
    p.add_argument("--no_markdown", action="store_true")
    args = p.parse_args()
    args.ds_config = args.ds_config or ("autocast_bf16_zero0" if args.device == "cuda" else "fp32_zero0")
    args.precision = args.precision or ("bf16-autocast" if args.device == "cuda" else "fp32")
    work = Path(args.work_dir).resolve()
    if work.exists():
        shutil.rmtree(work)  # both arms must build everything they need
    work.mkdir(parents=True)
    temps = [float(t) for t in args.temperatures.split(",")]
    alphas = [float(a) for a in args.alphas.split(",")]
    trials = list(itertools.product(temps, alphas))

    pipelines = []
    for i, (temp, alpha) in enumerate(trials):
        out = work / "pipelines" / f"trial{i}"
        wall = run_timed(cli(args, "pipeline", "--temperature", str(temp), "--alpha", str(alpha),
                             "--output_dir", str(out)), work / f"pipeline{i}.log", args.device)
        summary = json.loads((out / args.task / "pipeline_summary.json").read_text())
        student = next(r for r in summary["rows"] if r["model"] == "student")
        pipelines.append({"temperature": temp, "alpha": alpha, "wall_s": round(wall, 1), "final": student["final"]})
        print(f"[sweep_reuse] pipeline {i + 1}/{len(trials)} (T={temp}, alpha={alpha}): {wall:.0f} s", flush=True)

    space = json.dumps({"temperature": temps, "alpha": alphas})
    sweep_out = work / "sweep"
    sweep_wall = run_timed(cli(args, "sweep", "--space", space, "--scheduler", "fifo", "--sweep_name", "bench",
                               "--max_concurrent_trials", "1", "--cpus_per_worker", str(os.cpu_count()),
                               "--num_cpus", str(os.cpu_count()), "--output_dir", str(sweep_out)),
                           work / "sweep.log", args.device)
    results = json.loads((sweep_out / args.task / "sweep-bench" / "results.json").read_text())
    print(f"[sweep_reuse] sweep of {len(trials)} trials: {sweep_wall:.0f} s", flush=True)

    from dist_peakd.data import get_task

    metric = get_task(args.task).main_metric
    per_trial = []
    for i, pipe in enumerate(pipelines):
        row = next(r for r in results["rows"]
                   if float(r["temperature"]) == pipe["temperature"] and float(r["alpha"]) == pipe["alpha"])
        (pipe_run,) = (work / "pipelines" / f"trial{i}" / args.task).glob("distill-*")
        pipe_loss, sweep_loss = train_losses(pipe_run), train_losses(Path(row["run_dir"]))
        if not pipe_loss or set(pipe_loss) != set(sweep_loss):
            raise SystemExit(f"the arms logged different steps: {sorted(pipe_loss)} vs {sorted(sweep_loss)}")
        per_trial.append({"temperature": pipe["temperature"], "alpha": pipe["alpha"],
                          "pipeline_wall_s": pipe["wall_s"], f"pipeline_{metric}": pipe["final"][metric],
                          f"sweep_{metric}": row[f"{metric}_final"], "sweep_status": row["status"],
                          "logged_steps": len(pipe_loss),
                          "max_train_loss_difference": max(abs(pipe_loss[k] - sweep_loss[k]) for k in pipe_loss)})
    pipelines_total = sum(pp["wall_s"] for pp in pipelines)
    report = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": shlex.join(["python", *sys.argv]), "environment": bench_common.environment(args.device, "ray"),
        "settings": vars(args), "metric": metric, "trials": len(trials),
        "pipelines_total_s": round(pipelines_total, 1), "sweep_total_s": round(sweep_wall, 1),
        "ratio_pipelines_over_sweep": round(pipelines_total / sweep_wall, 2),
        "built": {"pipelines": count_built(work / "pipelines"), "sweep": count_built(sweep_out)},
        "max_metric_difference": max(abs(t[f"pipeline_{metric}"] - t[f"sweep_{metric}"]) for t in per_trial),
        "max_train_loss_difference": max(t["max_train_loss_difference"] for t in per_trial),
        "per_trial": per_trial,
    }
    out_json = Path(args.out_json or REPO / "docs" / "bench" / f"sweep-reuse-{args.device}.json")
    bench_common.write_report(report, out_json, markdown(report), not args.no_markdown)


def markdown(report: dict) -> str:
    env, s, m = report["environment"], report["settings"], report["metric"]
    examples = s["max_train_examples"] or "all"
    lines = [f"### Sweep vs independent pipelines {report['date']} on {env['device']}", "",
             f"`{report['command']}`  ",
             f"torch {env['torch']}, deepspeed {env['deepspeed']}, ray {env['ray']}; {s['task']}, preset "
             f"{s['preset']}, {examples} train examples, SPS k={s['k']}, {s['ds_config']}; "
             f"{report['trials']} trials (temperature x alpha), one at a time in both arms", "",
             f"| trial | pipeline wall s | pipeline {m} | sweep {m} | max train-loss difference (steps logged) |",
             "|---|---|---|---|---|"]
    for t in report["per_trial"]:
        lines.append(f"| T={t['temperature']:g}, alpha={t['alpha']:g} | {t['pipeline_wall_s']:.0f} | "
                     f"{100 * t[f'pipeline_{m}']:.2f} | {100 * t[f'sweep_{m}']:.2f} | "
                     f"{t['max_train_loss_difference']:.2g} ({t['logged_steps']}) |")
    bp, bs = report["built"]["pipelines"], report["built"]["sweep"]
    lines += ["", f"Total: {report['trials']} pipelines {report['pipelines_total_s']:.0f} s, one sweep "
                  f"{report['sweep_total_s']:.0f} s: the sweep takes {1 / report['ratio_pipelines_over_sweep']:.2f}x "
                  f"the time ({report['ratio_pipelines_over_sweep']:.2f}x faster). Built: pipelines "
                  f"{bp['teacher_finetunes']} teachers / {bp['teacher_caches']} caches / {bp['ptp_encoders']} PTP "
                  f"encoders; sweep {bs['teacher_finetunes']} / {bs['teacher_caches']} / {bs['ptp_encoders']}. "
                  f"Largest {m} difference between the arms: {100 * report['max_metric_difference']:.2f} points; "
                  f"largest logged training-loss difference: {report['max_train_loss_difference']:.2g}.", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
