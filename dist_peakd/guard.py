"""Run a stage for the CLI: a failure becomes a one-line message on stderr and a documented exit code.

The code comes from the error type itself (``exit_code``, see :mod:`dist_peakd.errors`); the only
errors without one are foreign: a broken collective (a peer died, a timeout: exit 5) and anything
unexpected (exit 1, with the traceback).
"""

from __future__ import annotations

import os
import signal
import sys
import traceback
from collections.abc import Callable
from typing import Any

from .errors import EXIT_ERROR, EXIT_PEER_FAILURE, exit_code_of


def _is_collective_failure(exc: BaseException) -> bool:
    from .engine.distributed import is_collective_failure

    return is_collective_failure(exc)


def classify(exc: BaseException) -> tuple[int, str]:
    """(exit code, one-line reason) for an exception that ended a stage."""
    code = exit_code_of(exc)
    if code is not None and code != EXIT_ERROR:
        exit_message = getattr(exc, "exit_message", None)
        return code, exit_message() if callable(exit_message) else f"error: {exc}"
    if code is None and _is_collective_failure(exc):
        from .engine.distributed import describe_lost_peers

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
    except (SystemExit, KeyboardInterrupt):
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
