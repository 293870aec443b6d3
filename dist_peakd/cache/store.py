"""On-disk teacher cache: per-rank ``.npy`` shards plus a JSON manifest, read memory-mapped.

Format decision: plain NumPy ``.npy`` files opened with ``numpy.load(mmap_mode="r")``.

* Random access by row is what distillation needs (a shuffled batch of example ids per step); a
  memory-mapped ``.npy`` is a fixed header followed by a C-ordered array, so fancy-indexing rows
  reads just those pages from the OS page cache, zero-copy until the gather, for any row count
  (QQP/MNLI-size caches never have to fit in RAM).
* No extra dependency (NumPy is already required) and the files are readable by any tool.
* safetensors can memory-map too, but partial, row-wise reads of a tensor are not as simple
  (``safe_open(...).get_slice`` gives contiguous slices, not an arbitrary row gather); Arrow/
  Parquet are organised in row groups (columnar chunks) and a nested ``[L, H]`` float16 column per
  row is awkward and decoded per group.

Layout::

    <cache_dir>/manifest.json   identity, dimensions, splits (shards: path, rows), files (path -> bytes, sha256)
    <cache_dir>/<split>/shard-<rank:05d>-of-<world:05d>/ids.npy     int64   [n]
                                                      /logits.npy  float32 [n, C]
                                                      /cls.npy     float16 [n, L, H]

Writing is :mod:`dist_peakd.cache.writer`'s job. Each shard directory is written under a temporary
name and renamed into place (atomic); the manifest is written last (temp file + rename) by rank 0 once every shard exists, so a cache without
``manifest.json`` is incomplete and never valid. The manifest records each file's size and sha256;
:meth:`TeacherCache.open` always checks sizes and, with ``verify="checksum"`` (the default, what every
stage uses), the sha256 of every file, once per process and file
(:func:`dist_peakd.integrity.verified_sha256`; ~1.5 GB/s, see docs/RELIABILITY.md for a BERT-base-size cache).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import CacheCorruptError, CacheMismatchError
from ..integrity import IN_MANIFEST, manifest_problems, model_fingerprint
from ..layout import CACHE_MANIFEST

FORMAT_VERSION = 1
MANIFEST = CACHE_MANIFEST
FILES = ("ids.npy", "logits.npy", "cls.npy")
DTYPES = {"ids": "int64", "logits": "float32", "cls": "float16"}
#: Manifest fields that identify what a cache was built from (compared by :meth:`TeacherCache.open`).
IDENTITY_FIELDS = ("teacher_fingerprint", "tokenizer_fingerprint", "max_length", "data_fingerprint", "task")
#: The split of the unlabeled rows (issue 25): their ids are their own (``0..N-1``), not train's.
UNLABELED_SPLIT = "unlabeled"


def bytes_per_row(num_labels: int, num_layers: int, hidden_size: int) -> int:
    """Disk bytes of one cached row: logits float32 (``4 C``), [CLS] per layer float16 (``2 L H``), id int64 (8)."""
    return 4 * int(num_labels) + 2 * int(num_layers) * int(hidden_size) + 8


# ---------------------------------------------------------------------------------------- helpers

#: What a teacher is, for the cache's identity: sha256 of its folder's config + weights (one home:
#: :func:`dist_peakd.integrity.model_fingerprint`).
teacher_fingerprint = model_fingerprint


def read_manifest(cache_dir: str | Path) -> dict[str, Any]:
    """The parsed manifest; ``CacheCorruptError`` naming the file when it is missing or unreadable."""
    path = Path(cache_dir) / MANIFEST
    if not path.is_file():
        raise CacheCorruptError(path, "missing (no cache here, or its build never finished)")
    try:
        manifest = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise CacheCorruptError(path, f"unreadable ({e})") from e
    if not isinstance(manifest, dict) or not isinstance(manifest.get("splits"), dict):
        raise CacheCorruptError(path, "not a teacher-cache manifest (no 'splits' mapping)")
    return manifest


#: ``expected`` keys that are not manifest fields: the run's example ids per split, and the data
#: fingerprint its (sliced) data would have unsliced (see :func:`serves_subset`).
RUN_KEYS = ("ids", "source_data_fingerprint")


def serves_subset(manifest: Mapping[str, Any], expected: Mapping[str, Any]) -> bool:
    """True when a cache built on the full splits serves this run's subset of them by example id.

    That is: the run's data differs from the cache's (``data_fingerprint``), but the cache was built
    on the unsliced data the run's rows are taken from (its ``data_fingerprint`` equals the run's
    ``source_data_fingerprint``), and the run lists its example ids (``ids``), which
    :meth:`TeacherCache.open` then checks are all in the cache. Row counts are not compared then.
    """
    source = expected.get("source_data_fingerprint")
    found = manifest.get("data_fingerprint")
    return (source is not None and "ids" in expected and found != expected.get("data_fingerprint")
            and found == source)


def manifest_differences(manifest: Mapping[str, Any], expected: Mapping[str, Any]) -> list[tuple[str, Any, Any]]:
    """``(field, found, expected)`` for each field of ``expected`` the manifest does not match.

    ``expected`` uses manifest key names (e.g. :data:`IDENTITY_FIELDS`, ``num_labels``), plus
    ``rows``: ``{split: row_count}`` compared as fields ``rows[<split>]``, and the :data:`RUN_KEYS`
    (not compared here). When the cache :func:`serves_subset` of the run, ``data_fingerprint`` and
    ``rows`` are not compared (the id check replaces them). The format version is always checked.
    """
    diffs: list[tuple[str, Any, Any]] = []
    if manifest.get("format_version") != FORMAT_VERSION:
        diffs.append(("format_version", manifest.get("format_version"), FORMAT_VERSION))
    subset = serves_subset(manifest, expected)
    for key, want in expected.items():
        if key in RUN_KEYS or (subset and key in ("data_fingerprint", "rows")):
            continue
        if key == "rows":
            for split, n in want.items():
                found = manifest["splits"].get(split, {}).get("rows")
                if found != n:
                    diffs.append((f"rows[{split}]", found, n))
        elif manifest.get(key) != want:
            diffs.append((key, manifest.get(key), want))
    return diffs


def cache_files(manifest: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """Every shard file of a cache in the one manifest shape (:mod:`dist_peakd.integrity`):
    ``{"<split>/shard-.../ids.npy": {"bytes", "sha256"}, ...}``: the manifest's ``files``; a manifest an
    older version wrote (``bytes``/``sha256`` per shard record) is read into the same shape."""
    if "files" in manifest:
        return manifest["files"]
    return {f"{rec['path']}/{name}": {"bytes": rec["bytes"][name], "sha256": rec["sha256"][name]}
            for info in manifest["splits"].values() for rec in info["shards"] for name in FILES}


def shard_files(manifest: Mapping[str, Any], rec: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """The files of one shard record (KeyError when the manifest lacks one: a malformed manifest)."""
    files = cache_files(manifest)
    return {f"{rec['path']}/{name}": files[f"{rec['path']}/{name}"] for name in FILES}


def cache_fingerprint(manifest: Mapping[str, Any]) -> str:
    """sha256 of what a cache holds: its identity fields, dimensions and every shard file's sha256
    (not its creation time), so a rebuild with the same teacher and data keeps the fingerprint."""
    content = {k: manifest.get(k) for k in (*IDENTITY_FIELDS, "format_version", "num_labels", "num_layers",
                                             "hidden_size")}
    content["shards"] = sorted((*rel.rsplit("/", 1), rec["sha256"]) for rel, rec in cache_files(manifest).items())
    return hashlib.sha256(json.dumps(content, sort_keys=True, default=str).encode()).hexdigest()


def id_differences(cache: TeacherCache, ids: Mapping[str, Any]) -> list[tuple[str, Any, Any]]:
    """``(f"ids[{split}]", what the cache lacks, expected)`` for each split whose ids are not all cached."""
    diffs: list[tuple[str, Any, Any]] = []
    for split, wanted in ids.items():
        if split not in cache.manifest["splits"]:
            diffs.append((f"ids[{split}]", "no such split", "every example id of this run's rows"))
            continue
        missing = cache.split(split).missing(np.asarray(wanted, dtype=np.int64))
        if len(missing):
            diffs.append((f"ids[{split}]", f"{len(missing)} of the run's {len(wanted)} ids missing, e.g. "
                                           f"{missing[:5].tolist()}", "every example id of this run's rows"))
    return diffs


# ---------------------------------------------------------------------------------------- reading
def _load(path: Path) -> np.ndarray:
    try:
        return np.load(path, mmap_mode="r", allow_pickle=False)
    except ValueError as e:  # e.g. a bad header
        raise CacheCorruptError(path, f"not a readable .npy file ({e})") from e


class CacheSplit:
    """One split of the cache: rows addressable by example id, memory-mapped.

    ``ids`` is every example id of the split, sorted. :meth:`lookup` gathers rows for any ids in
    the order given through a position index ``id -> (shard, row)``; only those rows are read. The
    index is a dense table when the ids are dense (GLUE ids are ``0..n-1``), else a binary search;
    a lookup is a few vectorised NumPy calls per shard, with no per-row Python.
    """

    #: a dense ``id -> position`` table is used when ``max id + 1 <= DENSE_FACTOR * rows + 1024``
    DENSE_FACTOR = 4

    def __init__(self, name: str, shards: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray]]) -> None:
        self.name = name
        self._shards = list(shards)
        all_ids = np.concatenate([s[0] for s in self._shards]) if self._shards else np.zeros(0, np.int64)
        shard_of = np.concatenate([np.full(len(s[0]), i, np.int32) for i, s in enumerate(self._shards)]) \
            if self._shards else np.zeros(0, np.int32)
        row_of = np.concatenate([np.arange(len(s[0]), dtype=np.int64) for s in self._shards]) \
            if self._shards else np.zeros(0, np.int64)
        order = np.argsort(all_ids, kind="stable")
        self.ids: np.ndarray = np.asarray(all_ids[order], dtype=np.int64)
        if len(self.ids) > 1 and (np.diff(self.ids) == 0).any():
            dup = int(self.ids[1:][np.diff(self.ids) == 0][0])
            raise ValueError(f"teacher cache split {name!r}: example id {dup} appears in two shards")
        self._shard = shard_of[order]
        self._row = row_of[order]
        self._dense: np.ndarray | None = None
        if len(self.ids) and self.ids[0] >= 0 and self.ids[-1] + 1 <= self.DENSE_FACTOR * len(self.ids) + 1024:
            self._dense = np.full(int(self.ids[-1]) + 1, -1, dtype=np.int64)
            self._dense[self.ids] = np.arange(len(self.ids), dtype=np.int64)
        first = self._shards[0] if self._shards else None
        self.num_labels = int(first[1].shape[1]) if first is not None else 0
        self.cls_shape = tuple(int(x) for x in first[2].shape[1:]) if first is not None else (0, 0)

    def __len__(self) -> int:
        return len(self.ids)

    def __contains__(self, example_id: int) -> bool:
        pos = np.searchsorted(self.ids, example_id)
        return bool(pos < len(self.ids) and self.ids[pos] == example_id)

    def _index(self, example_ids: Any) -> np.ndarray:
        """Positions in :attr:`ids` of ``example_ids`` (``-1`` where absent)."""
        q = np.asarray(example_ids.cpu() if torch.is_tensor(example_ids) else example_ids, dtype=np.int64)
        q = q.reshape(-1)
        if self._dense is not None:
            inside = (q >= 0) & (q < len(self._dense))
            return np.where(inside, self._dense[np.where(inside, q, 0)], -1)
        if not len(self.ids):
            return np.full(len(q), -1, dtype=np.int64)
        pos = np.minimum(np.searchsorted(self.ids, q), len(self.ids) - 1)
        return np.where(self.ids[pos] == q, pos, -1)

    def missing(self, example_ids: Any) -> np.ndarray:
        """The ``example_ids`` that are not in this split (in the order given)."""
        q = np.asarray(example_ids.cpu() if torch.is_tensor(example_ids) else example_ids, dtype=np.int64)
        return q.reshape(-1)[self._index(q) < 0]

    def positions(self, example_ids: Any) -> tuple[np.ndarray, np.ndarray]:
        """``(shard, row)`` arrays for ``example_ids``; ``KeyError`` naming the unknown id(s)."""
        pos = self._index(example_ids)
        if (pos < 0).any():
            q = np.asarray(example_ids.cpu() if torch.is_tensor(example_ids) else example_ids,
                           dtype=np.int64).reshape(-1)
            missing = q[pos < 0]
            raise KeyError(f"example id(s) {missing[:10].tolist()} not in teacher cache split {self.name!r} "
                           f"({len(self.ids)} rows{', ids ' + str(self.ids[0]) + '..' + str(self.ids[-1]) if len(self.ids) else ''})")
        return self._shard[pos], self._row[pos]

    def _gather(self, which: Sequence[int], shard: np.ndarray, row: np.ndarray) -> list[np.ndarray]:
        """Rows ``(shard, row)`` of the arrays ``which`` (1 logits, 2 cls), each shard read in row order."""
        outs = []
        for w in which:
            template = self._shards[0][w] if self._shards else np.zeros((0,), np.float32)
            outs.append(np.empty((len(row), *template.shape[1:]), dtype=template.dtype))
        if len(row) == 0:
            return outs
        single = len(self._shards) == 1
        for s in ([0] if single else np.unique(shard)):
            dest = np.arange(len(row)) if single else np.flatnonzero(shard == s)
            rows = row if single else row[dest]
            srt = np.argsort(rows, kind="stable")  # read each shard front to back
            for out, w in zip(outs, which, strict=True):
                out[dest[srt]] = self._shards[int(s)][w][rows[srt]]
        return outs

    def lookup(self, example_ids: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """Teacher logits ``float32 [B, C]`` and [CLS] states ``float16 [B, L, H]`` for ``example_ids``.

        Rows come back in the order of ``example_ids`` (a list, NumPy array or tensor of ints).
        """
        logits, cls = self._gather((1, 2), *self.positions(example_ids))
        return torch.from_numpy(logits), torch.from_numpy(cls)

    def logits(self) -> torch.Tensor:
        """All rows' logits ``float32 [n, C]``, sorted by example id (aligned with :attr:`ids`)."""
        return torch.from_numpy(self._gather((1,), *self.positions(self.ids))[0])


