"""One job per stage folder: an exclusive lock file beside it, safe on NFS, with a stale-lock rule.

The lock of ``<parent>/<name>`` is ``<parent>/.<name>.lock``, a small JSON record of its holder (host,
pid, process start time, boot and pid-namespace ids, when it was taken, the command line). It lives
beside the folder, not in it, so the folder can be replaced, cleared or pruned while it is held.

Taking it is atomic on every file system, NFS included: the record is written to a unique temporary
file, then hard-linked to the lock name (``link`` fails when the name exists; the link count of the
temporary file tells the truth even when an NFS reply is lost). The holder refreshes the file's mtime
every :data:`HEARTBEAT_S` seconds from a daemon thread and removes it when its stage ends (or the
process exits).

A lock is stale, and taken over with a message, when
* its holder ran on this machine (same host, boot and pid namespace) and that process is gone
  (a crash, SIGKILL: the rerun can start at once); or
* its holder ran elsewhere and it was not refreshed for ``DIST_PEAKD_LOCK_STALE_S`` seconds (default
  300), measured against the file server's clock (the mtime of a probe file written beside it), so
  clock skew between hosts does not matter.
Breaking a stale lock happens under a second lock (``.<name>.lock.break``), so two jobs that both find
it stale cannot both take it. Anything else refuses the job with
:class:`~dist_peakd.errors.StageLockedError` (exit 2) naming the holder.
"""

from __future__ import annotations

import atexit
import datetime
import json
import os
import secrets
import socket
import sys
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from .env import env_number
from .errors import StageLockedError

STALE_ENV = "DIST_PEAKD_LOCK_STALE_S"
DEFAULT_STALE_S = 300.0
HEARTBEAT_S = 15.0
BREAK_LOCK_STALE_S = 60.0


@dataclass(frozen=True)
class Holder:
    """Who holds a lock (the lock file's contents)."""

    host: str
    pid: int
    started: float       # the process's start time (seconds since the epoch)
    boot_id: str
    pid_namespace: str
    acquired: str        # ISO time the lock was taken
    command: str
    token: str

    def describe(self) -> str:
        return f"host {self.host}, pid {self.pid}, since {self.acquired} ({self.command[:120]})"

    def same_machine(self) -> bool:
        me = _me("")
        return (self.host, self.boot_id, self.pid_namespace) == (me.host, me.boot_id, me.pid_namespace)


def _read_first_line(path: str) -> str:
    try:
        with open(path) as f:
            return f.readline().strip()
    except OSError:
        return ""


def _process_start(pid: int) -> float:
    try:
        import psutil

        return float(psutil.Process(pid).create_time())
    except Exception:
        return 0.0


def _me(token: str) -> Holder:
    try:
        pidns = os.readlink("/proc/self/ns/pid")
    except OSError:
        pidns = ""
    now = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    return Holder(socket.gethostname(), os.getpid(), _process_start(os.getpid()),
                  _read_first_line("/proc/sys/kernel/random/boot_id"), pidns, now, " ".join(sys.argv), token)


def lock_path(folder: str | Path) -> Path:
    folder = Path(folder)
    return folder.parent / f".{folder.name}.lock"


def _read_holder(path: Path) -> Holder | None:
    try:
        return Holder(**json.loads(path.read_text()))
    except FileNotFoundError:
        return None
    except (OSError, ValueError, TypeError):  # a torn or foreign file: judged by its age only
        return Holder("?", 0, 0.0, "", "", "?", "(unreadable lock file)", "")


def _link_exclusive(record: dict[str, Any], target: Path) -> bool:
    """Create ``target`` holding ``record`` atomically (False when it exists)."""
    tmp = target.with_name(f"{target.name}.{socket.gethostname()}.{os.getpid()}.{secrets.token_hex(4)}")
    with open(tmp, "w") as f:
        json.dump(record, f)
        f.flush()
        os.fsync(f.fileno())
    try:
        try:
            os.link(tmp, target)
        except FileExistsError:
            return False
        except OSError:
            if tmp.stat().st_nlink != 2:  # NFS: the link may have been made although the call failed
                raise
        return True
    finally:
        tmp.unlink(missing_ok=True)


def _age_s(path: Path) -> float:
    """Seconds since ``path`` was last refreshed, by the file server's clock (a probe file beside it)."""
    probe = path.with_name(f"{path.name}.probe-{os.getpid()}-{secrets.token_hex(4)}")
    try:
        probe.write_text("")
        now = probe.stat().st_mtime
    except OSError:
        now = time.time()
    finally:
        probe.unlink(missing_ok=True)
    try:
        return now - path.stat().st_mtime
    except FileNotFoundError:
        return 0.0


