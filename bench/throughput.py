"""Distillation throughput, side by side in one run: naive loop vs plain torch vs the product vs the cache pass.

    python bench/throughput.py --device cpu            # MiniLM-L6 teacher, SPS k=3 student, MRPC, batch 32
    python bench/throughput.py --device cuda           # BERT-base-shaped random teacher (12x768), batch 128, bf16

Variants (same teacher, student, data and batch size; each in its own subprocess, so peak memory is its own):
  a  naive: teacher run online every step, inputs padded to 128, fp32, plain PyTorch, no DeepSpeed
  b  plain PyTorch with the product's tricks: cached teacher outputs, length-grouped dynamic padding,
     bf16 autocast on GPU: the practical limit without an engine
  c  the product's ``distill`` stage in its DeepSpeed engine (samples/s read from its own train log)
  d  the teacher cache pass (the product's ``cache-teacher`` stage)
Samples/s are medians over timed windows after warm-up. Results: JSON under docs/bench/ and a dated
Markdown table appended to docs/BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench import _common as bench_common  # noqa: E402

os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


# ----------------------------------------------------------------------------------------- setup
def prepare_teacher(args: argparse.Namespace, work: Path) -> Path:
    """Save the benchmark teacher (HF format + tokenizer) where the product's stages look for it."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    from dist_peakd.export import export_compact
    from dist_peakd.stages.common import resolve_backbone

    teacher_dir = work / "runs" / "mrpc" / "teacher" / "best"
    backbone_dir = work / "backbone"
    if (teacher_dir / "config.json").is_file():
        return backbone_dir
    tok = AutoTokenizer.from_pretrained(resolve_backbone("minilm"))
    torch.manual_seed(0)
    if args.shape == "bert-base":
        cfg = BertConfig(vocab_size=tok.vocab_size, hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                         intermediate_size=3072, num_labels=2)
        model = BertForSequenceClassification(cfg)
    else:
        model = BertForSequenceClassification.from_pretrained(resolve_backbone("minilm"), num_labels=2)
    export_compact(model, teacher_dir, tokenizer=tok)  # with its file manifest: the stages verify it
    model.bert.save_pretrained(str(backbone_dir))  # the student's pretrained backbone (bottom k layers)
    tok.save_pretrained(str(backbone_dir))
    return backbone_dir


def common_options(args: argparse.Namespace, work: Path) -> dict:
    return dict(task="mrpc", output_dir=str(work / "runs"), glue_dir=args.glue_dir, backbone=str(work / "backbone"),
                max_length=128, batch_size=args.batch_size, seed=0, cache_dir=str(work / "tok"),
                precision=args.precision, ds_config=args.ds_config)