class TeacherCache:
    """A validated teacher cache; open with :meth:`open`, then :meth:`split`."""

    def __init__(self, cache_dir: str | Path, manifest: Mapping[str, Any]) -> None:
        self.cache_dir = Path(cache_dir)
        self.manifest = dict(manifest)
        self._splits: dict[str, CacheSplit] = {}
        self.subset = False  # True when opened for a run on a subset of the cached splits

    # ------------------------------------------------------------------ properties
    @property
    def splits(self) -> list[str]:
        return list(self.manifest["splits"])

    def has_split(self, name: str) -> bool:
        """Whether the cache holds split ``name`` (e.g. :data:`UNLABELED_SPLIT`)."""
        return name in self.manifest["splits"]

    @property
    def num_labels(self) -> int:
        return int(self.manifest["num_labels"])

    @property
    def num_layers(self) -> int:
        return int(self.manifest["num_layers"])

    @property
    def hidden_size(self) -> int:
        return int(self.manifest["hidden_size"])

    @property
    def teacher_dev_metrics(self) -> dict[str, float]:
        return dict(self.manifest.get("teacher_dev_metrics", {}))

    # ------------------------------------------------------------------ open / verify
    @classmethod
    def open(cls, cache_dir: str | Path, expected: Mapping[str, Any] | None = None,
             verify: str = "checksum") -> TeacherCache:
        """Read the manifest, compare it with ``expected`` and verify every shard file.

        ``expected``: manifest fields to match (usually :data:`IDENTITY_FIELDS` and ``rows``:
        ``{split: n}``); every differing field is reported in one :class:`CacheMismatchError`. With
        ``ids`` (``{split: example ids}``) every id must be in the cache; with ``ids`` and
        ``source_data_fingerprint`` a cache built on the full splits also serves a run on a subset
        of them (:func:`serves_subset`; :attr:`subset` is then True).
        ``verify``: ``"size"`` checks existence and byte size of every file (cheap), ``"checksum"``
        also re-hashes every file (reads the whole cache once). Problems with files raise
        :class:`CacheCorruptError` naming the file.
        """
        if verify not in ("size", "checksum"):
            raise ValueError(f"verify must be 'size' or 'checksum', got {verify!r}")
        cache_dir = Path(cache_dir)
        manifest = read_manifest(cache_dir)
        expected = expected or {}
        diffs = manifest_differences(manifest, expected)
        if diffs:
            raise CacheMismatchError(cache_dir, diffs)
        cache = cls(cache_dir, manifest)
        cache.subset = serves_subset(manifest, expected)
        try:
            cache.verify(checksum=verify == "checksum")
        except (KeyError, TypeError, AttributeError) as e:
            raise CacheCorruptError(cache_dir / MANIFEST, f"malformed manifest ({e!r})") from e
        if "ids" in expected:
            diffs = id_differences(cache, expected["ids"])
            if diffs:
                raise CacheMismatchError(cache_dir, diffs)
        return cache

    def verify(self, checksum: bool = True) -> None:
        """Check every shard file: exists, recorded size, sha256 (when ``checksum``), header shape/rows."""
        for split, info in self.manifest["splits"].items():
            total = 0
            for rec in info["shards"]:
                problems = manifest_problems(self.cache_dir, shard_files(self.manifest, rec), checksum=checksum,
                                             words=IN_MANIFEST, sort=False)  # ids, logits, cls
                if problems:
                    raise CacheCorruptError(*problems[0])
                self._open_shard(rec)  # .npy headers: row counts, shapes, dtypes (cheap)
                total += int(rec["rows"])
            if total != info["rows"]:
                raise CacheCorruptError(self.cache_dir / MANIFEST,
                                        f"split {split!r} lists {info['rows']} rows but its shards hold {total}")

    # ------------------------------------------------------------------ access
    def split(self, name: str) -> CacheSplit:
        """The memory-mapped split ``name`` (opened once; shapes and row counts checked)."""
        if name not in self._splits:
            if name not in self.manifest["splits"]:
                raise KeyError(f"teacher cache {self.cache_dir} has no split {name!r}; it has {self.splits}")
            self._splits[name] = CacheSplit(name, [self._open_shard(rec)
                                                   for rec in self.manifest["splits"][name]["shards"]])
        return self._splits[name]

    def _open_shard(self, rec: Mapping[str, Any]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        d = self.cache_dir / rec["path"]
        n = int(rec["rows"])
        expect = {"ids.npy": ((n,), np.int64), "logits.npy": ((n, self.num_labels), np.float32),
                  "cls.npy": ((n, self.num_layers, self.hidden_size), np.float16)}
        arrays = []
        for name in FILES:
            path = d / name
            if not path.is_file():
                raise CacheCorruptError(path, "missing")
            arr = _load(path)
            shape, dtype = expect[name]
            if arr.shape[:1] != shape[:1]:
                raise CacheCorruptError(path, f"has {arr.shape[0]} rows, manifest says {n}")
            if arr.shape != shape or arr.dtype != dtype:
                raise CacheCorruptError(path, f"has shape {arr.shape} {arr.dtype}, expected {shape} "
                                              f"{np.dtype(dtype)}")
            arrays.append(arr)
        return arrays[0], arrays[1], arrays[2]