def _alive(holder: Holder) -> bool:
    try:
        os.kill(holder.pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    started = _process_start(holder.pid)
    return not (holder.started and started and abs(started - holder.started) > 1.0)


def stale_reason(holder: Holder, path: Path, stale_s: float) -> str | None:
    """Why the lock at ``path`` held by ``holder`` is stale, or None when it is not."""
    if holder.host != "?" and holder.same_machine():
        return None if _alive(holder) else f"its process (pid {holder.pid}) on this machine is gone"
    age = _age_s(path)
    return f"it was not refreshed for {age:.0f} s (> {STALE_ENV}={stale_s:g})" if age > stale_s else None


def _break_stale(path: Path, judged: Holder, reason: str) -> None:
    """Remove the stale lock ``path`` (still held by ``judged``) under the break lock."""
    breaker = path.with_name(path.name + ".break")
    if breaker.exists() and _age_s(breaker) > BREAK_LOCK_STALE_S:
        breaker.unlink(missing_ok=True)  # a breaker that died half-way
    if not _link_exclusive(asdict(_me(secrets.token_hex(8))), breaker):
        return  # another job is breaking it: retry the normal way
    try:
        current = _read_holder(path)
        if current is not None and current.token == judged.token:
            path.unlink(missing_ok=True)
            print(f"[dist-peakd] warning: took over the lock {path} of {judged.describe()}: {reason}",
                  file=sys.stderr, flush=True)
    finally:
        breaker.unlink(missing_ok=True)


class FolderLock:
    """The exclusive lock of one folder, held by this process (see the module docstring)."""

    def __init__(self, folder: str | Path, what: str = "stage folder") -> None:
        self.folder, self.what = Path(folder), what
        self.path = lock_path(self.folder)
        self.holder = _me(secrets.token_hex(16))

    def acquire(self) -> None:
        """Take the lock, or raise :class:`StageLockedError` naming the job that holds it."""
        stale_s = env_number(STALE_ENV, DEFAULT_STALE_S, minimum=1)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(5):
            if _link_exclusive(asdict(self.holder), self.path):
                return
            other = _read_holder(self.path)
            if other is None:
                continue  # released meanwhile
            reason = stale_reason(other, self.path, stale_s)
            if reason is None:
                raise StageLockedError(
                    f"{self.what} {self.folder} is in use by another job ({other.describe()}; lock file "
                    f"{self.path}); wait for it to end, or if that job is gone delete {self.path}")
            _break_stale(self.path, other, reason)
        raise StageLockedError(f"could not take the lock {self.path} of {self.what} {self.folder} "
                               "(other jobs keep taking it); retry")

    def refresh(self) -> None:
        try:
            os.utime(self.path)
        except OSError:
            pass

    def release(self) -> None:
        current = _read_holder(self.path)
        if current is not None and current.token == self.holder.token:
            self.path.unlink(missing_ok=True)


# ------------------------------------------------------------------------------------ this process's locks
_HELD: dict[Path, FolderLock] = {}
_HELD_LOCK = threading.Lock()
_HEARTBEAT: threading.Thread | None = None


def _heartbeat() -> None:
    while True:
        time.sleep(HEARTBEAT_S)
        with _HELD_LOCK:
            held = list(_HELD.values())
        for lock in held:
            lock.refresh()


def lock_folder(folder: str | Path, what: str = "stage folder") -> FolderLock:
    """Hold the lock of ``folder`` in this process (taking it again is a no-op) until :func:`release`."""
    global _HEARTBEAT
    key = Path(folder).resolve()
    with _HELD_LOCK:
        if key in _HELD:
            return _HELD[key]
    lock = FolderLock(folder, what)
    lock.acquire()
    with _HELD_LOCK:
        _HELD[key] = lock
        if _HEARTBEAT is None or not _HEARTBEAT.is_alive():
            _HEARTBEAT = threading.Thread(target=_heartbeat, name="dist-peakd-locks", daemon=True)
            _HEARTBEAT.start()
    return lock


def held_locks() -> list[Path]:
    with _HELD_LOCK:
        return list(_HELD)


def release(folders: list[Path] | None = None) -> None:
    """Release the given held locks (every lock of this process when None)."""
    with _HELD_LOCK:
        keys = list(_HELD) if folders is None else [k for k in folders if k in _HELD]
        locks = [_HELD.pop(k) for k in keys]
    for lock in locks:
        lock.release()


atexit.register(release)
