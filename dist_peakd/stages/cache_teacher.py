"""Stage 2: run the fine-tuned teacher once over train and dev and cache its outputs.

Per example (keyed by the GLUE ``idx``): logits (float32) and the [CLS] vector after every encoder
layer (float16), in ``<output_dir>/<task>/teacher_cache/`` (format: :mod:`dist_peakd.cache.store`).
Each rank runs the teacher (eval mode, no dropout) over a disjoint share of every split and writes its
own shard; rank 0 then writes the manifest with the teacher's dev metrics computed from the cached
dev logits. A valid cache built from the same teacher, tokenizer, max_length and data is reused
(``skipped``, after every file's sha256 was checked); a different or damaged one is refused unless
``rebuild`` (or ``force``) is set. A new cache is built beside the old one (``.tmp-<name>-build``),
verified, then swapped in atomically: a failed build (a corrupt teacher, a full disk, a dead rank)
leaves the previous cache valid and in place. One job at a time per cache folder (its lock).
"""

from __future__ import annotations

import dataclasses
import errno
import json
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from .. import console
from ..artifacts import atomic_write_text, publish_dir
from ..cache.store import (
    IDENTITY_FIELDS,
    MANIFEST,
    UNLABELED_SPLIT,
    TeacherCache,
    bytes_per_row,
)
from ..cache.writer import ShardWriter, build_manifest, write_manifest
from ..config import (
    CommandOptions,
    DataSourceOptions,
    DeviceOptions,
    EvalSliceOption,
    ForceOption,
    ModelOptions,
    OutputOptions,
    RunOptions,
    SeedOption,
    TrainSliceOption,
    TrustOption,
    UnlabeledOptions,
    option,
    save_resolved_config,
)
from ..console import human_size
from ..data import tokenizer_fingerprint
from ..data.collate import TokenColumns
from ..data.rows import column_array
from ..data.sampler import length_run_batches, rank_share
from ..engine import (
    DistInfo,
    Engine,
    all_gather_objects,
    barrier,
    broadcast_object,
    decide_on_rank0,
    init_distributed,
    seed_everything,
)
from ..errors import ArtifactWriteError, CacheCorruptError, CacheMismatchError
from ..integrity import model_fingerprint, verify_export
from ..layout import STAGE_OPTIONS, SUMMARY, TEACHER_CACHE
from ..metrics import metric_report
from ..models import load_teacher, teacher_forward
from .common import (
    TaskData,
    collator_for,
    load_run_data,
    load_tokenizer,
    prepare_data,
    quiet_environment,
)
from .preflight import check_models
from .stage_folder import lock_for_job, releases_locks
from .student_common import TeacherOptions

STAGE = TEACHER_CACHE
GPU_BATCH_ROWS = 256  # default rows per global batch of the pass on a GPU
CPU_BATCH_BUDGET = 4 * 2**20  # default activation values per rank's batch on a CPU (a cache-sized working set)
CPU_MAX_ROWS = 8192


@dataclass
class CacheTeacherOptions(TeacherOptions, ForceOption, TrustOption, SeedOption, DeviceOptions, UnlabeledOptions,
                          EvalSliceOption, TrainSliceOption, ModelOptions, DataSourceOptions, OutputOptions,
                          CommandOptions):
    """Teacher-cache options: the data (and unlabeled pool), the backbone's length, the device, the teacher
    folder, rebuild flag and batch size (no optimizer or training-loop options: nothing trains)."""

    rebuild: bool = option(False, help="build the teacher cache again even when a valid one exists (the old one "
                                       "is replaced only once the new one is verified)", result=False)
    cache_batch_size: int | None = option(
        None, ge=1, result=False,
        help="most rows in a global inference batch of the teacher-cache pass (split over the ranks); batches "
             "end early where the length changes, at half this size or more. Default: on a GPU 256; on a CPU "
             f"as many rows as keep each rank's batch within {CPU_BATCH_BUDGET // 2**20}M activation values "
             "(rows x length x (hidden + heads x length), at most 8192 rows), the fastest there for both tiny "
             "and MiniLM-size teachers (docs/BENCHMARKS.md)")


