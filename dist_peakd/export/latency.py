"""The latency of an exported ONNX graph on this machine: onnxruntime (CPU), a stated thread count, inputs
of the user's shape (batch x seq, every position a real token), the median of ``runs`` timed calls after
``warmup`` untimed ones. What ``dist-peakd compress`` times each candidate with (``bench/latency.py``
times the same way)."""

from __future__ import annotations

import os
import platform
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np

from .onnx import OnnxLogits


def machine_name() -> str:
    """``x86_64 CPU x 16``: what the figures were measured on."""
    return f"{platform.processor() or platform.machine()} CPU x {os.cpu_count()}"


def shape_inputs(vocab_size: int, batch: int, seq: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Full-length random token ids (latency depends on the shape only), attention on every position."""
    rng = np.random.default_rng(seed)
    low = 1000 if vocab_size > 2000 else 1
    ids = rng.integers(low, vocab_size, size=(batch, seq), dtype=np.int64)
    return {"input_ids": ids, "attention_mask": np.ones_like(ids), "token_type_ids": np.zeros_like(ids)}


def onnx_latency(path: str | Path, vocab_size: int, batch: int, seq: int, threads: int, warmup: int = 5,
                 runs: int = 20) -> dict[str, Any]:
    """Median wall time (ms) of one forward of the graph at ``batch`` x ``seq`` with ``threads`` intra-op
    threads (one inter-op thread), and the conditions it was measured under."""
    runner = OnnxLogits(path, threads=threads)
    feed = shape_inputs(vocab_size, batch, seq)
    for _ in range(warmup):
        runner(feed)
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        runner(feed)
        times.append((time.perf_counter() - t0) * 1000.0)
    return {"median_ms": statistics.median(times), "min_ms": min(times), "batch": batch, "seq": seq,
            "threads": threads, "warmup": warmup, "runs": runs, "machine": machine_name()}
