"""Writing and checking artifacts: atomic writes and folder publishing, file manifests, verification.

Every writer of something a later run reads (checkpoints, exports, the teacher cache, summaries,
config files) goes through here: build beside the target (a ``.tmp-*`` sibling), fsync, record the
size and sha256 of every file, then rename into place, so a reader sees the old artifact or the new
one, never a half-written one. A leaf module: it imports nothing from the package but the errors.
"""

from __future__ import annotations

import ctypes
import hashlib
import json
import os
import shutil
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from .errors import ArtifactCorruptError

#: sha256 + size of every file of an export folder (written last, before the folder is published).
EXPORT_MANIFEST = "dist_peakd_files.json"
_CHUNK = 1 << 22


# ------------------------------------------------------------------------------------ files
def file_sha256(path: str | Path) -> str:
    """sha256 hex digest of a file's bytes, read in 4 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def fsync_path(path: str | Path) -> None:
    """fsync a file or directory (best effort: filesystems that refuse it are ignored)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write_text(path: str | Path, text: str, fsync_dir: bool = False) -> None:
    """Write a small text file via a temporary sibling, fsync and ``os.replace``.

    On failure (e.g. ENOSPC) the temporary file is removed and the old ``path`` is untouched.
    ``fsync_dir`` also fsyncs the parent folder, making the rename itself durable.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    if fsync_dir:
        fsync_path(path.parent)


def atomic_write_json(path: str | Path, data: Any, indent: int | None = 2, fsync_dir: bool = False) -> None:
    """:func:`atomic_write_text` of ``json.dumps(data, indent=indent, default=str)``."""
    atomic_write_text(path, json.dumps(data, indent=indent, default=str), fsync_dir=fsync_dir)


# ------------------------------------------------------------------------------------ folders
def _rename_exchange(a: Path, b: Path) -> bool:
    """Atomically swap two existing paths (Linux renameat2 RENAME_EXCHANGE); False when unsupported."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    return renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0


def publish_dir(tmp: str | Path, final: str | Path) -> None:
    """Move the finished folder ``tmp`` to ``final``, replacing an existing ``final`` without a gap.

    With RENAME_EXCHANGE the swap is atomic; otherwise the old folder is first renamed aside
    (``.old-<name>``) and removed only after the new one is in place.
    """
    tmp, final = Path(tmp), Path(final)
    if final.exists():
        old = final.with_name(f".old-{final.name}")
        if _rename_exchange(tmp, final):
            shutil.rmtree(tmp, ignore_errors=True)  # tmp now holds the old contents
        else:
            shutil.rmtree(old, ignore_errors=True)
            os.replace(final, old)
            os.replace(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, final)
    fsync_path(final.parent)


# ------------------------------------------------------------------------------------ manifests
def file_manifest(folder: str | Path, exclude: Iterable[str] = ()) -> dict[str, dict[str, Any]]:
    """``{relative path: {"bytes", "sha256"}}`` of every file under ``folder`` (each fsynced first)."""
    folder = Path(folder)
    skip = set(exclude)
    out: dict[str, dict[str, Any]] = {}
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        rel = path.relative_to(folder).as_posix()
        if rel in skip:
            continue
        fsync_path(path)
        out[rel] = {"bytes": path.stat().st_size, "sha256": file_sha256(path)}
    return out


def manifest_problems(folder: str | Path, files: dict[str, dict[str, Any]]) -> list[tuple[Path, str]]:
    """``(file, problem)`` for every listed file that is missing, has another size or another sha256."""
    folder = Path(folder)
    problems: list[tuple[Path, str]] = []
    for rel, rec in sorted(files.items()):
        path = folder / rel
        if not path.is_file():
            problems.append((path, "missing"))
            continue
        size = path.stat().st_size
        if size != rec["bytes"]:
            problems.append((path, f"has {size} bytes, expected {rec['bytes']} (truncated or rewritten)"))
        elif file_sha256(path) != rec["sha256"]:
            problems.append((path, "sha256 differs from the recorded one (corrupted bytes)"))
    return problems


def write_export_manifest(folder: str | Path) -> None:
    """Record every file of an export folder in its ``dist_peakd_files.json`` (call last)."""
    files = file_manifest(folder, exclude=[EXPORT_MANIFEST])
    atomic_write_text(Path(folder) / EXPORT_MANIFEST, json.dumps({"files": files}, indent=1))


def verify_export(folder: str | Path) -> None:
    """Check an export folder against its ``dist_peakd_files.json``; ArtifactCorruptError names the file.

    Folders without the manifest (a hub backbone, an export from an older version) pass unchecked.
    """
    folder = Path(folder)
    manifest = folder / EXPORT_MANIFEST
    if not manifest.is_file():
        return
    try:
        files = json.loads(manifest.read_text())["files"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ArtifactCorruptError(manifest, f"unreadable file manifest ({e})") from e
    problems = manifest_problems(folder, files)
    if problems:
        path, problem = problems[0]
        more = f" (and {len(problems) - 1} more: {[str(p) for p, _ in problems[1:]]})" if len(problems) > 1 else ""
        raise ArtifactCorruptError(path, problem + more)


def link_identical_files(folder: str | Path, reference: str | Path) -> int:
    """Replace each file of export ``folder`` that is byte-identical to the same file of export
    ``reference`` (same size and sha256 in both ``dist_peakd_files.json``) by a hard link to it.

    E.g. ``final/`` of a run whose last evaluation was its best: the weights are stored once and
    both folders stay complete. Each replacement is atomic (link beside, rename over); a file system
    without hard links leaves the copies. Returns the bytes saved.
    """
    folder, reference = Path(folder), Path(reference)
    try:
        mine = json.loads((folder / EXPORT_MANIFEST).read_text())["files"]
        theirs = json.loads((reference / EXPORT_MANIFEST).read_text())["files"]
    except (OSError, ValueError, KeyError, TypeError):
        return 0
    saved = 0
    for rel, rec in mine.items():
        src, dst = reference / rel, folder / rel
        if theirs.get(rel) != rec or not src.is_file() or not dst.is_file() or os.path.samefile(src, dst):
            continue
        tmp = dst.with_name(f".link-{dst.name}")
        try:
            tmp.unlink(missing_ok=True)
            os.link(src, tmp)
            os.replace(tmp, dst)
        except OSError:
            tmp.unlink(missing_ok=True)
            continue
        saved += int(rec["bytes"])
    return saved
