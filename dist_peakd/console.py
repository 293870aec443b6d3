"""What a run prints: once, on rank 0, in a few readable lines.

* :func:`info` / :func:`warn`: ``[dist-peakd] ...`` lines, printed by the main process only (rank 0 of
  the job; in a plain process, the process itself);
* :func:`banner`: ``[2/4] cache-teacher: ...``, one per stage of a multi-stage command (the pipeline,
  a sweep's shared stages), numbered by :func:`stage_plan`;
* :func:`configure`: the libraries' own output made to match (called when the process group is
  set up): no per-load progress bars from transformers ("Loading weights", "Writing model shards");
  on every rank but 0 no library warnings, no datasets progress bars and no Python warnings, so a
  2-rank run prints everything once;
* :func:`library_warnings_off`: a command whose whole output is one line (``export``) keeps the libraries'
  warnings about their own internals off the console (errors still print);
* :func:`folder_size` / :func:`human_size`: the disk a run folder takes (hard links counted once).

A leaf module (imports nothing from the package), so every layer may print through it.
"""

from __future__ import annotations

import contextlib
import contextvars
import os
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path

PREFIX = "[dist-peakd]"

_PLAN: contextvars.ContextVar[tuple[int, int] | None] = contextvars.ContextVar("dist_peakd_stage_plan",
                                                                              default=None)


def process_rank() -> int:
    """This process's rank: the process group's when it exists, else ``RANK`` from the launcher, else 0."""
    try:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            return dist.get_rank()
    except ImportError:  # pragma: no cover - torch is a dependency
        pass
    try:
        return int(os.environ.get("RANK", "0") or 0)
    except ValueError:
        return 0


def is_main_process() -> bool:
    return process_rank() == 0


def echo(text: str) -> None:
    """``text`` as it is (a table, a command's outcome lines) on the main process (stdout)."""
    if is_main_process():
        print(text, flush=True)


def info(message: str) -> None:
    """``[dist-peakd] message`` on the main process (stdout)."""
    echo(f"{PREFIX} {message}")


def warn(message: str) -> None:
    """``[dist-peakd] warning: message`` on the main process (stderr)."""
    if is_main_process():
        print(f"{PREFIX} warning: {message}", file=sys.stderr, flush=True)


@contextlib.contextmanager
def stage_plan(total: int) -> Iterator[None]:
    """Number the :func:`banner` calls inside ``1/total``, ``2/total``, ... (a pipeline, a sweep)."""
    token = _PLAN.set((0, total))
    try:
        yield
    finally:
        _PLAN.reset(token)


def banner(stage: str, detail: str) -> str:
    """Print (rank 0) and return ``[i/n] stage: detail``; outside a :func:`stage_plan` it is ``[1/1]``."""
    plan = _PLAN.get()
    if plan is None:
        index, total = 1, 1
    else:
        index, total = plan[0] + 1, plan[1]
        _PLAN.set((index, total))
    line = f"[{index}/{total}] {stage}: {detail}"
    if is_main_process():
        print(line, flush=True)
    return line


def configure(rank: int | None = None) -> None:
    """Quiet the libraries' own console output (see the module doc); safe to call more than once."""
    rank = process_rank() if rank is None else rank
    with contextlib.suppress(ImportError):
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        if rank != 0:
            hf_logging.set_verbosity_error()
    if rank == 0:
        return
    with contextlib.suppress(ImportError):
        import datasets

        datasets.disable_progress_bars()
        datasets.logging.set_verbosity_error()
    import logging

    for name in ("DeepSpeed", "torch.distributed", "ray"):
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.simplefilter("ignore")


#: The libraries an export drives (torch.onnx's exporter, onnx/onnxscript, onnxruntime's optimizer and
#: quantizer, transformers) and the root logger (onnxruntime's quantizer warns through it): their warnings
#: are about their own internals ("torchvision is not installed", "consider pre-processing before
#: quantization", axis renames), not about the user's model.
LIBRARY_LOGGERS = ("torch", "onnx", "onnxscript", "onnxruntime", "transformers", "")


@contextlib.contextmanager
def library_warnings_off(loggers: tuple[str, ...] = LIBRARY_LOGGERS) -> Iterator[None]:
    """Inside: no Python warnings, and ``loggers`` (``""``: the root logger) only at ERROR and above, so
    a failure is still printed and still raises; every filter and level is restored on the way out."""
    import logging

    saved = {name: logging.getLogger(name).level for name in loggers}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for name in loggers:
            logging.getLogger(name).setLevel(logging.ERROR)
        try:
            yield
        finally:
            for name, level in saved.items():
                logging.getLogger(name).setLevel(level)


@contextlib.contextmanager
def datasets_bars_off() -> Iterator[None]:
    """No datasets progress bars inside (e.g. "Saving the dataset" after our own tokenization bar)."""
    try:
        import datasets
    except ImportError:  # pragma: no cover - a dependency
        yield
        return
    was_on = datasets.is_progress_bar_enabled()
    datasets.disable_progress_bars()
    try:
        yield
    finally:
        if was_on:
            datasets.enable_progress_bars()


def folder_size(path: str | Path) -> int:
    """Bytes taken by the files under ``path`` (a file hard-linked twice counts once; links not followed)."""
    seen: set[tuple[int, int]] = set()
    total = 0
    for root, _dirs, files in os.walk(path):
        for name in files:
            try:
                st = os.lstat(os.path.join(root, name))
            except OSError:  # removed while walking
                continue
            if (st.st_dev, st.st_ino) in seen:
                continue
            seen.add((st.st_dev, st.st_ino))
            total += st.st_size
    return total


def human_size(num_bytes: float) -> str:
    """``245.3 MB`` (decimal units, as ``du -h --si``)."""
    if abs(num_bytes) < 1000:
        return f"{num_bytes:.0f} B"
    for unit in ("kB", "MB", "GB", "TB"):
        num_bytes /= 1000
        if abs(num_bytes) < 1000 or unit == "TB":
            break
    return f"{num_bytes:.1f} {unit}"


def print_to_pipe(text: str) -> None:
    """Print ``text``; a reader that stops early (``dist-peakd --help | head``) ends the output quietly."""
    try:
        print(text, flush=True)
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit's flush
