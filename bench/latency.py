"""Inference latency, side by side in one run: teacher vs student x PyTorch eager vs ONNX Runtime fp32 / int8.

    python bench/latency.py --run_dir runs/mrpc                 # a pipeline's task folder: teacher/best + distill*/final
    python bench/latency.py --teacher DIR --student DIR         # any folders a stage or `export` wrote
    python bench/latency.py --smoke                             # tiny random models, a few repeats (checks the script)

Each model folder is loaded in fp32 (an SPS student through dist_peakd, a teacher with transformers),
exported once to ONNX (torch.onnx, dynamic axes) and quantized to int8 (onnxruntime dynamic
quantization) in a work folder. Inputs are full-length random token ids (latency depends on the shape
only), at batch 1 and 32 and sequence 32 and 128 (``--batches``, ``--seqs``). PyTorch and ONNX Runtime
use the same thread count (``--threads``, default: torch's). Each cell is the median over ``--repeats``
timed calls after ``--warmup`` untimed ones. Target (on the CPU): the student through ONNX Runtime fp32
at batch 1, seq 128 at least 2x faster than the eager PyTorch teacher.
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
TARGET = {"batch": 1, "seq": 128, "speedup": 2.0}


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


def prepare(name: str, folder: Path, work: Path) -> dict:
    """Load ``folder``, export its ONNX fp32 and int8 graphs; the model and the graph paths."""
    from dist_peakd.export import load_model_folder, quantize_int8
    from dist_peakd.export.onnx import export_onnx_file
    from dist_peakd.models import model_stats

    model, _ = load_model_folder(folder)
    fp32, int8 = work / f"{name}.onnx", work / f"{name}_int8.onnx"
    t0 = time.perf_counter()
    export_onnx_file(model, fp32)
    quantize_int8(fp32, int8)
    return {"name": name, "folder": str(folder), "model": model, "onnx": {"ort-fp32": fp32, "ort-int8": int8},
            "export_s": round(time.perf_counter() - t0, 1), "stats": model_stats(model, seq_len=128)}


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
    lines = [head, "| batch | seq | " + " | ".join(cols) + " | student ort-fp32 vs teacher eager |",
             "|---|---|" + "---|" * (len(cols) + 1)]
    for cell in report["cells"]:
        vals = [f"{cell[c]:.2f}" for c in cols]
        lines.append(f"| {cell['batch']} | {cell['seq']} | " + " | ".join(vals) + f" | {cell['speedup']:.2f}x |")
    t = report.get("target")
    if t:
        lines.append(f"\nTarget: student ort-fp32 at batch {t['batch']}, seq {t['seq']} >= {t['speedup']}x faster "
                     f"than the eager teacher: {t['measured']:.2f}x, **{'met' if t['met'] else 'not met'}**.")
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
    models = {name: prepare(name, folder, work) for name, folder in (("teacher", teacher_dir),
                                                                      ("student", student_dir))}
    cells = []
    for batch in args.batches:
        for seq in args.seqs:
            cell = {"batch": batch, "seq": seq}
            for name, prepared in models.items():
                for runtime in RUNTIMES:
                    cell[f"{name} {runtime}"] = measure(prepared, runtime, batch, seq, args)
            cell["speedup"] = cell["teacher eager"] / cell["student ort-fp32"]
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
        "cells": cells,
    }
    target = next((c for c in cells if c["batch"] == TARGET["batch"] and c["seq"] == TARGET["seq"]), None)
    if target is not None:
        report["target"] = {**TARGET, "measured": target["speedup"], "met": target["speedup"] >= TARGET["speedup"]}
    return report


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
