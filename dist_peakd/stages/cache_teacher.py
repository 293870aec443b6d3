"""Stage 2: run the fine-tuned teacher once over train and dev and cache its outputs.

Per example (keyed by the GLUE ``idx``): logits (float32) and the [CLS] vector after every encoder
layer (float16), in ``<output_dir>/<task>/teacher_cache/`` (format: :mod:`dist_peakd.cache.store`).
Each rank runs the teacher (eval mode, no dropout) over a disjoint share of every split and writes its
own shard; rank 0 then writes the manifest with the teacher's dev metrics computed from the cached
dev logits. A valid cache built from the same teacher, tokenizer, max_length and data is reused
(``skipped``); a different or damaged one is refused unless ``rebuild=True``.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from ..cache.store import (
    IDENTITY_FIELDS,
    MANIFEST,
    CacheCorruptError,
    CacheMismatchError,
    ShardWriter,
    TeacherCache,
    build_manifest,
    teacher_fingerprint,
    write_manifest,
)
from ..config import RunOptions, save_resolved_config
from ..data import LengthGroupedBatchSampler, tokenizer_fingerprint
from ..engine import (
    ConfigError,
    DistInfo,
    Engine,
    all_gather_objects,
    barrier,
    broadcast_object,
    init_distributed,
    seed_everything,
)
from ..engine.engine import atomic_write_text
from ..engine.loop import fetch_rows
from ..metrics import compute_metrics
from ..models import load_teacher, teacher_forward
from .common import TaskData, collator_for, load_tokenizer, prepare_data, quiet_environment

STAGE = "teacher_cache"


@dataclass
class CacheTeacherOptions(RunOptions):
    """Teacher-cache options: the shared ones plus the teacher folder, rebuild flag and batch size."""

    teacher_dir: str | None = None  # default <output_dir>/<task>/teacher/best
    rebuild: bool = False           # delete an existing cache (valid or not) and build it again
    cache_batch_size: int = 256     # global inference batch (split over the ranks)

    def validate(self) -> None:
        super().validate()
        if self.cache_batch_size < 1:
            raise ConfigError(f"option cache_batch_size: must be >= 1, got {self.cache_batch_size}")

    def resolved_teacher_dir(self) -> Path:
        return Path(self.teacher_dir) if self.teacher_dir else self.task_dir() / "teacher" / "best"


def cache_dir_for(opts: RunOptions) -> Path:
    """Where the teacher cache of this run's task lives: ``<output_dir>/<task>/teacher_cache``."""
    return opts.task_dir() / STAGE


def expected_identity(opts: RunOptions, data: TaskData, tokenizer: Any, teacher_dir: str | Path) -> dict[str, Any]:
    """What a cache must have been built from to serve this run (manifest field names + ``rows``)."""
    return {
        "teacher_fingerprint": teacher_fingerprint(teacher_dir),
        "tokenizer_fingerprint": tokenizer_fingerprint(tokenizer),
        "max_length": int(opts.max_length),
        "data_fingerprint": data.fingerprint,
        "task": data.task.name,
        "rows": {"train": len(data.train), data.dev_split: len(data.dev)},
    }


def _summary_of(cache: TeacherCache, skipped: bool, **extra: Any) -> dict[str, Any]:
    m = cache.manifest
    return {"stage": STAGE, "cache_dir": str(cache.cache_dir), "skipped": skipped,
            "rows": {k: v["rows"] for k, v in m["splits"].items()},
            "teacher_dev_metrics": m.get("teacher_dev_metrics", {}),
            **{k: m.get(k) for k in (*IDENTITY_FIELDS, "num_labels", "num_layers", "hidden_size",
                                     "world_size", "created_at")},
            **extra}


def _decide(cache_dir: Path, expected: dict[str, Any], rebuild: bool) -> dict[str, Any]:
    """Rank 0: skip (valid matching cache), build, or error (mismatch/corruption without rebuild)."""
    if rebuild:
        return {"action": "build", "reason": "rebuild requested"}
    if not (cache_dir / MANIFEST).is_file():
        return {"action": "build", "reason": "no cache"}
    start = time.perf_counter()
    try:
        cache = TeacherCache.open(cache_dir, expected, verify="checksum")
    except (CacheMismatchError, CacheCorruptError) as e:
        return {"action": "error", "error": e}
    return {"action": "skip", "summary": _summary_of(cache, True, verify_s=round(time.perf_counter() - start, 3))}


def _clear(cache_dir: Path) -> None:
    """Invalidate first (manifest), then delete the old cache's files."""
    (cache_dir / MANIFEST).unlink(missing_ok=True)
    if cache_dir.exists():
        shutil.rmtree(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)