def inference_rows(cache_batch_size: int | None, device_type: str, world_size: int, hidden_size: int,
                   num_heads: int) -> int | Callable[[int], int]:
    """The pass's row cap per global batch: ``cache_batch_size`` when given; by default 256 on a GPU and on
    a CPU a function of the batch's padded length ``L`` that keeps every rank's share within
    :data:`CPU_BATCH_BUDGET` activation values (``rows * L * (hidden + heads * L)``: hidden states plus
    attention scores), between ``world_size`` and ``world_size * CPU_MAX_ROWS`` rows."""
    if cache_batch_size is not None:
        return int(cache_batch_size)
    if device_type != "cpu":
        return GPU_BATCH_ROWS

    def rows_for(length: int) -> int:
        per_rank = CPU_BATCH_BUDGET // max(1, length * (hidden_size + num_heads * length))
        return world_size * max(1, min(CPU_MAX_ROWS, per_rank))

    return rows_for


def expected_identity(opts: RunOptions, data: TaskData, tokenizer: Any, teacher_dir: str | Path) -> dict[str, Any]:
    """What a cache must have been built from to serve this run (manifest field names + ``rows``); the
    unlabeled pool's fingerprint is ``None`` without one (a cache with a pool then differs too)."""
    rows = {"train": len(data.train), data.dev_split: len(data.dev)}
    if data.unlabeled is not None:
        rows[UNLABELED_SPLIT] = len(data.unlabeled)
    return {
        "teacher_fingerprint": model_fingerprint(teacher_dir),
        "tokenizer_fingerprint": tokenizer_fingerprint(tokenizer),
        "max_length": int(opts.max_length),
        "data_fingerprint": data.fingerprint,
        "task": data.task.name,
        "unlabeled_fingerprint": data.unlabeled_fingerprint,
        "rows": rows,
    }


def _summary_of(cache: TeacherCache, skipped: bool, **extra: Any) -> dict[str, Any]:
    m = cache.manifest
    return {"stage": STAGE, "cache_dir": str(cache.cache_dir), "skipped": skipped,
            "rows": {k: v["rows"] for k, v in m["splits"].items()},
            "teacher_dev_metrics": m.get("teacher_dev_metrics", {}),
            "teacher_dev_warnings": m.get("teacher_dev_warnings", []),
            **{k: m.get(k) for k in (*IDENTITY_FIELDS, "num_labels", "num_layers", "hidden_size",
                                     "world_size", "created_at")},
            **({"unlabeled": m["unlabeled"]} if "unlabeled" in m else {}),
            **extra}


def _decide(cache_dir: Path, expected: dict[str, Any], rebuild: bool, force: bool = False) -> dict[str, Any]:
    """Rank 0: skip (valid matching cache) or build; a mismatch or corruption without rebuild/force raises."""
    if rebuild:
        return {"action": "build", "reason": "rebuild requested"}
    if not (cache_dir / MANIFEST).is_file():
        return {"action": "build", "reason": "no cache"}
    start = time.perf_counter()
    try:
        cache = TeacherCache.open(cache_dir, expected, verify="checksum")
    except (CacheMismatchError, CacheCorruptError) as e:
        if force:
            return {"action": "build", "reason": f"--force: {e}"}
        raise
    return {"action": "skip", "summary": _summary_of(cache, True, verify_s=round(time.perf_counter() - start, 3))}


