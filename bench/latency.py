"""Inference latency, side by side in one run: teacher vs student x PyTorch eager vs ONNX Runtime fp32 / int8.

    python bench/latency.py --run_dir runs/mrpc                 # a pipeline's task folder: teacher/best + distill*/final
    python bench/latency.py --teacher DIR --student DIR         # any folders a stage or `export` wrote
    python bench/latency.py --smoke                             # tiny random models, a few repeats (checks the script)

Each model folder is loaded in fp32 (an SPS student through dist_peakd, a teacher with transformers)
and exported once by the product's own ``dist-peakd export --format onnx --quantize int8`` into a work
folder (torch.onnx with dynamic axes, fused by onnxruntime's transformer optimizer, int8 by dynamic
quantization; smoke models: the same functions in-process). The student's dev metrics are then
scored by ``dist-peakd evaluate`` in PyTorch, ONNX fp32 and ONNX int8. Inputs are full-length random token ids (latency depends on the shape
only), at batch 1 and 32 and sequence 32 and 128 (``--batches``, ``--seqs``). PyTorch and ONNX Runtime
use the same thread count (``--threads``, default: torch's). Each cell is the median over ``--repeats``
timed calls after ``--warmup`` untimed ones. Target (on the CPU): the student through ONNX Runtime
(fp32 or int8) at batch 1, seq 128 at least 2x faster than the eager PyTorch teacher, with dev metrics
within 1.5 points of the PyTorch student's.
Results: JSON under docs/bench/ and a Markdown table appended to docs/BENCHMARKS.md (smoke: a temp
folder, nothing appended, unless ``--out_json`` is given).
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench import _common as bench_common  # noqa: E402

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

RUNTIMES = ("eager", "ort-fp32", "ort-int8")
TARGET = {"batch": 1, "seq": 128, "speedup": 2.0, "max_metric_drop_points": 1.5}
ORT_RUNTIMES = ("ort-fp32", "ort-int8")
ONNX_FILES = {"ort-fp32": "model.onnx", "ort-int8": "model_int8.onnx"}


# ----------------------------------------------------------------------------------------- models
def find_run_models(run_dir: Path) -> tuple[Path, Path]:
    """``(teacher, student)`` folders of a pipeline's task folder (the newest ``distill*/final``)."""
    teacher = run_dir / "teacher" / "best"
    students = sorted((p for p in run_dir.glob("distill*/final") if (p / "config.json").is_file()),
                      key=lambda p: p.stat().st_mtime)
    if not (teacher / "config.json").is_file() or not students:
        raise SystemExit(f"--run_dir {run_dir}: expected teacher/best and distill*/final model folders")
    return teacher, students[-1]