def _cache_forward(engine: Engine, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    out = teacher_forward(engine.ds, batch["input_ids"], batch["attention_mask"], batch["token_type_ids"])
    return out.logits.float(), torch.stack(out.cls_states, dim=1)


@torch.no_grad()
def _build_split(engine: Engine, rows: Any, split: str, cache_dir: Path, opts: CacheTeacherOptions,
                 dist_info: DistInfo, collate: Any, dims: tuple[int, int, int], bar: Any) -> dict[str, Any]:
    """This rank's share of ``rows`` through the teacher, streamed into its shard; returns the record."""
    sampler = LengthGroupedBatchSampler(list(rows["length"]), global_batch_size=opts.cache_batch_size,
                                        num_replicas=dist_info.world_size, rank=dist_info.rank,
                                        seed=opts.seed, shuffle=False)
    shares = list(sampler)
    idx_col = np.asarray(rows["idx"], dtype=np.int64)
    mine = np.concatenate([idx_col[s] for s in shares if s]) if any(shares) else np.zeros(0, np.int64)
    writer = ShardWriter(cache_dir, split, dist_info.rank, dist_info.world_size, mine, *dims)
    try:
        for share in shares:
            if share:
                batch = engine.to_device(collate(fetch_rows(rows, share)))
                logits, cls = _cache_forward(engine, batch)
                writer.add(batch["example_ids"], logits, cls.to(torch.float16))
            bar.update(1)
        return writer.commit()
    except BaseException:
        writer.abort()
        raise


def run(opts: CacheTeacherOptions) -> dict[str, Any]:
    """Build (or reuse) the teacher cache; returns a summary (rows, timing, teacher dev metrics)."""
    quiet_environment()
    dist_info = init_distributed()
    seed_everything(opts.seed)
    cache_dir = cache_dir_for(opts)
    teacher_dir = opts.resolved_teacher_dir()
    if not (teacher_dir / "config.json").is_file():
        raise FileNotFoundError(f"teacher folder {teacher_dir} not found (no config.json); run "
                                "finetune-teacher first or pass --teacher_dir")
    tokenizer = load_tokenizer(str(teacher_dir))
    data = prepare_data(opts, tokenizer)
    task = data.task

    decision: dict[str, Any] = {}
    if dist_info.is_main:
        try:
            expected = expected_identity(opts, data, tokenizer, teacher_dir)
            decision = {**_decide(cache_dir, expected, opts.rebuild), "expected": expected}
        except Exception as e:  # every rank raises the same error instead of waiting for rank 0
            decision = {"action": "error", "error": e}
    decision = broadcast_object(decision)  # type: ignore[assignment]
    if decision["action"] == "error":
        raise decision["error"]
    if decision["action"] == "skip":
        summary = decision["summary"]
        if dist_info.is_main:
            print(f"[dist-peakd] teacher cache {cache_dir} is valid and matches this run: skipped "
                  f"(verified in {summary['verify_s']} s)", flush=True)
        return summary
    expected = decision["expected"]

    start = time.perf_counter()
    if dist_info.is_main:
        _clear(cache_dir)
        save_resolved_config(opts, cache_dir / "config.json")
    barrier()
    model = load_teacher(teacher_dir, num_labels=task.num_labels)
    dims = (task.num_labels, int(model.config.num_hidden_layers), int(model.config.hidden_size))
    # inference only: the batch options just have to satisfy DeepSpeed's batch arithmetic
    engine_opts = dataclasses.replace(opts.engine_options(), batch_size=dist_info.world_size, micro_batch_size=1)
    engine = Engine(model, engine_opts, total_steps=1, dist_info=dist_info, train=False)
    engine.ds.eval()
    collate = collator_for(tokenizer)
    splits = {"train": data.train, data.dev_split: data.dev}
    n_steps = sum(-(-len(rows) // opts.cache_batch_size) for rows in splits.values())
    bar = tqdm(total=n_steps, desc="cache-teacher", disable=not dist_info.is_main)
    infer_start = time.perf_counter()
    records = {name: _build_split(engine, rows, name, cache_dir, opts, dist_info, collate, dims, bar)
               for name, rows in splits.items()}
    bar.close()
    gathered = all_gather_objects(records)  # also a barrier: every shard is on disk
    infer_s = time.perf_counter() - infer_start
    summary: dict[str, Any] = {}
    if dist_info.is_main:
        manifest = build_manifest(
            identity=expected, splits={name: [g[name] for g in gathered] for name in splits},  # type: ignore[index]
            num_labels=dims[0], num_layers=dims[1], hidden_size=dims[2], teacher_dir=teacher_dir,
            world_size=dist_info.world_size, dev_split=data.dev_split, precision=engine.precision)
        draft = TeacherCache(cache_dir, manifest)
        dev = draft.split(data.dev_split)
        label_of = dict(zip(map(int, data.dev["idx"]), data.dev["label"], strict=True))
        labels = np.asarray([label_of[int(i)] for i in dev.ids])
        manifest["teacher_dev_metrics"] = compute_metrics(task, dev.logits().numpy(), labels)
        write_manifest(cache_dir, manifest)
        build_s = time.perf_counter() - start
        v0 = time.perf_counter()
        cache = TeacherCache.open(cache_dir, expected, verify="checksum")
        total_rows = sum(v["rows"] for v in manifest["splits"].values())
        summary = _summary_of(cache, False, build_s=round(build_s, 3), inference_s=round(infer_s, 3),
                              rows_per_s=round(total_rows / max(infer_s, 1e-9), 1),
                              verify_s=round(time.perf_counter() - v0, 3), precision=engine.precision)
        atomic_write_text(cache_dir / "summary.json", json.dumps(summary, indent=2, default=str))
        print(f"[dist-peakd] cached {total_rows} rows ({', '.join(f'{k}: {v}' for k, v in summary['rows'].items())}) "
              f"in {build_s:.1f} s (teacher pass {infer_s:.1f} s, {summary['rows_per_s']} rows/s) on {dist_info.world_size} rank(s); "
              f"teacher dev {json.dumps(summary['teacher_dev_metrics'])}", flush=True)
    summary = broadcast_object(summary)  # type: ignore[assignment]
    barrier()
    return summary
