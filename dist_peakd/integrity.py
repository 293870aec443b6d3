"""Integrity: what a file or folder is (fingerprints) and whether it is still what was written (manifests).

One manifest shape, ``{relative path: {"bytes": size, "sha256": hex}}``, written by :func:`write_manifest`
(an export's and the own-data parse cache's ``dist_peakd_files.json`` as ``{"files": ...}``, a checkpoint's
``COMPLETE`` as ``{"global_step", "tag", "files"}``) and checked by one loop, :func:`manifest_problems`
(:func:`verify_folder` for a folder with its manifest, the checkpoints' and the teacher cache's readers;
the cache's shard records are read into the same shape by :func:`dist_peakd.cache.store.shard_files`).
A file that is missing, has another size or another sha256 is refused naming it
(:class:`~dist_peakd.errors.ArtifactCorruptError`, exit 4, or the caller's error type). Hashing is done
once per process and file (:func:`verified_sha256` remembers a file's digest under its inode, size,
mtime and ctime), so a pipeline that opens the teacher cache three times reads it once. A folder
dist-peakd wrote that has lost its manifest is refused too, unless the caller trusts unverified folders
(``--trust_unverified``).

Fingerprints are pure functions of the files under a resolved path: :func:`model_fingerprint` (a model
folder's config + weights: the teacher cache's key), :func:`export_fingerprint` (an export's manifest
digests, verified first), :func:`manifest_fingerprint`.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from .artifacts import atomic_write_text, fsync_path
from .errors import ArtifactCorruptError
from .layout import EXPORT_RECORD, FILE_MANIFEST, MODEL_CONFIG

#: sha256 + size of every file of an export folder (written last, before the folder is published).
EXPORT_MANIFEST = FILE_MANIFEST
#: What every export of a stage carries besides its manifest: a folder with it was written by dist-peakd.
EXPORT_MARKER = EXPORT_RECORD
#: Files whose bytes define a model (weights in any HF layout; with ``config.json``).
WEIGHT_PATTERNS = ("model.safetensors", "model-*.safetensors", "model.safetensors.index.json",
                   "pytorch_model.bin", "pytorch_model-*.bin", "pytorch_model.bin.index.json")
_CHUNK = 1 << 22


# ------------------------------------------------------------------------------------ hashing
def file_sha256(path: str | Path) -> str:
    """sha256 hex digest of a file's bytes, read in 4 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


_DIGESTS: dict[tuple[Any, ...], str] = {}
_DIGESTS_LOCK = threading.Lock()


def _identity(path: Path) -> tuple[Any, ...]:
    st = path.stat()
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def verified_sha256(path: str | Path) -> str:
    """:func:`file_sha256`, computed once per process for a file that has not changed since.

    The digest is remembered under the file's device, inode, size, mtime and ctime: any write to the
    file changes its ctime and a replacement is another inode, so either is hashed again (renaming the
    folder it is in is neither: a cache verified before it was published is not hashed again).
    """
    path = Path(path)
    key = _identity(path)
    with _DIGESTS_LOCK:
        known = _DIGESTS.get(key)
    if known is not None:
        return known
    digest = file_sha256(path)
    with _DIGESTS_LOCK:
        _DIGESTS[key] = digest
    return digest


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


#: How a problem names the record it was checked against: ``(size word, sha256 word)``.
RECORDED = ("expected", "the recorded one")
#: ... in the teacher cache's messages.
IN_MANIFEST = ("manifest says", "the manifest")


def manifest_problems(folder: str | Path, files: dict[str, dict[str, Any]], *, checksum: bool = True,
                      words: tuple[str, str] = RECORDED, sort: bool = True) -> list[tuple[Path, str]]:
    """The one verify loop: ``(file, problem)`` for every listed file that is missing, has another size or
    (``checksum``) another sha256, in the order of ``files``' sorted paths (``sort=False``: as listed)."""
    folder = Path(folder)
    problems: list[tuple[Path, str]] = []
    for rel, rec in (sorted(files.items()) if sort else files.items()):
        path = folder / rel
        if not path.is_file():
            problems.append((path, "missing"))
            continue
        size = path.stat().st_size
        if size != rec["bytes"]:
            problems.append((path, f"has {size} bytes, {words[0]} {rec['bytes']} (truncated or rewritten)"))
        elif checksum and verified_sha256(path) != rec["sha256"]:
            problems.append((path, f"sha256 differs from {words[1]} (corrupted bytes)"))
    return problems


def raise_problems(problems: list[tuple[Path, str]], error: type[ArtifactCorruptError] = ArtifactCorruptError,
                   hint: str = "") -> None:
    """Raise ``error`` naming the first problem's file (and counting the others); nothing when empty."""
    if not problems:
        return
    path, problem = problems[0]
    more = f" (and {len(problems) - 1} more: {[str(p) for p, _ in problems[1:]]})" if len(problems) > 1 else ""
    raise error(path, problem + more + hint)


