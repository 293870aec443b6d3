"""Failure handling shared by every stage: error types, exit codes, and test-only fault injection.

Exit codes of ``dist-peakd <stage>`` (each rank; see docs/RELIABILITY.md for the launcher's own):

====  =======================================================================================
0     finished
1     unexpected error (traceback printed)
2     bad configuration, refused before any work (``ConfigError``; the option is named)
3     non-finite loss with ``nan_policy=stop`` (``NonFiniteLossError``; step and term named)
4     bad input data or a corrupted artifact (``DataError``, ``ArtifactCorruptError``,
      teacher-cache errors; the file is named)
5     a peer rank died or a collective timed out (the ranks that are gone are named when known)
6     an artifact could not be written, e.g. disk full (``ArtifactWriteError``; the path is named;
      the previous checkpoint / export is intact)
75    stopped on request (``stop_after_steps``) after writing a checkpoint; rerun to continue
143   preempted (SIGTERM) after writing a checkpoint; rerun the same command to resume
====  =======================================================================================

Fault injection (tests only): ``DIST_PEAKD_FAULT_INJECT="<action>:rank=<r>:step=<n>[,...]"`` makes
rank ``r`` act right after optimizer step ``n`` of the training loop. Actions: ``sigkill`` (the rank
SIGKILLs itself: a crashed rank), ``sigterm`` (SIGTERM to itself: a preempted rank),
``sigterm-parent`` (SIGTERM to its parent, i.e. the deepspeed launcher's per-node ``launch.py``;
the rank then waits up to 10 s for the launcher's SIGTERM so the stop step is deterministic).
Unset in normal runs; a malformed value is refused with an error naming the variable.
"""

from __future__ import annotations

import os
import signal
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

FAULT_ENV = "DIST_PEAKD_FAULT_INJECT"
FAULT_ACTIONS = ("sigkill", "sigterm", "sigterm-parent")

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_CONFIG = 2
EXIT_NONFINITE = 3
EXIT_BAD_INPUT = 4
EXIT_PEER_FAILURE = 5
EXIT_WRITE_FAILED = 6
EXIT_STOPPED = 75
EXIT_PREEMPTED = 143


class ArtifactCorruptError(ValueError):
    """A checkpoint or export file is missing, truncated or fails its checksum; ``path`` names it."""

    def __init__(self, path: Any, problem: str) -> None:
        self.path = str(path)
        self.problem = problem
        super().__init__(f"corrupted artifact: {path}: {problem}")

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.path, self.problem))


class CheckpointCorruptError(ArtifactCorruptError):
    """Every checkpoint under a folder is corrupted (the message names each bad file)."""


class ArtifactWriteError(OSError):
    """Writing a checkpoint or export failed (e.g. ENOSPC); the previous artifact is untouched."""


class StopRequested(Exception):
    """Raised inside the loop after a checkpoint was written because a stop was requested.

    ``checkpoint`` is the checkpoint folder; ``preempted`` is True when the stop came from SIGTERM.
    """

    def __init__(self, message: str, checkpoint: Any = None, preempted: bool = False) -> None:
        super().__init__(message)
        self.checkpoint = str(checkpoint) if checkpoint is not None else None
        self.preempted = preempted


class Preempted(StopRequested):
    """SIGTERM reached at least one rank; every rank wrote the checkpoint before raising this."""

    def __init__(self, message: str, checkpoint: Any = None) -> None:
        super().__init__(message, checkpoint, preempted=True)


# ---------------------------------------------------------------------------------------- injection
@dataclass(frozen=True)
class Fault:
    action: str
    rank: int
    step: int


def parse_faults(value: str | None) -> list[Fault]:
    """Parse ``DIST_PEAKD_FAULT_INJECT``; raises ValueError naming the variable when malformed."""
    if not value:
        return []
    faults = []
    for item in value.split(","):
        parts = item.strip().split(":")
        try:
            fields = dict(p.split("=", 1) for p in parts[1:])
            fault = Fault(parts[0], int(fields["rank"]), int(fields["step"]))
        except (ValueError, KeyError) as e:
            raise ValueError(f"{FAULT_ENV}={value!r}: expected '<action>:rank=<r>:step=<n>' ({e})") from None
        if fault.action not in FAULT_ACTIONS:
            raise ValueError(f"{FAULT_ENV}={value!r}: action {fault.action!r} is not one of {list(FAULT_ACTIONS)}")
        faults.append(fault)
    return faults