def make_smoke_models(work: Path) -> tuple[Path, Path]:
    """A tiny random teacher (4 x 32) and an SPS k=1 student built from it, saved as model folders."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    from dist_peakd.export import export_compact
    from dist_peakd.models import build_student
    from dist_peakd.stages.common import resolve_backbone

    tok = AutoTokenizer.from_pretrained(resolve_backbone("minilm"))
    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=tok.vocab_size, hidden_size=32, num_hidden_layers=4, num_attention_heads=4,
                     intermediate_size=64, num_labels=2)
    teacher = BertForSequenceClassification(cfg).eval()
    teacher_dir = export_compact(teacher, work / "teacher", tokenizer=tok)
    student = build_student(teacher_dir, k=1, variant="shuffle", num_labels=2)
    return teacher_dir, export_compact(student, work / "student", tokenizer=tok)


def cli(*args: str) -> None:
    """Run one ``dist-peakd`` command in a fresh process (the product as a user runs it)."""
    import subprocess

    cmd = [sys.executable, "-m", "dist_peakd.cli", *args]
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} exited {done.returncode}:\n{done.stderr[-3000:]}")


def prepare(name: str, folder: Path, work: Path, smoke: bool) -> dict:
    """Load ``folder`` and export its ONNX fp32 and int8 graphs; the model and the graph paths."""
    from dist_peakd.export import load_model_folder, quantize_int8
    from dist_peakd.export.onnx import export_onnx_file
    from dist_peakd.models import model_stats

    model, _ = load_model_folder(folder)
    onnx_dir = work / f"{name}-onnx"
    t0 = time.perf_counter()
    if smoke:  # tiny random folders record no task (the CLI export checks on the task's dev rows)
        onnx_dir.mkdir(parents=True, exist_ok=True)
        export_onnx_file(model, onnx_dir / ONNX_FILES["ort-fp32"])
        quantize_int8(onnx_dir / ONNX_FILES["ort-fp32"], onnx_dir / ONNX_FILES["ort-int8"])
    else:
        cli("export", "--model_dir", str(folder), "--format", "onnx", "--quantize", "int8", "--out", str(onnx_dir))
    return {"name": name, "folder": str(folder), "model": model, "onnx_dir": onnx_dir,
            "onnx": {r: onnx_dir / f for r, f in ONNX_FILES.items()},
            "export_s": round(time.perf_counter() - t0, 1), "stats": model_stats(model, seq_len=128)}


def dev_metrics(prepared: dict, work: Path) -> dict[str, dict[str, float]]:
    """``dist-peakd evaluate`` of the folder (PyTorch) and of its ONNX fp32 / int8 graphs: dev metrics."""
    import json

    out = {}
    for runtime, extra in (("eager", ["--model_dir", prepared["folder"]]),
                           *((r, ["--model_dir", str(prepared["onnx_dir"]), "--onnx_file", f])
                             for r, f in ONNX_FILES.items())):
        path = work / f"{prepared['name']}-{runtime}-dev.json"
        cli("evaluate", *extra, "--out", str(path))
        out[runtime] = json.loads(path.read_text())["metrics"]
    return out


def metric_drop_points(metrics: dict[str, dict[str, float]], runtime: str) -> float:
    """Largest drop (in points, x100) of any dev metric but the loss, ``runtime`` vs the PyTorch model."""
    ref = metrics["eager"]
    return max(100 * (ref[k] - metrics[runtime][k]) for k in ref if k != "loss")


# ----------------------------------------------------------------------------------------- timing
def inputs(vocab: int, batch: int, seq: int) -> dict:
    import torch

    g = torch.Generator().manual_seed(batch * 1000 + seq)
    ids = torch.randint(1000 if vocab > 2000 else 1, vocab, (batch, seq), generator=g)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "token_type_ids": torch.zeros_like(ids)}


def median_ms(call, warmup: int, repeats: int) -> float:
    for _ in range(warmup):
        call()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        call()
        times.append((time.perf_counter() - t0) * 1000)
    return statistics.median(times)


def measure(prepared: dict, runtime: str, batch: int, seq: int, args: argparse.Namespace) -> float:
    import torch

    from dist_peakd.export import OnnxLogits

    feed = inputs(prepared["model"].config.vocab_size, batch, seq)
    if runtime == "eager":
        model = prepared["model"]

        def call() -> None:
            with torch.inference_mode():
                model(**feed)
    else:
        runner = OnnxLogits(prepared["onnx"][runtime], threads=args.threads)
        np_feed = {k: v.numpy() for k, v in feed.items()}

        def call() -> None:
            runner(np_feed)
    return median_ms(call, args.warmup, args.repeats)


# ----------------------------------------------------------------------------------------- report
def markdown(report: dict) -> str:
    env = report["environment"]
    head = (f"### Inference latency ({report['date'][:10]}, {env['device']}, {report['threads']} threads"
            f"{', SMOKE: tiny random models' if report['smoke'] else ''})\n\n"
            f"`{report['command']}`. Median ms per forward over {report['repeats']} calls; teacher "
            f"`{report['models']['teacher']['folder']}`, student `{report['models']['student']['folder']}`.\n")
    cols = [f"{m} {r}" for m in ("teacher", "student") for r in RUNTIMES]
    lines = [head, "| batch | seq | " + " | ".join(cols) + " | " +
             " | ".join(f"student {r} vs teacher eager" for r in ORT_RUNTIMES) + " |",
             "|---|---|" + "---|" * (len(cols) + len(ORT_RUNTIMES))]
    for cell in report["cells"]:
        vals = [f"{cell[c]:.2f}" for c in cols] + [f"{cell['speedup ' + r]:.2f}x" for r in ORT_RUNTIMES]
        lines.append(f"| {cell['batch']} | {cell['seq']} | " + " | ".join(vals) + " |")
    metrics = report.get("student_dev_metrics")
    if metrics:
        names = [k for k in metrics["eager"] if k != "loss"]
        lines += ["", "Student dev metrics (`dist-peakd evaluate`): " + "; ".join(
            f"{r} " + ", ".join(f"{k} {100 * m[k]:.2f}" for k in names) for r, m in metrics.items()) + "."]
    t = report.get("target")
    if t:
        lines.append(f"\nTarget: the student through ONNX Runtime at batch {t['batch']}, seq {t['seq']} >= "
                     f"{t['speedup']}x faster than the eager teacher, dev metrics within "
                     f"{t['max_metric_drop_points']} points of the PyTorch student: " + "; ".join(
                         f"{r} {v['speedup']:.2f}x" + ("" if v["metric_drop_points"] is None else
                                                       f" (metric drop {v['metric_drop_points']:+.2f} points)")
                         for r, v in t["runtimes"].items()) + f" → **{'met' if t['met'] else 'not met'}**"
                     + (f" by {t['met_by']}." if t["met"] else "."))
    s, te = report["models"]["student"]["stats"], report["models"]["teacher"]["stats"]
    lines.append(f"Compute: student {s['num_effective_layers']} effective layers, "
                 f"{s['flops_per_token'] / te['flops_per_token']:.2f}x the teacher's FLOPs/token; "
                 f"parameters {s['parameters'] / te['parameters']:.2f}x.")
    return "\n".join(lines) + "\n"


def run(args: argparse.Namespace, work: Path) -> dict:
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    args.threads = torch.get_num_threads()
    if args.smoke:
        teacher_dir, student_dir = make_smoke_models(work / "models")
    elif args.run_dir:
        teacher_dir, student_dir = find_run_models(Path(args.run_dir))
    else:
        teacher_dir, student_dir = Path(args.teacher), Path(args.student)
    models = {name: prepare(name, folder, work, bool(args.smoke))
              for name, folder in (("teacher", teacher_dir), ("student", student_dir))}
    metrics = None if args.smoke else dev_metrics(models["student"], work)
    cells = []
    for batch in args.batches:
        for seq in args.seqs:
            cell = {"batch": batch, "seq": seq}
            for name, prepared in models.items():
                for runtime in RUNTIMES:
                    cell[f"{name} {runtime}"] = measure(prepared, runtime, batch, seq, args)
            for r in ORT_RUNTIMES:
                cell[f"speedup {r}"] = cell["teacher eager"] / cell[f"student {r}"]
            cells.append(cell)
            print(f"batch {batch} seq {seq}: " + ", ".join(f"{k} {v:.2f}" for k, v in cell.items()
                                                          if k not in ("batch", "seq")), flush=True)
    report = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": "python bench/latency.py " + " ".join(sys.argv[1:]),
        "environment": bench_common.environment("cpu", "transformers", "onnxruntime", "onnx", "onnxscript")
        | {"python": platform.python_version()},
        "smoke": bool(args.smoke), "threads": args.threads, "repeats": args.repeats, "warmup": args.warmup,
        "models": {n: {"folder": m["folder"], "stats": m["stats"], "export_s": m["export_s"]} for n, m in models.items()},
        "cells": cells, "student_dev_metrics": metrics,
    }
    cell = next((c for c in cells if c["batch"] == TARGET["batch"] and c["seq"] == TARGET["seq"]), None)
    if cell is not None:
        report["target"] = target_check(cell, metrics)
    return report


def target_check(cell: dict, metrics: dict | None) -> dict:
    """Each ONNX runtime's speedup and dev-metric drop at the target cell; met by the fastest that qualifies
    (without dev metrics, smoke, nothing qualifies)."""
    runtimes = {}
    for r in ORT_RUNTIMES:
        drop = None if metrics is None else metric_drop_points(metrics, r)
        ok = drop is not None and drop <= TARGET["max_metric_drop_points"] and cell[f"speedup {r}"] >= TARGET["speedup"]
        runtimes[r] = {"speedup": cell[f"speedup {r}"], "metric_drop_points": drop, "meets": ok}
    met_by = [r for r, v in sorted(runtimes.items(), key=lambda kv: -kv[1]["speedup"]) if v["meets"]]
    return {**TARGET, "runtimes": runtimes, "met": bool(met_by), "met_by": met_by[0] if met_by else None}


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--run_dir", help="a pipeline's task folder (<out_dir>/<task>)")
    src.add_argument("--teacher", help="teacher model folder (with --student)")
    src.add_argument("--smoke", action="store_true", help="tiny random models, 3 repeats: checks the script")
    p.add_argument("--student", help="student model folder (with --teacher)")
    p.add_argument("--batches", type=int, nargs="+", default=[1, 32])
    p.add_argument("--seqs", type=int, nargs="+", default=[32, 128])
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--repeats", type=int, default=None, help="timed calls per cell (default 20; smoke 3)")
    p.add_argument("--warmup", type=int, default=None, help="untimed calls first (default 3; smoke 1)")
    p.add_argument("--work_dir", default=None, help="where the ONNX graphs go (default: a temp folder)")
    p.add_argument("--out_json", default=None)
    p.add_argument("--no_markdown", action="store_true", help="do not append to docs/BENCHMARKS.md")
    args = p.parse_args(argv)
    if args.teacher and not args.student:
        p.error("--teacher needs --student")
    args.repeats = args.repeats or (3 if args.smoke else 20)
    args.warmup = args.warmup if args.warmup is not None else (1 if args.smoke else 3)
    with tempfile.TemporaryDirectory(prefix="latency-") as tmp:
        work = Path(args.work_dir) if args.work_dir else Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        report = run(args, work)
        if args.out_json:
            out_json, append = Path(args.out_json), not args.no_markdown
        elif args.smoke:
            out_json, append = Path(tmp) / "latency-smoke.json", False
        else:
            out_json, append = REPO / "docs" / "bench" / "latency-cpu.json", not args.no_markdown
        bench_common.write_report(report, out_json, markdown(report), append)
        report["out_json"] = str(out_json)
    return report


if __name__ == "__main__":
    main()