def write_manifest(folder: str | Path, name: str = EXPORT_MANIFEST, files: dict[str, dict[str, Any]] | None = None,
                   *, fsync_dir: bool = False, **record: Any) -> dict[str, dict[str, Any]]:
    """The one manifest writer: ``folder/name`` = ``{**record, "files": files}`` (temp file + rename;
    ``fsync_dir``: the folder's entry too); ``files`` defaults to every file under ``folder`` but the
    manifest itself (call last). Returns ``files``."""
    if files is None:
        files = file_manifest(folder, exclude=[name])
    atomic_write_text(Path(folder) / name, json.dumps({**record, "files": files}, indent=1, default=str),
                      fsync_dir=fsync_dir)
    return files


def write_export_manifest(folder: str | Path) -> None:
    """Record every file of an export folder in its ``dist_peakd_files.json`` (call last)."""
    write_manifest(folder)


def read_file_manifest(folder: str | Path, name: str = EXPORT_MANIFEST) -> dict[str, dict[str, Any]] | None:
    """The ``files`` record of ``folder/name`` (None when there is no such file); a manifest that cannot
    be read is :class:`ArtifactCorruptError` naming it."""
    manifest = Path(folder) / name
    if not manifest.is_file():
        return None
    try:
        files = json.loads(manifest.read_text())["files"]
        if not isinstance(files, dict) or not all(isinstance(r, dict) and {"bytes", "sha256"} <= set(r)
                                                  for r in files.values()):
            raise TypeError("not a mapping of file -> {bytes, sha256}")
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ArtifactCorruptError(manifest, f"unreadable file manifest ({e})") from e
    return files


def verify_folder(folder: str | Path, name: str = EXPORT_MANIFEST, *, required: bool = True,
                  trust_unverified: bool = False, what: str = "folder") -> bool:
    """Check every file of ``folder`` against its manifest ``name``; True when it was verified.

    A listed file that is missing, has another size or another sha256 raises
    :class:`ArtifactCorruptError` naming it, whatever ``trust_unverified`` says. A folder without the
    manifest raises it too when ``required``, unless ``trust_unverified`` (then False is returned).
    """
    folder = Path(folder)
    files = read_file_manifest(folder, name)
    if files is None:
        if required and not trust_unverified:
            raise ArtifactCorruptError(folder / name, f"missing: this {what} cannot be verified (it was written "
                                       "without a file manifest, or the manifest was removed); rebuild it, "
                                       "or pass --trust_unverified to use it as it is")
        return False
    raise_problems(manifest_problems(folder, files))
    return True


def is_dist_peakd_export(folder: str | Path) -> bool:
    """True when ``folder`` was written by a dist-peakd stage (it holds :data:`EXPORT_MARKER` or a manifest)."""
    folder = Path(folder)
    return (folder / EXPORT_MARKER).is_file() or (folder / EXPORT_MANIFEST).is_file()


def verify_export(folder: str | Path, required: bool | None = None, trust_unverified: bool = False) -> bool:
    """Check an export folder against its ``dist_peakd_files.json``; ArtifactCorruptError names the file.

    ``required=None`` (the default) requires the manifest of a folder dist-peakd wrote (it holds
    :data:`EXPORT_MARKER`); a foreign Hugging Face folder (a backbone, a teacher fine-tuned elsewhere)
    has neither and passes unverified. ``trust_unverified`` accepts a missing manifest (never a wrong file).
    """
    folder = Path(folder)
    need = is_dist_peakd_export(folder) if required is None else required
    return verify_folder(folder, EXPORT_MANIFEST, required=need, trust_unverified=trust_unverified,
                         what="export")


def manifest_fingerprint(files: dict[str, dict[str, Any]], exclude: Iterable[str] = ()) -> str:
    """sha256 over a manifest's ``(file, sha256)`` pairs: the identity of a folder's contents."""
    skip = set(exclude)
    h = hashlib.sha256()
    for rel, rec in sorted(files.items()):
        if rel not in skip:
            h.update(f"{rel}\0{rec['sha256']}\0".encode())
    return h.hexdigest()


# ------------------------------------------------------------------------------------ fingerprints
def model_fingerprint(folder: str | Path) -> str:
    """sha256 over a model folder's weight file(s) and ``config.json`` (file names + bytes).

    Reads files only, never instantiates the model. Raises ``FileNotFoundError`` naming the folder
    when it has no ``config.json`` or no weight file.
    """
    folder = Path(folder)
    config = folder / MODEL_CONFIG
    weights = sorted({p for pattern in WEIGHT_PATTERNS for p in folder.glob(pattern) if p.is_file()})
    if not config.is_file() or not weights:
        raise FileNotFoundError(
            f"teacher folder {folder} needs config.json and weights (model.safetensors or "
            f"pytorch_model.bin); found {sorted(p.name for p in folder.iterdir()) if folder.is_dir() else 'nothing'}")
    h = hashlib.sha256()
    for path in [config, *weights]:
        h.update(f"{path.name}\0{verified_sha256(path)}\0".encode())
    return h.hexdigest()


def export_fingerprint(folder: str | Path, trust_unverified: bool = False) -> str:
    """The identity of an export a stage consumes (its manifest's file digests), verified first; an
    unverified folder (``trust_unverified``, no manifest): ``unverified:`` + :func:`model_fingerprint`."""
    if not verify_export(folder, required=True, trust_unverified=trust_unverified):
        return f"unverified:{model_fingerprint(folder)}"
    return manifest_fingerprint(read_file_manifest(folder) or {}, exclude=[EXPORT_MANIFEST])


# ------------------------------------------------------------------------------------ publishing
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
