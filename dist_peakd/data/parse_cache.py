"""The parse cache of own files and hub datasets (HF ``datasets``' Arrow files), verified like every cache.

``datasets.load_dataset`` keeps what it parsed as ``*.arrow`` files under its ``cache_dir`` and reuses them
without any check: a flipped byte there would train on a flipped label. Every load goes through
:func:`verified_load` instead, on a folder of its own (own files: one per file content, hub data: one per
hub id and config), under a lock beside it (``.<folder>.lock``) so ranks and concurrent runs take turns:

* the folder's ``dist_peakd_files.json`` records the size and sha256 of every file the loaded splits use
  (their Arrow files and each one's ``dataset_info.json``); every later load checks all of them first,
  and a missing or changed one is refused (:class:`~dist_peakd.errors.ArtifactCorruptError`, exit 4) naming
  the file and the folder to delete (it is then parsed again);
* a folder holding parsed files but no record (an older version's, or a load killed before it wrote the
  record) cannot be verified: it is emptied and parsed again;
* files a load adds (a new revision of a hub dataset) are recorded beside the others.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from filelock import FileLock

from ..artifacts import writing
from ..errors import ArtifactCorruptError
from ..integrity import (
    EXPORT_MANIFEST,
    file_sha256,
    manifest_problems,
    raise_problems,
    read_file_manifest,
    write_manifest,
)

T = TypeVar("T")


def _parsed_files(folder: Path) -> bool:
    """True when ``folder`` holds anything but lock files (a parse was stored there)."""
    return folder.is_dir() and any(p.is_file() and not p.name.endswith(".lock") for p in folder.rglob("*"))


def _used_files(result: Any, folder: Path) -> set[str]:
    """The files under ``folder`` a loaded ``Dataset`` / ``DatasetDict`` reads (relative posix paths)."""
    parts = list(result.values()) if isinstance(result, dict) else [result]  # a DatasetDict is a dict
    out: set[str] = set()
    root = folder.resolve()
    for ds in parts:
        for entry in ds.cache_files:
            arrow = Path(entry["filename"]).resolve()
            for path in (arrow, arrow.parent / "dataset_info.json"):
                if path.is_file() and path.is_relative_to(root):
                    out.add(path.relative_to(root).as_posix())
    return out


def verified_load(folder: str | Path, what: str, load: Callable[[str], T]) -> T:
    """``load(cache_dir)`` with ``folder`` as its HF cache, every parsed file checked against the folder's record.

    ``what`` names the source in messages (the data file, or the hub dataset). See the module docstring.
    """
    folder = Path(folder)
    with writing(folder, f"parse cache of {what}"):
        folder.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(folder.parent / f".{folder.name}.lock")):
        try:
            files = read_file_manifest(folder)
        except ArtifactCorruptError as e:
            raise ArtifactCorruptError(e.path, f"{e.problem} (parse cache of {what}; delete {folder} and rerun: it "
                                       "is parsed again)") from None
        if files is None and _parsed_files(folder):
            shutil.rmtree(folder)  # parsed without a record: unverifiable, so parsed again
        if files is not None:
            raise_problems(manifest_problems(folder, files),
                           hint=f" (parse cache of {what}; delete {folder} and rerun: it is parsed again)")
        result = load(str(folder))
        files = dict(files or {})
        new = sorted(_used_files(result, folder) - set(files))
        if new:
            with writing(folder, f"parse cache of {what}"):
                for rel in new:
                    path = folder / rel
                    files[rel] = {"bytes": path.stat().st_size, "sha256": file_sha256(path)}
                write_manifest(folder, EXPORT_MANIFEST, dict(sorted(files.items())))
    return result
