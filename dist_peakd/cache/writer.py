"""Writing a teacher cache (format: :mod:`dist_peakd.cache.store`): streamed shards, then the manifest.

Every file of a shard is allocated in full before a row is written (``posix_fallocate``), so a full
disk is an ``ENOSPC`` at the start, not a SIGBUS from a sparse memory map half-way; any write
failure is an :class:`~dist_peakd.errors.ArtifactWriteError` naming the shard, with its temporary
folder removed.
"""

from __future__ import annotations

import datetime
import os
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..artifacts import publish_dir, write_error
from ..integrity import file_sha256
from ..integrity import write_manifest as write_manifest_file
from .store import DTYPES, FILES, FORMAT_VERSION, IDENTITY_FIELDS, MANIFEST, cache_files


def shard_name(rank: int, world_size: int) -> str:
    return f"shard-{rank:05d}-of-{world_size:05d}"



class ShardWriter:
    """Stream one rank's rows of a split into a shard without holding them in RAM.

    The shard's example ids are known up front (the sampler fixes each rank's share), so the files
    are pre-allocated as memory-mapped ``.npy`` in a temporary sibling directory and every
    :meth:`add` writes its rows at their id-sorted position. :meth:`commit` checks every row was
    written, fsyncs, hashes and renames the directory into place (atomic) and returns the record
    ``{"path", "rows", "sha256": {file: hex}, "bytes": {file: int}}`` (``path`` relative to
    ``cache_dir``). [CLS] states are stored as float16 (an overflow is refused), logits as float32.
    """

    def __init__(self, cache_dir: str | Path, split: str, rank: int, world_size: int, ids: Any,
                 num_labels: int, num_layers: int, hidden_size: int) -> None:
        ids_a = np.sort(_numpy(ids).astype(np.int64).reshape(-1), kind="stable")
        if len(ids_a) > 1 and (np.diff(ids_a) == 0).any():
            raise ValueError(f"shard {split!r} rank {rank}: duplicate example ids")
        self.split, self.rank = split, rank
        self.rel = Path(split) / shard_name(rank, world_size)
        self.final = Path(cache_dir) / self.rel
        self.tmp = self.final.with_name(f".tmp-{self.final.name}-{os.getpid()}")
        n = len(ids_a)
        self.ids = ids_a
        self._written = np.zeros(n, dtype=bool)
        self._arrays: dict[str, np.ndarray] = {}
        try:
            self._allocate((("ids.npy", np.int64, (n,)), ("logits.npy", np.float32, (n, num_labels)),
                            ("cls.npy", np.float16, (n, num_layers, hidden_size))))
        except OSError as e:
            error = write_error(e, self.final, "teacher-cache shard", "nothing of it was published")
            self.abort()
            raise error from e
        if n:
            self._arrays["ids.npy"][:] = ids_a

    def _allocate(self, files: Sequence[tuple[str, Any, tuple[int, ...]]]) -> None:
        """The shard's ``.npy`` files in its temporary folder, every block reserved on disk."""
        self.final.parent.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(self.tmp, ignore_errors=True)
        self.tmp.mkdir()
        for name, dtype, shape in files:
            if not shape[0]:
                np.save(self.tmp / name, np.zeros(shape, dtype), allow_pickle=False)
                continue
            self._arrays[name] = np.lib.format.open_memmap(self.tmp / name, mode="w+", dtype=dtype, shape=shape)
            if hasattr(os, "posix_fallocate"):
                with open(self.tmp / name, "r+b") as f:
                    os.posix_fallocate(f.fileno(), 0, os.fstat(f.fileno()).st_size)

    def add(self, ids: Any, logits: Any, cls: Any) -> None:
        """Write rows: ``ids`` [b], ``logits`` [b, C], ``cls`` [b, L, H] (tensors or arrays)."""
        ids_a = _numpy(ids).astype(np.int64).reshape(-1)
        if len(ids_a) == 0:
            return
        logits_a = _numpy(logits).astype(np.float32, copy=False)
        with np.errstate(over="ignore"):
            cls_a = _numpy(cls).astype(np.float16)
        if logits_a.shape[0] != len(ids_a) or cls_a.shape[0] != len(ids_a):
            raise ValueError(f"shard {self.split!r} rank {self.rank}: {len(ids_a)} ids but logits "
                             f"{logits_a.shape} and cls {cls_a.shape}")
        if not np.isfinite(cls_a).all():
            raise ValueError(f"shard {self.split!r} rank {self.rank}: [CLS] states overflow float16 "
                             f"(|x| > 65504) or are not finite")
        pos = np.minimum(np.searchsorted(self.ids, ids_a), len(self.ids) - 1)
        if not (self.ids[pos] == ids_a).all():
            raise KeyError(f"shard {self.split!r} rank {self.rank}: ids {ids_a[self.ids[pos] != ids_a][:10].tolist()} "
                           "are not in this shard's id list")
        if self._written[pos].any() or len(np.unique(pos)) != len(pos):
            raise ValueError(f"shard {self.split!r} rank {self.rank}: an example id was written twice")
        self._arrays["logits.npy"][pos] = logits_a
        self._arrays["cls.npy"][pos] = cls_a
        self._written[pos] = True

    def commit(self) -> dict[str, Any]:
        """Finish the shard (all rows must have been added); returns its manifest record."""
        if not self._written.all():
            missing = self.ids[~self._written]
            raise ValueError(f"shard {self.split!r} rank {self.rank}: {len(missing)} row(s) never written, "
                             f"e.g. ids {missing[:10].tolist()}")
        try:
            for arr in self._arrays.values():
                arr.flush()  # type: ignore[attr-defined]
            self._arrays.clear()
            record: dict[str, Any] = {"path": self.rel.as_posix(), "rows": len(self.ids), "sha256": {}, "bytes": {}}
            for name in FILES:
                path = self.tmp / name
                with open(path, "rb+") as f:
                    os.fsync(f.fileno())
                record["sha256"][name] = file_sha256(path)
                record["bytes"][name] = path.stat().st_size
            publish_dir(self.tmp, self.final)
        except OSError as e:
            error = write_error(e, self.final, "teacher-cache shard", "nothing of it was published")
            self.abort()
            raise error from e
        return record

    def abort(self) -> None:
        """Drop the temporary directory (nothing is published)."""
        self._arrays.clear()
        shutil.rmtree(self.tmp, ignore_errors=True)