def check_disk(cache_dir: Path, rows: int, num_labels: int, teacher_dir: Path) -> int:
    """Rank 0, before the pass: print the cache's expected size (rows x :func:`~dist_peakd.cache.bytes_per_row`)
    and refuse (:class:`ArtifactWriteError`, exit 6, nothing written) when the disk holding ``cache_dir`` has
    less free space. The new cache is built beside the old one, which is deleted only after the swap, so the
    whole new size must be free. Returns the expected bytes."""
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(str(teacher_dir))  # every family's names (DistilBERT: n_layers, dim)
    layers, hidden = int(config.num_hidden_layers), int(config.hidden_size)
    per_row = bytes_per_row(num_labels, layers, hidden)
    need = rows * per_row
    where = next(p for p in (cache_dir, *cache_dir.parents) if p.exists())
    free = shutil.disk_usage(where).free
    line = (f"teacher cache: {rows} rows x {per_row} bytes (logits 4 x {num_labels} + [CLS] 2 x {layers} layers x "
            f"{hidden} + id 8) = {human_size(need)} expected; {human_size(free)} free on {where}")
    if free < need:
        raise ArtifactWriteError(errno.ENOSPC, f"{cache_dir}: not enough free disk space for the {line}; free "
                                 "some or give --teacher_cache_dir on a larger disk", str(cache_dir))
    console.info(line)
    return need


def build_dir_of(cache_dir: Path) -> Path:
    """Where a new cache is built before it replaces ``cache_dir`` (same folder: the swap is a rename)."""
    return cache_dir.with_name(f".tmp-{cache_dir.name}-build")


def aligned_to_task(model: Any, task: Any, teacher_dir: Path) -> Any:
    """The teacher's outputs in the task's class order: its own ``id2label`` matched to the task's by name
    (the head's rows reordered), generic ``LABEL_i`` names by index; said in one line when not the same
    (refused in the preflight when they cannot be matched)."""
    from ..models.teacher_labels import match_labels, model_label_names, reorder_head

    names = task.id2label()
    match = match_labels(model_label_names(model.config.id2label, task.num_labels),
                         [names[i] for i in range(task.num_labels)], str(teacher_dir), task.name)
    reorder_head(model, match)
    if match.note:
        console.info(f"teacher: {match.note}")
    return model


