"""The few-labels case (issue 25): SST-2 with 1,000 labelled rows and 20,000 unlabeled sentences.

    nice -n 5 .venv/bin/python bench/unlabeled.py --work_dir runs/unlabeled --seeds 0,1,2 --steps 600

Data (own-data task ``sst2_1k``, written under ``--work_dir/data``): ``train.tsv`` = the first 1,000 rows
of GLUE SST-2 train (sentence, label), ``dev.tsv`` = SST-2 dev (872 rows), ``unlabeled.txt`` = the next
20,000 train sentences, labels removed (one per line). The teacher (MiniLM-L6 by default) is fine-tuned on
the 1,000 rows only. Students, all the same shape and the same number of optimizer steps (``--steps``):

* (a) ``labelled``: distilled from the 1,000 labelled rows only (the run of (b)'s folder with
  ``--unlabeled_ratio 0``: the same cache, the pool unused; bitwise the labelled-only path);
* (b) ``+unlabeled``: plus the unlabeled pool (``--unlabeled_file``; default ratio: the natural share);
* (c) ``+augment``: the 1,000 labelled rows plus ``--augment N`` variants of each (no raw text: the case
  ``--augment`` is for; a second cache, the augment settings are part of the pool's identity).

Reported: dev accuracy (final checkpoint and best-on-dev) per seed and mean ± std, the teacher, the
majority-class baseline, the cache's bytes per row and the teacher-pass time per 10k unlabeled rows
(the cache-teacher stage's wall time over all its rows, scaled). JSON to ``docs/bench/unlabeled.json``;
the Markdown table is printed (docs/UNLABELED.md quotes it).
"""

from __future__ import annotations

import argparse
import csv
import datetime
import json
import os
import shlex
import statistics
import sys
import time
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from bench import _common as bench_common  # noqa: E402

os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("DS_ACCELERATOR", "cpu")

TASK = "sst2_1k"
CONFIGS = ("labelled", "+unlabeled", "+augment")


def write_data(glue_dir: Path, out: Path, n_labelled: int, n_unlabeled: int) -> dict[str, Path]:
    """train.tsv (first ``n_labelled`` rows), dev.tsv (SST-2 dev), unlabeled.txt (next ``n_unlabeled`` sentences)."""
    out.mkdir(parents=True, exist_ok=True)
    with open(glue_dir / "SST-2" / "train.tsv", newline="") as f:
        rows = list(csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE))
    header, body = rows[0], rows[1:]
    if len(body) < n_labelled + n_unlabeled:
        raise SystemExit(f"SST-2 train has {len(body)} rows, fewer than {n_labelled} + {n_unlabeled}")
    paths = {"train": out / "train.tsv", "dev": out / "dev.tsv", "unlabeled": out / "unlabeled.txt"}
    texts = {"train": "\n".join("\t".join(r) for r in [header, *body[:n_labelled]]) + "\n",
             "dev": (glue_dir / "SST-2" / "dev.tsv").read_text(),
             "unlabeled": "\n".join(r[0].strip() for r in body[n_labelled:n_labelled + n_unlabeled]) + "\n"}
    for key, text in texts.items():  # rewritten only when different (another run may be reading them)
        if not paths[key].is_file() or paths[key].read_text() != text:
            paths[key].write_text(text)
    return paths


def majority_accuracy(train: Path, dev: Path) -> tuple[str, float]:
    """The train majority class and its accuracy on dev (the trivial baseline)."""
    def labels(p: Path) -> list[str]:
        with open(p, newline="") as f:
            return [r["label"] for r in csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE)]
    major = Counter(labels(train)).most_common(1)[0][0]
    dev_labels = labels(dev)
    return major, sum(y == major for y in dev_labels) / len(dev_labels)


def mean_std(values: list[float]) -> str:
    if not values:
        return "-"
    if len(values) == 1:
        return f"{100 * values[0]:.2f}"
    return f"{100 * statistics.mean(values):.2f} ± {100 * statistics.stdev(values):.2f}"