def _numpy(x: Any) -> np.ndarray:
    if torch.is_tensor(x):
        return x.detach().cpu().numpy()
    return np.asarray(x)


def write_shard(cache_dir: str | Path, split: str, rank: int, world_size: int, ids: Any, logits: Any,
                cls: Any) -> dict[str, Any]:
    """Write one rank's rows of ``split`` in one go (any row order; stored sorted by id).

    ``ids`` int [n], ``logits`` [n, C] (stored float32), ``cls`` [n, L, H] (stored float16).
    Atomic (temporary directory + rename); returns the shard record (see :class:`ShardWriter`).
    """
    logits_a, cls_a = _numpy(logits), _numpy(cls)
    if logits_a.ndim != 2 or cls_a.ndim != 3:
        raise ValueError(f"write_shard: expected logits [n, C] and cls [n, L, H], got {logits_a.shape}, "
                         f"{cls_a.shape}")
    writer = ShardWriter(cache_dir, split, rank, world_size, ids, logits_a.shape[1], cls_a.shape[1],
                         cls_a.shape[2])
    try:
        writer.add(ids, logits_a, cls_a)
        return writer.commit()
    except BaseException:
        writer.abort()
        raise


def write_manifest(cache_dir: str | Path, manifest: Mapping[str, Any]) -> Path:
    """Write ``manifest.json`` atomically (temp file, fsync, rename) in the one manifest shape
    (:func:`dist_peakd.integrity.write_manifest`; ``files`` last); call last, after every shard."""
    path = Path(cache_dir) / MANIFEST
    path.parent.mkdir(parents=True, exist_ok=True)
    rest = {k: v for k, v in manifest.items() if k != "files"}
    write_manifest_file(cache_dir, MANIFEST, dict(manifest["files"]), fsync_dir=True, **rest)
    return path


def build_manifest(*, identity: Mapping[str, Any], splits: Mapping[str, Sequence[Mapping[str, Any]]],
                   num_labels: int, num_layers: int, hidden_size: int, teacher_dir: str | Path,
                   world_size: int, teacher_dev_metrics: Mapping[str, float] | None = None,
                   **extra: Any) -> dict[str, Any]:
    """Assemble a manifest from the identity fields and each split's shard records (their files' sizes and
    sha256 go to ``files``, the one manifest shape; a shard record keeps its ``path`` and ``rows``)."""
    records = {name: sorted((dict(r) for r in recs), key=lambda r: r["path"]) for name, recs in splits.items()}
    files = cache_files({"splits": {name: {"shards": recs} for name, recs in records.items()}})
    return {
        "format_version": FORMAT_VERSION,
        **{k: identity[k] for k in IDENTITY_FIELDS},
        "teacher_dir": str(Path(teacher_dir).resolve()),
        "splits": {name: {"rows": int(sum(r["rows"] for r in recs)),
                          "shards": [{"path": r["path"], "rows": r["rows"]} for r in recs]}
                   for name, recs in records.items()},
        "num_labels": int(num_labels),
        "num_layers": int(num_layers),
        "hidden_size": int(hidden_size),
        "dtypes": dict(DTYPES),
        "shapes": {"ids": [], "logits": [int(num_labels)], "cls": [int(num_layers), int(hidden_size)]},
        "teacher_dev_metrics": dict(teacher_dev_metrics or {}),
        "created_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "world_size": int(world_size),
        **extra,
        "files": files,
    }
