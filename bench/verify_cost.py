"""Cost of verifying a teacher cache on open (issue 14 item 2): a BERT-base-size SST-2 cache.

Writes a cache of the real shape (SST-2: 67,349 train + 872 dev rows; BERT-base teacher: 12 layers x
768 [CLS] states in float16, 2 logits) with random values through the product's writer, then times
``TeacherCache.open(verify="checksum")``: the first open in a process hashes every file (sha256), a
second open in the same process reuses the remembered digests. Each repeat clears the memo first.
The files are in the page cache (just written): the figure is hashing cost, not disk reads.

    nice -n 10 .venv/bin/python bench/verify_cost.py --repeats 3 --out docs/bench/verify-cost-cpu.json
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from dist_peakd import artifacts
from dist_peakd.cache import TeacherCache, build_manifest, write_manifest, write_shard

SPLITS = {"train": 67_349, "validation": 872}
LAYERS, HIDDEN, LABELS = 12, 768, 2


def build(root: Path) -> dict:
    identity = {"teacher_fingerprint": "t" * 64, "tokenizer_fingerprint": "k" * 64, "max_length": 128,
                "data_fingerprint": "d" * 64, "task": "sst2"}
    rng = np.random.default_rng(0)
    recs = {}
    for split, n in SPLITS.items():
        logits = rng.standard_normal((n, LABELS), dtype=np.float32)
        block = rng.standard_normal((1000, LAYERS, HIDDEN), dtype=np.float32).astype(np.float16)
        cls = np.resize(block, (n, LAYERS, HIDDEN))  # the bytes do not matter to sha256's speed
        recs[split] = [write_shard(root, split, 0, 1, np.arange(n), logits, cls)]
    write_manifest(root, build_manifest(identity=identity, splits=recs, num_labels=LABELS, num_layers=LAYERS,
                                        hidden_size=HIDDEN, teacher_dir=root, world_size=1))
    return identity


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="verify-cost-"))
    try:
        root = tmp / "teacher_cache"
        identity = build(root)
        size = sum(p.stat().st_size for p in root.rglob("*") if p.is_file())
        first, again = [], []
        for _ in range(args.repeats):
            artifacts._DIGESTS.clear()
            t0 = time.perf_counter()
            TeacherCache.open(root, identity, verify="checksum")
            first.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            TeacherCache.open(root, identity, verify="checksum")
            again.append(time.perf_counter() - t0)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    gib = size / 2**30
    result = {"cache": "SST-2 size, BERT-base teacher (12 x 768 fp16 [CLS] + 2 logits per row)",
              "rows": SPLITS, "bytes": size, "repeats": args.repeats,
              "first_open_s": first, "second_open_s": again,
              "first_open_median_s": statistics.median(first), "second_open_median_s": statistics.median(again),
              "seconds_per_gib_median": statistics.median(first) / gib}
    print(json.dumps(result, indent=2))
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