def _cache_forward(engine: Engine, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    out = teacher_forward(engine.ds, batch["input_ids"], batch["attention_mask"], batch["token_type_ids"])
    return out.logits.float(), torch.stack(out.cls_states, dim=1)


@torch.inference_mode()
def _build_split(engine: Engine, columns: TokenColumns, shares: list[list[int]], split: str, cache_dir: Path,
                 dist_info: DistInfo, collate: Any, dims: tuple[int, int, int], bar: Any) -> dict[str, Any]:
    """This rank's ``shares`` (row positions in ``columns``, one per batch) through the teacher, streamed
    into its shard; returns the record. Every batch is gathered from the flat token columns
    (``collate.gather``: no per-row Python objects); the forward runs under ``inference_mode``.
    """
    mine = (np.concatenate([columns.example_ids[s] for s in shares if s]) if any(shares)
            else np.zeros(0, np.int64))
    writer = ShardWriter(cache_dir, split, dist_info.rank, dist_info.world_size, mine, *dims)
    try:
        for share in shares:
            if share:
                batch = engine.to_device(collate.gather(columns, share))
                logits, cls = _cache_forward(engine, batch)
                writer.add(batch["example_ids"], logits, cls.to(torch.float16))
            bar.update(1)
        return writer.commit()
    except BaseException:
        writer.abort()
        raise


def _decision(opts: CacheTeacherOptions, dist_info: DistInfo, cache_dir: Path, data: TaskData, tokenizer: Any,
              teacher_dir: Path) -> dict[str, Any]:
    """Rank 0 decides (skip / build / error) and every rank gets the same decision."""
    return decide_on_rank0(_decide_on_rank0, opts, cache_dir, data, tokenizer, teacher_dir)


def _decide_on_rank0(opts: CacheTeacherOptions, cache_dir: Path, data: TaskData, tokenizer: Any,
                     teacher_dir: Path) -> dict[str, Any]:
    expected = expected_identity(opts, data, tokenizer, teacher_dir)
    decision = {**_decide(cache_dir, expected, opts.rebuild, opts.force), "expected": expected}
    if decision["action"] == "build":
        check_disk(cache_dir, sum(expected["rows"].values()), data.task.num_labels, teacher_dir)
    return decision


def _teacher_pass(opts: CacheTeacherOptions, dist_info: DistInfo, cache_dir: Path, data: TaskData, tokenizer: Any,
                  teacher_dir: Path) -> tuple[dict[str, Any], tuple[int, int, int], str, float]:
    """Every rank runs the teacher over its share of each split into its shards; returns every rank's
    shard records per split, the cache dimensions, the precision and the pass's wall time."""
    model = load_teacher(teacher_dir, num_labels=data.task.num_labels, trust_unverified=opts.trust_unverified,
                         require_head=True)
    aligned_to_task(model, data.task, teacher_dir)
    dims = (data.task.num_labels, int(model.config.num_hidden_layers), int(model.config.hidden_size))
    # inference only: the batch options just have to satisfy DeepSpeed's batch arithmetic
    engine_opts = dataclasses.replace(opts.engine_options(), batch_size=dist_info.world_size, micro_batch_size=1)
    engine = Engine(model, engine_opts, total_steps=1, dist_info=dist_info, train=False)
    engine.ds.eval()
    collate = collator_for(tokenizer)
    max_rows = inference_rows(opts.cache_batch_size, engine.device.type, dist_info.world_size, dims[2],
                              int(getattr(model.config, "num_attention_heads", 1)))
    splits = {"train": data.train, data.dev_split: data.dev}
    if data.unlabeled is not None:
        splits[UNLABELED_SPLIT] = data.unlabeled
    start = time.perf_counter()
    records = {}
    for name, rows in splits.items():
        # runs of one length where the data allow (length_run_batches): no padding, no mask
        columns = TokenColumns.from_dataset(rows)
        shares = [rank_share(b, dist_info.world_size, dist_info.rank)
                  for b in length_run_batches(columns.lengths, max_rows)]
        with tqdm(total=len(shares), desc=f"cache-teacher {name}", disable=not dist_info.is_main) as bar:
            records[name] = _build_split(engine, columns, shares, name, cache_dir, dist_info, collate, dims, bar)
    gathered = all_gather_objects(records)  # also a barrier: every shard is on disk
    return {name: [g[name] for g in gathered] for name in splits}, dims, engine.precision, time.perf_counter() - start


def _write_manifest(cache_dir: Path, expected: dict[str, Any], shards: dict[str, Any], dims: tuple[int, int, int],
                    teacher_dir: Path, data: TaskData, world_size: int, precision: str) -> dict[str, Any]:
    """Rank 0: the manifest, with the teacher's dev metrics computed from the cached dev logits."""
    pool = {} if data.unlabeled_info is None else {"unlabeled_fingerprint": data.unlabeled_fingerprint,
                                                   "unlabeled": data.unlabeled_info.record()}
    manifest = build_manifest(
        identity=expected, splits=shards, num_labels=dims[0], num_layers=dims[1], hidden_size=dims[2],
        teacher_dir=teacher_dir, world_size=world_size, dev_split=data.dev_split, precision=precision, **pool)
    dev = TeacherCache(cache_dir, manifest).split(data.dev_split)
    label_of = dict(zip(column_array(data.dev, "idx").tolist(), column_array(data.dev, "label").tolist(), strict=True))
    labels = np.asarray([label_of[int(i)] for i in dev.ids])
    report = metric_report(data.task, dev.logits().numpy(), labels)
    manifest["teacher_dev_metrics"], manifest["teacher_dev_warnings"] = report.values, report.warnings
    for warning in report.warnings:
        console.info(f"warning: teacher dev predictions: {warning}")
    write_manifest(cache_dir, manifest)
    return manifest


@releases_locks
def run(opts: CacheTeacherOptions) -> dict[str, Any]:
    """Build (or reuse) the teacher cache; returns a summary (rows, timing, teacher dev metrics)."""
    quiet_environment()
    dist_info = init_distributed()
    seed_everything(opts.seed)
    layout = opts.layout()
    cache_dir, teacher_dir = layout.teacher_cache, layout.teacher
    # bad data are refused first, then the teacher (present, this task's, a trained head, the backbone's
    # tokenizer), before anything is written
    loaded = load_run_data(opts, before_record=lambda task: check_models(opts, "cache-teacher", task), unlabeled=True)
    verify_export(teacher_dir, required=True if not layout.teacher_is_given else None,
                  trust_unverified=opts.trust_unverified)
    lock_for_job(cache_dir, "teacher cache")
    tokenizer = load_tokenizer(str(teacher_dir))
    data = prepare_data(opts, tokenizer, loaded=loaded, unlabeled=True)
    decision = _decision(opts, dist_info, cache_dir, data, tokenizer, teacher_dir)
    if decision["action"] == "skip":
        summary = decision["summary"]
        console.info(f"teacher cache {cache_dir} is valid and matches this run: skipped "
                     f"(verified in {summary['verify_s']} s)")
        return summary
    build = build_dir_of(cache_dir)
    try:
        summary = _build(opts, dist_info, cache_dir, build, data, tokenizer, teacher_dir, decision)
    except BaseException:
        if dist_info.is_main:
            shutil.rmtree(build, ignore_errors=True)  # the previous cache (if any) is untouched
        raise
    summary = broadcast_object(summary)  # type: ignore[assignment]
    barrier()
    return summary


def _build(opts: CacheTeacherOptions, dist_info: DistInfo, cache_dir: Path, build: Path, data: TaskData,
           tokenizer: Any, teacher_dir: Path, decision: dict[str, Any]) -> dict[str, Any]:
    """Every rank writes its shards into ``build``; rank 0 writes the manifest, verifies, swaps it in."""
    start = time.perf_counter()
    if dist_info.is_main:
        shutil.rmtree(build, ignore_errors=True)
        build.mkdir(parents=True)
        save_resolved_config(opts, build / STAGE_OPTIONS)
    barrier()
    shards, dims, precision, infer_s = _teacher_pass(opts, dist_info, build, data, tokenizer, teacher_dir)
    if not dist_info.is_main:
        return {}
    manifest = _write_manifest(build, decision["expected"], shards, dims, teacher_dir, data,
                               dist_info.world_size, precision)
    return _verified_summary(build, cache_dir, decision["expected"], manifest, time.perf_counter() - start,
                             infer_s, precision, dist_info.world_size)


def _verified_summary(build: Path, cache_dir: Path, expected: dict[str, Any], manifest: dict[str, Any],
                      build_s: float, infer_s: float, precision: str, world_size: int) -> dict[str, Any]:
    """Rank 0: reopen the new cache in ``build`` with checksums, swap it in, write and print its summary."""
    v0 = time.perf_counter()
    TeacherCache.open(build, expected, verify="checksum")
    verify_s = time.perf_counter() - v0
    publish_dir(build, cache_dir)  # atomic swap with the previous cache, which is then deleted
    cache = TeacherCache.open(cache_dir, expected, verify="checksum")  # digests known: sizes and headers only
    total_rows = sum(v["rows"] for v in manifest["splits"].values())
    summary = _summary_of(cache, False, build_s=round(build_s, 3), inference_s=round(infer_s, 3),
                          rows_per_s=round(total_rows / max(infer_s, 1e-9), 1),
                          verify_s=round(verify_s, 3), precision=precision)
    atomic_write_text(cache_dir / SUMMARY, json.dumps(summary, indent=2, default=str))
    console.info(f"cached {total_rows} rows ({', '.join(f'{k}: {v}' for k, v in summary['rows'].items())}) "
                 f"in {build_s:.1f} s (teacher pass {infer_s:.1f} s, {summary['rows_per_s']} rows/s) on {world_size} "
                 "rank(s); teacher dev " + ", ".join(f"{k} {v:.4f}" for k, v in summary["teacher_dev_metrics"].items()))
    return summary
