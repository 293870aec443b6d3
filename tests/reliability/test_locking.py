"""One job per stage folder (``dist_peakd.locking``): flufl.lock's NFS-safe lock plus our stale-lock rule.

Real processes hold the locks (a child python), so "alive", "gone" and "another job" are the real thing."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from dist_peakd import locking
from dist_peakd.errors import StageLockedError

REPO = Path(__file__).resolve().parents[2]

_HOLD = """
import sys, time
from dist_peakd import locking
locking.lock_folder(sys.argv[1])
print("held", flush=True)
time.sleep(120)
"""


def _holder(folder: Path) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", _HOLD, str(folder)], stdout=subprocess.PIPE, text=True, cwd=REPO)
    assert proc.stdout.readline().strip() == "held"
    return proc


def _kill(proc: subprocess.Popen) -> None:
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()


def _foreign_lock(folder: Path, host: str = "elsewhere", pid: int = 1) -> Path:
    """A lock as flufl.lock leaves it for a job on another host: a claim file, the lock a hard link of it,
    and that job's holder record."""
    path = locking.lock_path(folder)
    path.parent.mkdir(parents=True, exist_ok=True)
    claim = Path(f"{path}|{host}|{pid}|12345")
    claim.write_text(str(claim))
    os.link(claim, path)
    record = {"host": host, "pid": pid, "started": 0.0, "boot_id": "b", "pid_namespace": "n",
              "acquired": "2026-01-01T00:00:00", "command": "dist-peakd distill", "claim": str(claim)}
    locking.holder_path(path).write_text(json.dumps(record))
    return path


def _leftovers(parent: Path) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if p.name.startswith("."))


def test_a_second_job_is_refused_naming_the_holder_and_a_dead_holder_is_taken_over(tmp_path, capsys):
    folder = tmp_path / "mrpc" / "teacher"
    proc = _holder(folder)
    try:
        with pytest.raises(StageLockedError, match=rf"in use by another job \(host .*, pid {proc.pid}, since"):
            locking.lock_folder(folder)
    finally:
        _kill(proc)
    lock = locking.lock_folder(folder)  # its process is gone: stale at once, with a warning
    try:
        assert "took over the lock" in capsys.readouterr().err
        assert lock.holder is not None and lock.holder.pid == os.getpid()
    finally:
        locking.release([folder.resolve()])
    assert _leftovers(folder.parent) == []  # lock, claim files and holder record all gone


def test_a_lock_of_another_host_is_stale_only_after_its_lifetime(tmp_path, monkeypatch, capsys):
    folder = tmp_path / "stage"
    path = _foreign_lock(folder)
    future = time.time() + 300  # flufl.lock: the lock's mtime is when it expires (refresh = now + lifetime)
    os.utime(path, (future, future))
    with pytest.raises(StageLockedError, match="host elsewhere, pid 1, since 2026-01-01T00:00:00"):
        locking.lock_folder(folder)
    past = time.time() - 30
    os.utime(path, (past, past))
    lock = locking.lock_folder(folder)
    err = capsys.readouterr().err
    assert "took over the lock" in err and "host elsewhere, pid 1" in err and "not refreshed" in err, err
    assert lock.holder.pid == os.getpid()
    locking.release([folder.resolve()])
    assert _leftovers(tmp_path) == []


def test_the_holder_refreshes_its_lock_into_the_future(tmp_path):
    folder = tmp_path / "stage"
    lock = locking.lock_folder(folder)
    try:
        past = time.time() - 1000
        os.utime(lock.path, (past, past))
        lock.refresh()
        assert lock.path.stat().st_mtime > time.time() + locking.DEFAULT_STALE_S - 60
    finally:
        locking.release([folder.resolve()])


def test_breaking_checks_the_claim_again_so_a_late_breaker_never_removes_a_fresh_lock(tmp_path, capsys):
    """The break-lock race: jobs A and B both judged the dead holder's lock stale. A broke it and took the
    lock; B's break comes late, with the judgement it made before: it must find another claim and leave
    A's lock alone."""
    folder = tmp_path / "stage"
    path = _foreign_lock(folder)
    judged = locking.read_holder(path)
    assert judged is not None and judged.host == "elsewhere"
    assert locking.break_stale(path, judged, "test: judged stale") is True  # A breaks ...
    lock_a = locking.lock_folder(folder)  # ... and takes it
    try:
        assert locking.break_stale(path, judged, "test: judged stale") is False  # B, late: nothing removed
        assert path.exists() and locking.read_holder(path).pid == os.getpid()
        with pytest.raises(StageLockedError, match=f"pid {os.getpid()}"):
            locking.FolderLock(folder).acquire()  # a third job is refused: the lock is A's, alive
    finally:
        locking.release([folder.resolve()])
    assert not path.exists() and lock_a.holder is None


def test_a_lock_without_a_holder_record_is_described_by_its_claim_and_judged_by_its_age(tmp_path):
    folder = tmp_path / "stage"
    path = _foreign_lock(folder, host="node7", pid=4242)
    locking.holder_path(path).unlink()
    future = time.time() + 300
    os.utime(path, (future, future))
    with pytest.raises(StageLockedError, match=r"host node7, pid 4242, since \? \(\(no holder record\)\)"):
        locking.lock_folder(folder)


def test_release_never_removes_a_lock_another_job_took_over(tmp_path):
    """A job whose lock was broken (it froze past the lifetime) must not remove its successor's lock."""
    folder = tmp_path / "stage"
    mine = locking.FolderLock(folder)
    mine.acquire()
    assert locking.break_stale(mine.path, mine.holder, "test: frozen") is True
    other = locking.FolderLock(folder)
    other.acquire()
    mine.release()
    assert mine.path.exists() and locking.read_holder(mine.path).claim == other.holder.claim
    other.release()
    assert _leftovers(tmp_path) == []
