"""Every error type dist-peakd raises on purpose, each carrying the exit code of ``dist-peakd <stage>``.

A leaf module (imports nothing from the package): every layer may raise these. The CLI maps an
exception to its exit code by the ``exit_code`` attribute (:func:`exit_code_of`), so a new error type
gets its code where it is defined. Exit codes (each rank; docs/RELIABILITY.md has the launcher's own):

====  =======================================================================================
0     finished
1     unexpected error (traceback printed)
2     bad configuration or command line, refused before any work (the option is named)
3     non-finite loss with ``nan_policy=stop`` (step and term named)
4     bad input data or a corrupted artifact: dataset file, checkpoint, export, teacher cache
      (the file is named)
5     a peer rank died or a collective timed out (the ranks that are gone are named when known)
6     an artifact could not be written, e.g. disk full (the path is named; the previous checkpoint
      / export is intact)
75    stopped on request (``stop_after_steps`` steps of this invocation) after writing a checkpoint; rerun to
      continue
143   preempted (SIGTERM) after writing a checkpoint; rerun the same command to resume
====  =======================================================================================
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_CONFIG = 2
EXIT_NONFINITE = 3
EXIT_BAD_INPUT = 4
EXIT_PEER_FAILURE = 5
EXIT_WRITE_FAILED = 6
EXIT_STOPPED = 75
EXIT_PREEMPTED = 143


def exit_code_of(exc: BaseException) -> int | None:
    """The exit code an error type declares (``exit_code`` class attribute), None for foreign errors."""
    code = getattr(type(exc), "exit_code", None)
    return int(code) if isinstance(code, int) else None


# ------------------------------------------------------------------------------------ configuration
class ConfigError(ValueError):
    """A configuration value is invalid; the message names the option and what was expected."""

    exit_code = EXIT_CONFIG


class StageLockedError(ConfigError):
    """Another job holds the stage folder's lock; the message names the holder (host, pid, start)."""


class InputsChangedError(ConfigError):
    """A stage folder was made from other inputs (teacher, cache, PTP encoder, data) than this run's."""


class UsageError(ValueError):
    """A command line that names no stage, an unknown option or a stray argument."""

    exit_code = EXIT_CONFIG


class ModelConfigError(ValueError):
    """An invalid model request: bad ``k``, unknown SPS variant, a checkpoint of the wrong family or role
    (a teacher where a PTP encoder belongs, a backbone without a trained head): refused, exit 2."""

    exit_code = EXIT_CONFIG


# ------------------------------------------------------------------------------------ input data
class DataError(ValueError):
    """Base class of every data-layer error (subclasses in :mod:`dist_peakd.data.errors`)."""

    exit_code = EXIT_BAD_INPUT


# ------------------------------------------------------------------------------------ artifacts
class ArtifactCorruptError(ValueError):
    """A checkpoint or export file is missing, truncated or fails its checksum; ``path`` names it."""

    exit_code = EXIT_BAD_INPUT

    def __init__(self, path: Any, problem: str) -> None:
        self.path = str(path)
        self.problem = problem
        super().__init__(f"corrupted artifact: {path}: {problem}")

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.path, self.problem))


class CheckpointCorruptError(ArtifactCorruptError):
    """Every checkpoint under a folder is corrupted (the message names each bad file)."""


class ArtifactWriteError(OSError):
    """Writing a checkpoint or export failed (e.g. ENOSPC); the previous artifact is untouched.

    Built as ``ArtifactWriteError(errno, message, path)``; the message names the path and, for a full
    disk, says "no space left on device" (:func:`dist_peakd.artifacts.write_error`).
    """

    exit_code = EXIT_WRITE_FAILED

    def exit_message(self) -> str:
        return f"error: {self.strerror}" if self.strerror else f"error: {self}"


class CacheMismatchError(ValueError):
    """The teacher cache was built from something other than what this run expects.

    ``differences`` holds ``(field, found_in_cache, expected)`` for every differing field.
    """

    exit_code = EXIT_BAD_INPUT

    def __init__(self, cache_dir: str | Path, differences: Sequence[tuple[str, Any, Any]]) -> None:
        self.cache_dir = str(cache_dir)
        self.differences = list(differences)
        parts = [f"field {f!r} differs: cache has {found!r}, this run expects {exp!r}"
                 for f, found, exp in self.differences]
        super().__init__(f"teacher cache {cache_dir}: " + "; ".join(parts)
                         + "; rerun cache-teacher with --rebuild")

    def __reduce__(self) -> tuple[Any, ...]:  # picklable: rank 0 broadcasts it to the others
        return (type(self), (self.cache_dir, self.differences))


class CacheCorruptError(ValueError):
    """A teacher-cache file is missing, truncated, has the wrong row count or fails its checksum.

    ``path`` is the offending file.
    """

    exit_code = EXIT_BAD_INPUT

    def __init__(self, path: str | Path, problem: str) -> None:
        self.path = str(path)
        self.problem = problem
        super().__init__(f"teacher cache file {path}: {problem}; rerun cache-teacher with --rebuild")

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.path, self.problem))


# ------------------------------------------------------------------------------------ training
class NonFiniteLossError(FloatingPointError):
    """A loss term became NaN or inf; the message names the step, the rank(s) and the term(s)."""

    exit_code = EXIT_NONFINITE


class TooManySkippedSteps(NonFiniteLossError):
    """``nan_policy=skip`` skipped more than ``max_skipped_fraction`` of a run's steps: not a finished run."""


class StopRequested(Exception):
    """Raised by the trainer after a checkpoint was written because a stop was requested.

    ``checkpoint`` is the checkpoint folder; ``preempted`` is True when the stop came from SIGTERM.
    """

    exit_code = EXIT_STOPPED

    def __init__(self, message: str, checkpoint: Any = None, preempted: bool = False) -> None:
        super().__init__(message)
        self.checkpoint = str(checkpoint) if checkpoint is not None else None
        self.preempted = preempted

    def exit_message(self) -> str:
        return f"{self}; rerun the same command to continue"


class Preempted(StopRequested):
    """SIGTERM reached at least one rank; every rank wrote the checkpoint before raising this."""

    exit_code = EXIT_PREEMPTED

    def __init__(self, message: str, checkpoint: Any = None) -> None:
        super().__init__(message, checkpoint, preempted=True)

    def exit_message(self) -> str:
        return f"preempted (SIGTERM), checkpoint at {self.checkpoint}; rerun the same command to resume"


class EarlyStopped(Exception):
    """A scheduler (a sweep's ASHA) ended the run after the evaluation at ``step``.

    Raised from a trainer hook; the trainer keeps ``best/``, writes ``summary.json`` with ``"stopped":
    {"step", "by"}`` and returns normally (when ``step`` is the run's last, the run is simply complete).
    """

    exit_code = EXIT_OK

    def __init__(self, step: int, by: str) -> None:
        super().__init__(f"stopped by {by} after step {step}")
        self.step, self.by = int(step), str(by)