def peak_memory_mb(device: str) -> float:
    import torch

    if device == "cuda":
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# -------------------------------------------------------------------------------- plain loops a, b
def plain_loop(args: argparse.Namespace, work: Path, variant: str) -> dict:
    """Variants a and b: explicit PyTorch loops with the product's models and loss, no engine."""
    import numpy as np
    import torch

    from dist_peakd.cache import TeacherCache
    from dist_peakd.config import build_options
    from dist_peakd.data import DynamicPaddingCollator, LengthGroupedBatchSampler
    from dist_peakd.data.rows import fetch_rows
    from dist_peakd.distill import DistillLossConfig, distillation_loss, patient_layer_map
    from dist_peakd.engine.optim import build_optimizer
    from dist_peakd.models import build_student, load_teacher, teacher_forward
    from dist_peakd.stages.common import load_tokenizer, prepare_data
    from dist_peakd.stages.distill import DistillOptions

    device = torch.device(args.device)
    opts = build_options(DistillOptions, **common_options(args, work), use_ptp=False)
    tokenizer = load_tokenizer(opts.backbone)
    data = prepare_data(opts, tokenizer)
    torch.manual_seed(0)
    student = build_student(opts.backbone, k=3, variant="shuffle", num_labels=2).to(device)
    optimizer = build_optimizer(student, lr=2e-5)
    cfg = DistillLossConfig()
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if args.device == "cuda" else torch.autocast(
        "cpu", enabled=False)
    n = len(data.train)
    if variant == "a":
        teacher = load_teacher(work / "runs" / "mrpc" / "teacher" / "best", num_labels=2).to(device).eval()
        collate = DynamicPaddingCollator(tokenizer.pad_token_id, pad_to_length=128)
        rng = np.random.default_rng(0)
        batches = (rng.choice(n, size=args.batch_size, replace=False).tolist() for _ in iter(int, 1))
        num_teacher_layers = teacher.config.num_hidden_layers
    else:
        cache = TeacherCache.open(work / "runs" / "mrpc" / "teacher_cache").split("train")
        collate = DynamicPaddingCollator(tokenizer.pad_token_id)
        sampler = LengthGroupedBatchSampler(list(data.train["length"]), args.batch_size, seed=0)
        num_teacher_layers = TeacherCache.open(work / "runs" / "mrpc" / "teacher_cache").num_layers

        def forever():
            epoch = 0
            while True:
                sampler.set_epoch(epoch)
                yield from (b for b in sampler if len(b) == args.batch_size)
                epoch += 1

        batches = forever()
    layer_map = patient_layer_map(student.num_effective_layers, num_teacher_layers)

    def step(indices: list[int]) -> None:
        batch = collate(fetch_rows(data.train, indices))
        batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
        if variant == "a":
            with torch.no_grad():
                t = teacher_forward(teacher, batch["input_ids"], batch["attention_mask"], batch["token_type_ids"])
            t_logits, t_cls = t.logits, torch.stack(t.cls_states, dim=1)
        else:
            t_logits, t_cls = cache.lookup(batch["example_ids"].cpu().numpy())
            t_logits, t_cls = t_logits.to(device, non_blocking=True), t_cls.to(device, non_blocking=True)
        with autocast:
            out = student(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                          token_type_ids=batch["token_type_ids"])
        loss = distillation_loss(out.logits, out.cls_states, t_logits, t_cls, batch["labels"], layer_map, cfg)
        (loss.total / len(indices)).backward()
        torch.nn.utils.clip_grad_norm_(student.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    rates = timed_windows(step, batches, args, device)
    return {"samples_per_s": statistics.median(rates), "windows": rates, "peak_memory_mb": peak_memory_mb(args.device)}


def timed_windows(step, batches, args: argparse.Namespace, device) -> list[float]:
    import torch

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    for _ in range(args.warmup_steps):
        step(next(batches))
    rates = []
    for _ in range(args.windows):
        sync()
        t0 = time.perf_counter()
        for _ in range(args.window_steps):
            step(next(batches))
        sync()
        rates.append(args.window_steps * args.batch_size / (time.perf_counter() - t0))
    return rates


# ------------------------------------------------------------------------------ product stages c, d
def product_distill(args: argparse.Namespace, work: Path) -> dict:
    """Variant c: the real ``distill`` stage; samples/s per logging window from its train_log.jsonl."""
    import math
    import shutil

    from dist_peakd.config import build_options
    from dist_peakd.stages import distill

    warmup = math.ceil(args.warmup_steps / args.window_steps) * args.window_steps  # windows start aligned
    steps = warmup + args.windows * args.window_steps
    run_name = f"bench-distill-{args.ds_config}{'-compiled' if args.compile else ''}"
    shutil.rmtree(work / "runs" / "mrpc" / run_name, ignore_errors=True)
    epochs = math.ceil(steps * args.batch_size / 3668) + 1  # MRPC train rows; evals are not timed
    opts = build_options(distill.DistillOptions, **common_options(args, work), use_ptp=False, k=3,
                         variant="shuffle", log_every_steps=args.window_steps, epochs=float(epochs),
                         run_name=run_name, stop_after_steps=steps, eval_batch_size=256, compile=args.compile)
    from dist_peakd.errors import StopRequested

    try:
        distill.run(opts)
    except StopRequested:
        pass
    log = [json.loads(x) for x in (Path(opts.output_dir) / "mrpc" / run_name / "train_log.jsonl").read_text().splitlines()]
    rates = [r["train/samples_per_s"] for r in log if r["step"] > warmup]
    from dist_peakd.engine.engine import compile_seconds

    return {"samples_per_s": statistics.median(rates), "windows": rates, "peak_memory_mb": peak_memory_mb(args.device),
            "engine": "deepspeed", "ds_config": args.ds_config,
            **({"compile_s": round(compile_seconds(), 1)} if args.compile else {})}


def product_cache(args: argparse.Namespace, work: Path) -> dict:
    """Variant d: the real ``cache-teacher`` stage (train + dev); rows/s as the stage reports it."""
    from dist_peakd.config import build_options
    from dist_peakd.stages import cache_teacher

    opts = build_options(cache_teacher.CacheTeacherOptions, **common_options(args, work), rebuild=True,
                         cache_batch_size=args.cache_batch_size)
    summary = cache_teacher.run(opts)
    return {"samples_per_s": summary["rows_per_s"], "rows": summary["rows"], "peak_memory_mb": peak_memory_mb(args.device)}


# ------------------------------------------------------------------------------------- orchestration
def run_variant(args: argparse.Namespace) -> None:
    work = Path(args.work_dir)
    fn = {"a": lambda: plain_loop(args, work, "a"), "b": lambda: plain_loop(args, work, "b"),
          "c": lambda: product_distill(args, work), "d": lambda: product_cache(args, work)}[args.variant]
    result = fn()
    Path(args.result_file).write_text(json.dumps(result))


def environment(args: argparse.Namespace) -> dict:
    import torch

    return bench_common.environment(args.device, "transformers") | {"python": platform.python_version(),
                                                              "torch_threads": torch.get_num_threads()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--shape", choices=["minilm", "bert-base"], default=None,
                   help="teacher shape (default: minilm on cpu, bert-base on cuda)")
    p.add_argument("--batch_size", type=int, default=None, help="default 32 on cpu, 128 on cuda")
    p.add_argument("--cache_batch_size", type=int, default=None)
    p.add_argument("--warmup_steps", type=int, default=None)
    p.add_argument("--windows", type=int, default=5)
    p.add_argument("--window_steps", type=int, default=None)
    p.add_argument("--ds_config", default=None)
    p.add_argument("--precision", default=None, help="override the ds_config's precision (default: as in the file)")
    p.add_argument("--glue_dir", default=None)
    p.add_argument("--variants", default="d,a,b,c")
    p.add_argument("--compile", action="store_true", help="variant c with the product's --compile (torch.compile)")
    p.add_argument("--work_dir", default=None)
    p.add_argument("--out_json", default=None)
    p.add_argument("--no_markdown", action="store_true")
    p.add_argument("--render", default=None, metavar="JSON",
                   help="append the Markdown table of an earlier run's JSON report (e.g. one from the GPU machine)")
    p.add_argument("--variant", default=None, help=argparse.SUPPRESS)
    p.add_argument("--result_file", default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.render:
        bench_common.append_markdown(markdown(json.loads(Path(args.render).read_text())), not args.no_markdown)
        return
    gpu = args.device == "cuda"
    args.shape = args.shape or ("bert-base" if gpu else "minilm")
    args.batch_size = args.batch_size or (128 if gpu else 32)
    args.cache_batch_size = args.cache_batch_size or (512 if gpu else 128)
    args.warmup_steps = args.warmup_steps if args.warmup_steps is not None else (20 if gpu else 2)
    args.window_steps = args.window_steps or (20 if gpu else 3)
    args.ds_config = args.ds_config or ("autocast_bf16_zero0" if gpu else "fp32_zero0")
    os.environ.setdefault("DS_ACCELERATOR", "cuda" if gpu else "cpu")
    if args.variant:
        run_variant(args)
        return
    work = Path(args.work_dir or tempfile.mkdtemp(prefix="dpk-bench-"))
    args.work_dir = str(work)
    prepare_teacher(args, work)
    results: dict[str, dict] = {}
    order = args.variants.split(",")
    if "b" in order or "c" in order:  # b and c read the cache built by d
        order = ["d"] + [v for v in order if v != "d"]
    for variant in order:
        result_file = work / f"result-{variant}.json"
        cmd = [sys.executable, __file__, "--variant", variant, "--result_file", str(result_file)]
        for key in ("device", "shape", "batch_size", "cache_batch_size", "warmup_steps", "windows", "window_steps",
                    "ds_config", "precision", "glue_dir", "work_dir"):
            value = getattr(args, key)
            if value is not None:
                cmd += [f"--{key}", str(value)]
        cmd += ["--compile"] if args.compile else []
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            sys.stderr.write(proc.stdout[-4000:] + proc.stderr[-4000:])
            raise SystemExit(f"variant {variant} failed (exit {proc.returncode})")
        results[variant] = json.loads(result_file.read_text()) | {"wall_s": round(time.perf_counter() - t0, 1)}
        print(f"[bench] {variant}: {results[variant]['samples_per_s']:.1f} samples/s", flush=True)
    report = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
              "command": " ".join([Path(sys.executable).name, *sys.argv]),
              "setup": {"teacher": args.shape, "student": "SPS k=3 shuffle", "task": "mrpc", "batch_size": args.batch_size,
                        "max_length": 128, "ds_config": args.ds_config, "window_steps": args.window_steps,
                        "windows": args.windows, "warmup_steps": args.warmup_steps, "compile": args.compile},
              "environment": environment(args), "results": results}
    if "a" in results and "c" in results:
        report["ratio_c_over_a"] = results["c"]["samples_per_s"] / results["a"]["samples_per_s"]
    if "b" in results and "c" in results:
        report["ratio_c_over_b"] = results["c"]["samples_per_s"] / results["b"]["samples_per_s"]
    out_json = Path(args.out_json or REPO / "docs" / "bench" / f"throughput-{args.device}.json")
    bench_common.write_report(report, out_json, markdown(report), not args.no_markdown)


def markdown(report: dict) -> str:
    env, setup, res = report["environment"], report["setup"], report["results"]
    names = {"a": "a. naive (online teacher, pad 128, fp32, plain torch)",
             "b": "b. plain torch + cache + dynamic padding" + (" + bf16 autocast" if "cuda" in report["command"] else ""),
             "c": f"c. dist-peakd distill (DeepSpeed, {setup['ds_config']}{', --compile' if setup.get('compile') else ''})",
             "d": "d. teacher cache pass (cache-teacher)"}
    lines = [f"### Throughput {report['date']} on {env['device']}", "",
             f"`{report['command']}`  ", f"torch {env['torch']}, deepspeed {env['deepspeed']}, transformers "
             f"{env['transformers']}, {env['torch_threads']} torch threads; teacher {setup['teacher']}, student "
             f"{setup['student']}, MRPC train, batch {setup['batch_size']}, median of {setup['windows']} windows x "
             f"{setup['window_steps']} steps after {setup['warmup_steps']} warm-up steps", "",
             "| variant | samples/s (median) | peak memory MB |", "|---|---|---|"]
    for key in ("a", "b", "c", "d"):
        if key in res:
            lines.append(f"| {names[key]} | {res[key]['samples_per_s']:.1f} | {res[key]['peak_memory_mb']:.0f} |")
    ratios = []
    if "ratio_c_over_a" in report:
        ratios.append(f"c/a = {report['ratio_c_over_a']:.2f}")
    if "ratio_c_over_b" in report:
        ratios.append(f"c/b = {report['ratio_c_over_b']:.2f}")
    if ratios:
        lines += ["", "Ratios: " + ", ".join(ratios)]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
