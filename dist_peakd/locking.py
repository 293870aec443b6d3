"""One job per stage folder: an exclusive lock beside it, taken with ``flufl.lock`` (NFS-safe), plus our
stale-lock rule.

The lock of ``<parent>/<name>`` is ``<parent>/.<name>.lock``. It lives beside the folder, not in it, so the
folder can be replaced, cleared or pruned while it is held.

* **Taking it** is ``flufl.lock``'s link-count algorithm: a unique claim file is hard-linked to the lock
  name, and a link count of 2 proves ownership even when an NFS reply is lost. We call it without waiting
  (``timeout=0``), so the library never breaks a lock on its own; the decision below is ours.
* **Who holds it**: the holder writes ``.<name>.lock.holder`` (host, pid, process start time, boot and
  pid-namespace ids, when, the command line, and the claim it belongs to), named in every refusal.
* **Alive**: the holder refreshes the lock every :data:`HEARTBEAT_S` seconds from a daemon thread
  (``Lock.refresh``: the lock file's mtime is set to now + the lifetime), and unlocks when its stage ends
  or the process exits. "Now" is the file server's clock (the mtime of a probe file beside the lock), so
  clock skew between hosts does not matter.

A lock is stale, and taken over with a warning, when
* its holder ran on this machine (same host, boot and pid namespace) and that process is gone (a crash,
  SIGKILL: the rerun can start at once) — the same-host liveness check ``flufl.lock`` does not make; or
* it expired: not refreshed for ``DIST_PEAKD_LOCK_STALE_S`` seconds (default 300; the lock's lifetime).
Breaking happens under a second lock (``.<name>.lock.break``) and only if the lock still carries the claim
that was judged stale, so of two jobs that both judged it stale, the second cannot remove the lock the
first has since taken. Anything else refuses the job with :class:`~dist_peakd.errors.StageLockedError`
(exit 2) naming the holder.
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

from flufl.lock import AlreadyLockedError, Lock, NotLockedError, TimeOutError

from . import console
from .env import env_number
from .errors import StageLockedError

STALE_ENV = "DIST_PEAKD_LOCK_STALE_S"
DEFAULT_STALE_S = 300.0
HEARTBEAT_S = 15.0
BREAK_LOCK_LIFETIME_S = 60.0
_NO_WAIT = datetime.timedelta(0)


@dataclass(frozen=True)
class Holder:
    """Who holds a lock (its ``.holder`` record; the lock's own claim when the record is missing)."""

    host: str
    pid: int
    started: float       # the process's start time (seconds since the epoch)
    boot_id: str
    pid_namespace: str
    acquired: str        # ISO time the lock was taken
    command: str
    claim: str           # the claim file the lock is a link of (what identifies one holding)

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


def _me(claim: str) -> Holder:
    try:
        pidns = os.readlink("/proc/self/ns/pid")
    except OSError:
        pidns = ""
    now = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    return Holder(socket.getfqdn(), os.getpid(), _process_start(os.getpid()),
                  _read_first_line("/proc/sys/kernel/random/boot_id"), pidns, now, " ".join(sys.argv), claim)


def lock_path(folder: str | Path) -> Path:
    folder = Path(folder)
    return folder.parent / f".{folder.name}.lock"


def holder_path(lock: Path) -> Path:
    return lock.with_name(lock.name + ".holder")


def server_now(beside: Path) -> datetime.datetime:
    """The file server's clock: the mtime of a probe file written beside ``beside`` (local clock if not writable)."""
    probe = beside.with_name(f"{beside.name}.probe-{os.getpid()}-{secrets.token_hex(4)}")
    try:
        probe.write_text("")
        return datetime.datetime.fromtimestamp(probe.stat().st_mtime)
    except OSError:
        return datetime.datetime.now()
    finally:
        probe.unlink(missing_ok=True)


class ServerClockLock(Lock):
    """``flufl.lock.Lock`` measuring time by the file server's clock (the library's documented ``_now`` hook)."""

    def _now(self) -> datetime.datetime:
        return server_now(Path(self.lockfile))


def current_claim(lock: Path) -> str | None:
    """The claim file name the lock at ``lock`` is a link of (None when nobody holds it)."""
    try:
        return lock.read_text().strip() or None
    except FileNotFoundError:
        return None
    except OSError:
        return None


def read_holder(lock: Path) -> Holder | None:
    """Who holds ``lock``: its ``.holder`` record when it belongs to the current claim, else what the claim's
    name says (host, pid); None when the lock is free."""
    claim = current_claim(lock)
    if claim is None:
        return None
    try:
        record = Holder(**json.loads(holder_path(lock).read_text()))
        if record.claim == claim:
            return record
    except (OSError, ValueError, TypeError):
        pass
    parts = claim.rsplit("|", 3)  # flufl.lock's claim: <lockfile>|<host>|<pid>|<random>
    host, pid = (parts[1], int(parts[2])) if len(parts) == 4 and parts[2].isdigit() else ("?", 0)
    return Holder(host, pid, 0.0, "", "", "?", "(no holder record)", claim)


def _alive(holder: Holder) -> bool:
    try:
        os.kill(holder.pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    started = _process_start(holder.pid)
    return not (holder.started and started and abs(started - holder.started) > 1.0)


def stale_reason(holder: Holder, lock: Path, stale_s: float) -> str | None:
    """Why the lock at ``lock`` held by ``holder`` is stale, or None when it is not."""
    if holder.boot_id and holder.same_machine():
        return None if _alive(holder) else f"its process (pid {holder.pid}) on this machine is gone"
    try:
        expires = datetime.datetime.fromtimestamp(lock.stat().st_mtime)
    except FileNotFoundError:
        return None
    late = (server_now(lock) - expires).total_seconds()
    return f"it was not refreshed for {late + stale_s:.0f} s (> {STALE_ENV}={stale_s:g})" if late > 0 else None


def break_stale(lock: Path, judged: Holder, reason: str) -> bool:
    """Remove the stale lock ``lock`` if it still carries the claim ``judged`` held; under the break lock.

    Returns True when it was removed. Two jobs that judged the same lock stale: the first removes it (and may
    take the lock at once), the second finds another claim and leaves it alone."""
    breaker = ServerClockLock(str(lock) + ".break", lifetime=BREAK_LOCK_LIFETIME_S)
    try:
        breaker.lock(timeout=datetime.timedelta(seconds=BREAK_LOCK_LIFETIME_S + 5))  # a dead breaker expires
    except TimeOutError:
        return False
    try:
        if current_claim(lock) != judged.claim:
            return False
        lock.unlink(missing_ok=True)
        Path(judged.claim).unlink(missing_ok=True)
        console.warn(f"took over the lock {lock} of {judged.describe()}: {reason}")
        return True
    finally:
        breaker.unlock(unconditionally=True)


class FolderLock:
    """The exclusive lock of one folder, held by this process (see the module docstring)."""

    def __init__(self, folder: str | Path, what: str = "stage folder") -> None:
        self.folder, self.what = Path(folder), what
        self.path = lock_path(self.folder)
        self.stale_s = env_number(STALE_ENV, DEFAULT_STALE_S, minimum=1)
        self._lock: Lock | None = None

    def acquire(self) -> None:
        """Take the lock, or raise :class:`StageLockedError` naming the job that holds it."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(5):
            lock = ServerClockLock(str(self.path), lifetime=self.stale_s)
            try:
                lock.lock(timeout=_NO_WAIT)
            except TimeOutError:
                other = read_holder(self.path)
                if other is None:
                    continue  # released meanwhile
                reason = stale_reason(other, self.path, self.stale_s)
                if reason is None:
                    raise StageLockedError(
                        f"{self.what} {self.folder} is in use by another job ({other.describe()}; lock file "
                        f"{self.path}); wait for it to end, or if that job is gone delete {self.path}") from None
                break_stale(self.path, other, reason)
                continue
            self._lock = lock
            self._write_record(lock.claimfile)
            return
        raise StageLockedError(f"could not take the lock {self.path} of {self.what} {self.folder} "
                               "(other jobs keep taking it); retry")

    def _write_record(self, claim: str) -> None:
        record, tmp = holder_path(self.path), holder_path(self.path).with_suffix(f".tmp-{os.getpid()}")
        tmp.write_text(json.dumps(asdict(_me(claim))))
        os.replace(tmp, record)

    @property
    def holder(self) -> Holder | None:
        return read_holder(self.path)

    def refresh(self) -> None:
        if self._lock is not None:
            try:
                self._lock.refresh()
            except (NotLockedError, OSError):
                pass

    def release(self) -> None:
        lock, self._lock = self._lock, None
        if lock is None or current_claim(self.path) != lock.claimfile:
            return  # not ours (any more): never remove another job's lock
        holder_path(self.path).unlink(missing_ok=True)
        try:
            lock.unlock(unconditionally=True)
        except (NotLockedError, OSError):
            pass


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
    try:
        lock.acquire()
    except AlreadyLockedError:  # pragma: no cover - a claim name is unique per Lock object
        raise StageLockedError(f"the lock {lock.path} is already held by this process") from None
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