def cache_stats(cache_dir: Path, seconds: float) -> dict:
    """Rows per split, bytes per row (the shards' files over their rows) and the pass's rows/s."""
    from dist_peakd.cache.store import cache_files

    manifest = json.loads((cache_dir / "manifest.json").read_text())
    rows = {name: sum(s["rows"] for s in split["shards"]) for name, split in manifest["splits"].items()}
    total_bytes = sum(rec["bytes"] for rec in cache_files(manifest).values())
    total_rows = sum(rows.values())
    return {"rows": rows, "bytes_per_row": round(total_bytes / max(1, total_rows), 1), "pass_s": round(seconds, 1),
            "s_per_10k_rows": round(seconds / max(1, total_rows) * 10_000, 1),
            "unlabeled_report": (manifest.get("unlabeled") or {}).get("report")}


def steps_per_epoch(n_labelled: int, n_unlabeled: int, batch_size: int, ratio: float | None) -> int:
    """The distill stage's steps per epoch (labelled only: ceil(n / B); mixed: the mixed sampler's)."""
    from dist_peakd.data.mixed import unlabeled_per_batch

    if not n_unlabeled or ratio == 0:
        return -(-n_labelled // batch_size)
    r = n_unlabeled / (n_unlabeled + n_labelled) if ratio is None else ratio
    u = unlabeled_per_batch(batch_size, r)
    return max(-(-n_labelled // (batch_size - u)), -(-n_unlabeled // u))


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--glue_dir", default="/work/shared/glue")
    p.add_argument("--work_dir", default="runs/unlabeled")
    p.add_argument("--data_dir", default=None, help="where the data files are written (default <work_dir>/data; "
                                                     "stages reuse a folder only with the same file paths)")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--n_labelled", type=int, default=1000)
    p.add_argument("--n_unlabeled", type=int, default=20000)
    p.add_argument("--augment", type=int, default=4)
    p.add_argument("--steps", type=int, default=600, help="optimizer steps of every student")
    p.add_argument("--batch_size", type=int, default=32)
    p.add_argument("--max_length", type=int, default=64)
    p.add_argument("--backbone", default="minilm")
    p.add_argument("--depth", type=int, default=2, help="plain student depth (layers copied from the backbone)")
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--teacher_epochs", type=float, default=3.0)
    p.add_argument("--teacher_lr", type=float, default=5e-5)
    p.add_argument("--unlabeled_ratio", default="auto")
    p.add_argument("--configs", default=",".join(CONFIGS))
    p.add_argument("--out_json", default=str(REPO / "docs" / "bench" / "unlabeled.json"))
    return p.parse_args()


def run_student(distill, build_options, common: dict, out: Path, seed: int, name: str, steps: int, spe: int,
                **extra) -> dict:
    t0 = time.perf_counter()
    summary = distill.run(build_options(
        distill.DistillOptions, **common, output_dir=str(out), seed=seed, use_ptp=False, epochs=(steps - 0.5) / spe,
        run_name=f"{name.strip('+').replace('+', '-')}-s{seed}", **extra))
    if summary["total_steps"] != steps or summary["steps_per_epoch"] != spe:
        raise SystemExit(f"{name} seed {seed}: ran {summary['total_steps']} steps ({summary['steps_per_epoch']} per "
                         f"epoch), expected {steps} ({spe}): the steps budget would differ")
    row = {"config": name, "seed": seed, "final": summary["final"], "best": summary["best"],
           "steps": summary["total_steps"], "steps_per_epoch": spe,
           "unlabeled": summary.get("unlabeled"), "wall_s": round(time.perf_counter() - t0, 1)}
    print(f"[unlabeled] {name} seed {seed}: final {summary['final']} best {summary['best']} "
          f"({row['wall_s']:.0f} s)", flush=True)
    return row


def main() -> None:  # noqa: PLR0915 - a linear script
    args = parse_args()
    from dist_peakd.config import build_options
    from dist_peakd.stages import cache_teacher, distill, finetune_teacher

    t_start = time.perf_counter()
    work = Path(args.work_dir).resolve()
    data_dir = Path(args.data_dir).resolve() if args.data_dir else work / "data"
    paths = write_data(Path(args.glue_dir), data_dir, args.n_labelled, args.n_unlabeled)
    data = dict(task=TASK, train_file=str(paths["train"]), dev_file=str(paths["dev"]), text_columns="sentence",
                label_column="label")
    common = dict(**data, backbone=args.backbone, max_length=args.max_length, batch_size=args.batch_size,
                  precision="fp32", ds_config="fp32_zero0", log_every_steps=50, cache_dir=str(work / "tok"))
    pool = dict(unlabeled_file=[str(paths["unlabeled"])])
    dirs = {"b": work / "b", "c": work / "c"}
    t0 = time.perf_counter()
    teacher = finetune_teacher.run(build_options(finetune_teacher.FinetuneTeacherOptions, **common, **pool,
                                                 output_dir=str(dirs["b"]), seed=0, epochs=args.teacher_epochs,
                                                 lr=args.teacher_lr))
    teacher_s = time.perf_counter() - t0
    teacher_dir = str(dirs["b"] / TASK / "teacher" / "best")
    caches = {}
    for key, extra in (("b", pool), ("c", {"augment": args.augment, "augment_seed": 0})):
        t0 = time.perf_counter()
        cache_teacher.run(build_options(cache_teacher.CacheTeacherOptions, **common, **extra,
                                        output_dir=str(dirs[key]), teacher_dir=teacher_dir))
        caches[key] = cache_stats(dirs[key] / TASK / "teacher_cache", time.perf_counter() - t0)
        print(f"[unlabeled] cache {key}: {caches[key]}", flush=True)
    ratio = None if args.unlabeled_ratio == "auto" else float(args.unlabeled_ratio)
    n_lab = caches["b"]["rows"]["train"]
    plan = {"labelled": ("b", pool | {"unlabeled_ratio": 0}, 0),
            "+unlabeled": ("b", pool | {"unlabeled_ratio": args.unlabeled_ratio}, caches["b"]["rows"].get("unlabeled", 0)),
            "+augment": ("c", {"augment": args.augment, "augment_seed": 0, "unlabeled_ratio": args.unlabeled_ratio},
                         caches["c"]["rows"].get("unlabeled", 0))}
    major, major_acc = majority_accuracy(paths["train"], paths["dev"])
    report = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
              "command": shlex.join(["python", *sys.argv]), "settings": vars(args),
              "environment": bench_common.environment("cpu"), "teacher": {"final": teacher["final"],
                                                                          "best": teacher["best"],
                                                                          "wall_s": round(teacher_s, 1)},
              "majority": {"class": major, "accuracy": major_acc}, "caches": caches, "runs": [], "complete": False}
    out = Path(args.out_json)
    out.parent.mkdir(parents=True, exist_ok=True)
    for seed in map(int, args.seeds.split(",")):
        for name in filter(None, args.configs.split(",")):
            key, extra, n_u = plan[name]
            spe = steps_per_epoch(n_lab, n_u, args.batch_size, 0 if name == "labelled" else ratio)
            report["runs"].append(run_student(distill, build_options, common, dirs[key], seed, name, args.steps, spe,
                                              student="plain", depth=args.depth, teacher_dir=teacher_dir, lr=args.lr,
                                              **extra))
            report["wall_time_s"] = round(time.perf_counter() - t_start, 1)
            out.write_text(json.dumps(report, indent=2, default=str))  # after every run: a partial report survives
    report["complete"] = True
    out.write_text(json.dumps(report, indent=2, default=str))
    print(render(report))


def render(report: dict) -> str:
    """The Markdown table of a report: one row per config (mean ± std over seeds), teacher and majority beside."""
    lines = ["| model | dev accuracy, final (%) | best-on-dev (%) | seeds | steps |", "|---|---|---|---|---|"]
    for name in CONFIGS:
        rows = [r for r in report["runs"] if r["config"] == name]
        if rows:
            lines.append(f"| student, {name} | {mean_std([r['final']['accuracy'] for r in rows])} | "
                         f"{mean_std([r['best']['accuracy'] for r in rows])} | {len(rows)} | "
                         f"{rows[0]['steps']} |")
    t = report["teacher"]
    lines.append(f"| teacher (fine-tuned on the 1,000 rows) | {mean_std([t['final']['accuracy']])} | "
                 f"{mean_std([t['best']['accuracy']])} | 1 | - |")
    lines.append(f"| majority class ({report['majority']['class']}) | {mean_std([report['majority']['accuracy']])} "
                 "| - | - | - |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
