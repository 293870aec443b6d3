"""Writing artifacts: atomic writes and folder publishing, write errors.

Every writer of something a later run reads (checkpoints, exports, the teacher cache, the
tokenization cache, summaries, stage options) goes through here: build beside the target (a ``.tmp-*``
sibling), fsync, record the size and sha256 of every file (:mod:`dist_peakd.integrity`), then rename
into place, so a reader sees the old artifact or the new one, never a half-written one.

A failed write (:func:`writing`, :func:`write_error`) becomes an
:class:`~dist_peakd.errors.ArtifactWriteError` (exit 6) naming the path, and says "no space left on
device" when that is the cause (also when a serializer hid the ``ENOSPC`` behind its own error).
A leaf module: it imports nothing from the package but the errors.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import json
import os
import shutil
import stat
import sys
import threading
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from .errors import ArtifactWriteError

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
