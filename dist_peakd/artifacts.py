"""Writing and checking artifacts: atomic writes and folder publishing, file manifests, verification.

Every writer of something a later run reads (checkpoints, exports, the teacher cache, the
tokenization cache, summaries, config files) goes through here: build beside the target (a ``.tmp-*``
sibling), fsync, record the size and sha256 of every file, then rename into place, so a reader sees
the old artifact or the new one, never a half-written one.

Every reader verifies what it opens against that record (:func:`verify_folder`, :func:`manifest_problems`):
a file that is missing, has another size or another sha256 is refused naming it
(:class:`~dist_peakd.errors.ArtifactCorruptError`, exit 4). Hashing is done once per process and file
(:func:`verified_sha256` remembers a file's digest under its inode, size, mtime and ctime), so a
pipeline that opens the teacher cache three times reads it once. A folder dist-peakd wrote that has
lost its manifest is refused too, unless the caller trusts unverified folders (``--trust_unverified``).

A failed write (:func:`writing`, :func:`write_error`) becomes an
:class:`~dist_peakd.errors.ArtifactWriteError` (exit 6) naming the path, and says "no space left on
device" when that is the cause (also when a serializer hid the ``ENOSPC`` behind its own error).
A leaf module: it imports nothing from the package but the errors.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import hashlib
import json
import os
import shutil
import stat
import sys
import threading
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from .errors import ArtifactCorruptError, ArtifactWriteError
from .layout import EXPORT_RECORD, FILE_MANIFEST

#: sha256 + size of every file of an export folder (written last, before the folder is published).
EXPORT_MANIFEST = FILE_MANIFEST
#: What every export of a stage carries besides its manifest: a folder with it was written by dist-peakd.
EXPORT_MARKER = EXPORT_RECORD
_CHUNK = 1 << 22
#: errno values that mean the file system is full (quota included).
DISK_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)


# ------------------------------------------------------------------------------------ files
def umask_file_mode() -> int:
    """The mode ``open(path, "w")`` gives a new file: ``0o666`` less the process umask (read from
    ``/proc/self/status`` where the kernel has it, else set and restored)."""
    try:
        line = next(x for x in Path("/proc/self/status").read_text().splitlines() if x.startswith("Umask:"))
        mask = int(line.split()[1], 8)
    except (OSError, ValueError, IndexError, StopIteration):
        mask = os.umask(0o022)
        os.umask(mask)
    return 0o666 & ~mask


def apply_umask(folder: str | Path) -> None:
    """Give every regular file under ``folder`` the umask's mode: some serializers (safetensors,
    ``tempfile.mkstemp``) create 0600 files, and what a user ships follows the umask like the rest."""
    mode = umask_file_mode()
    for path in Path(folder).rglob("*"):
        if path.is_file() and not path.is_symlink() and stat.S_IMODE(path.stat().st_mode) != mode:
            os.chmod(path, mode)


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

    On failure (e.g. ENOSPC) the temporary file is removed and the old ``path`` is untouched; an
    OSError becomes :class:`ArtifactWriteError` naming ``path`` (:func:`write_error`).
    ``fsync_dir`` also fsyncs the parent folder, making the rename itself durable.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}-{threading.get_ident()}")
    try:
        with open(tmp, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise write_error(e, path, "file", f"the previous {path.name} (if any) is untouched") from e
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
        elif verified_sha256(path) != rec["sha256"]:
            problems.append((path, "sha256 differs from the recorded one (corrupted bytes)"))
    return problems


def raise_problems(problems: list[tuple[Path, str]], error: type[ArtifactCorruptError] = ArtifactCorruptError,
                   hint: str = "") -> None:
    """Raise ``error`` naming the first problem's file (and counting the others); nothing when empty."""
    if not problems:
        return
    path, problem = problems[0]
    more = f" (and {len(problems) - 1} more: {[str(p) for p, _ in problems[1:]]})" if len(problems) > 1 else ""
    raise error(path, problem + more + hint)


def write_export_manifest(folder: str | Path) -> None:
    """Record every file of an export folder in its ``dist_peakd_files.json`` (call last)."""
    files = file_manifest(folder, exclude=[EXPORT_MANIFEST])
    atomic_write_text(Path(folder) / EXPORT_MANIFEST, json.dumps({"files": files}, indent=1))


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


# ------------------------------------------------------------------------------------ write failures
def _chain(exc: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield exc
        exc = exc.__cause__ or exc.__context__  # type: ignore[assignment]


def _existing(path: Path) -> Path | None:
    for p in (path, *path.parents):
        if p.exists():
            return p
    return None


def is_disk_full(exc: BaseException, path: str | Path | None = None) -> bool:
    """True when ``exc`` (or an error it was raised from) is ENOSPC/EDQUOT, or when a write error
    without an errno (torch's zip writer: ``file write failed``) happened on a file system with
    (almost) no space left."""
    for e in _chain(exc):
        if isinstance(e, OSError) and e.errno in DISK_FULL_ERRNOS:
            return True
        if "No space left on device" in str(e) or "[Errno 28]" in str(e):
            return True
        if isinstance(e, OSError) and e.errno:
            return False  # another, named cause
    where = _existing(Path(path)) if path is not None else None
    if where is None:
        return False
    try:
        st = os.statvfs(where)
    except OSError:
        return False
    return st.f_bavail * st.f_frsize < (1 << 20)


def write_error(exc: BaseException, path: str | Path, what: str, consequence: str = "") -> ArtifactWriteError:
    """The :class:`ArtifactWriteError` for a failed write of ``what`` at ``path`` (an already classified
    ArtifactWriteError is returned as it is). ``consequence``: what is still intact (said at the end)."""
    if isinstance(exc, ArtifactWriteError):
        return exc
    tail = f"; {consequence}" if consequence else ""
    if is_disk_full(exc, path):
        return ArtifactWriteError(errno.ENOSPC, f"writing {what} {path} failed: no space left on device "
                                                f"(ENOSPC){tail}; free some space and rerun the same command",
                                  str(path))
    code = next((e.errno for e in _chain(exc) if isinstance(e, OSError) and e.errno), None) or errno.EIO
    first = (str(exc).strip().splitlines() or [""])[0]
    return ArtifactWriteError(code, f"writing {what} {path} failed ({type(exc).__name__}: {first}){tail}", str(path))


@contextlib.contextmanager
def writing(path: str | Path, what: str, consequence: str = "", cleanup: Iterable[str | Path] = ()) -> Iterator[None]:
    """Turn an OSError (or a serializer's error caused by one) inside into :func:`write_error` naming
    ``path``; the ``cleanup`` paths (temporary files or folders) are removed first."""
    try:
        yield
    except (OSError, RuntimeError) as e:
        error = write_error(e, path, what, consequence)
        for p in cleanup:
            p = Path(p)
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p, ignore_errors=True)
            else:
                p.unlink(missing_ok=True)
        raise error from e


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
