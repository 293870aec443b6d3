"""Prepare the next steps' batches in one background thread while the current step runs."""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any


class Prefetcher:
    """Calls ``make(i)`` for steps ``start..stop-1``, ``DEPTH`` steps ahead of the one being trained.

    Batch preparation (Arrow reads, collation, teacher-cache lookups, pinning) is pure data work with
    no randomness, so doing it ahead changes nothing but the wall time.
    """

    DEPTH = 2

    def __init__(self, make: Callable[[int], Any], start: int, stop: int) -> None:
        self._make, self._stop = make, stop
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="dist-peakd-prefetch")
        self._futures: dict[int, Future] = {}
        for i in range(start, min(stop, start + self.DEPTH)):
            self._futures[i] = self._pool.submit(make, i)

    def get(self, i: int) -> Any:
        future = self._futures.pop(i, None) or self._pool.submit(self._make, i)
        nxt = i + self.DEPTH
        if nxt < self._stop and nxt not in self._futures:
            self._futures[nxt] = self._pool.submit(self._make, nxt)
        return future.result()

    def close(self) -> None:
        for f in self._futures.values():
            f.cancel()
        self._pool.shutdown(wait=True)