def inject_faults(rank: int, step: int, sigterm_seen: Callable[[], bool] | None = None) -> None:
    """Apply the faults of ``DIST_PEAKD_FAULT_INJECT`` meant for this rank after this step."""
    for fault in parse_faults(os.environ.get(FAULT_ENV)):
        if fault.rank != rank or fault.step != step:
            continue
        print(f"[dist-peakd] fault injection: {fault.action} on rank {rank} after step {step}", flush=True)
        sys.stderr.flush()
        if fault.action == "sigkill":
            os.kill(os.getpid(), signal.SIGKILL)
        elif fault.action == "sigterm":
            os.kill(os.getpid(), signal.SIGTERM)
        elif fault.action == "sigterm-parent":
            os.kill(os.getppid(), signal.SIGTERM)
            deadline = time.monotonic() + 10.0
            while sigterm_seen is not None and not sigterm_seen() and time.monotonic() < deadline:
                time.sleep(0.02)


# ---------------------------------------------------------------------------------------- exit codes
def _is_collective_failure(exc: BaseException) -> bool:
    try:
        import torch.distributed as dist
    except ImportError:  # pragma: no cover
        return False
    dist_error = getattr(dist, "DistError", None)
    if dist_error is not None and isinstance(exc, dist_error):
        return True
    if not isinstance(exc, RuntimeError) or not (dist.is_available() and dist.is_initialized()):
        return False
    text = str(exc)
    return any(s in text for s in ("Connection closed by peer", "Connection reset by peer", "Broken pipe",
                                   "Timed out", "timed out", "gloo", "NCCL", "ProcessGroup"))


def classify(exc: BaseException) -> tuple[int, str]:
    """(exit code, one-line reason) for an exception that ended a stage."""
    from ..data.errors import DataError
    from .distributed import describe_lost_peers
    from .ds_config import ConfigError
    from .engine import NonFiniteLossError

    bad_input: tuple[type, ...] = (DataError, ArtifactCorruptError)
    try:
        from ..cache import CacheCorruptError, CacheMismatchError

        bad_input += (CacheCorruptError, CacheMismatchError)
    except ImportError:  # pragma: no cover - the cache package is optional here
        pass
    if isinstance(exc, Preempted):
        return EXIT_PREEMPTED, f"preempted (SIGTERM), checkpoint at {exc.checkpoint}; rerun the same command to resume"
    if isinstance(exc, StopRequested):
        return EXIT_STOPPED, f"{exc}; rerun the same command to continue"
    if isinstance(exc, ConfigError):
        return EXIT_CONFIG, f"error: {exc}"
    if isinstance(exc, NonFiniteLossError):
        return EXIT_NONFINITE, f"error: {exc}"
    if isinstance(exc, bad_input):
        return EXIT_BAD_INPUT, f"error: {exc}"
    if isinstance(exc, ArtifactWriteError):
        return EXIT_WRITE_FAILED, f"error: {exc}"
    if _is_collective_failure(exc):
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return EXIT_PEER_FAILURE, f"error: a collective operation failed ({first}); {describe_lost_peers()}"
    return EXIT_ERROR, f"error: {type(exc).__name__}: {exc}"


def _rank_label() -> str:
    try:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            return f"rank {dist.get_rank()}: "
    except Exception:  # pragma: no cover
        pass
    return ""


def run_guarded(name: str, fn: Callable[..., Any], *args: Any) -> Any:
    """Run a stage; turn a failure into a one-line message on stderr and a documented exit code."""
    try:
        return fn(*args)
    except SystemExit:
        raise
    except KeyboardInterrupt:
        raise
    except BaseException as exc:  # noqa: BLE001 - every failure becomes an exit code
        code, reason = classify(exc)
        # The launcher SIGTERMs the survivors when a rank dies; finish the message first.
        try:
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
        except ValueError:  # not the main thread
            pass
        if code == EXIT_ERROR:
            traceback.print_exc()
        print(f"dist-peakd {name}: {_rank_label()}{reason}", file=sys.stderr, flush=True)
        sys.stdout.flush()
        if code == EXIT_PEER_FAILURE:
            os._exit(code)  # the process group is broken: interpreter teardown could block on it
        raise SystemExit(code) from None
