"""Frozen-rank watchdog: UDP heartbeats between the ranks, sent and checked by one thread per rank.

A rank that is stopped (SIGSTOP, a debugger), frozen (whole VM paused) or cut off (network partition)
never closes its connections, so its peers would wait in their next collective for as long as that
collective's timeout allows (DeepSpeed's own groups: 30 min by default). Here every rank sends a small
datagram to every peer every ``interval_s`` from a daemon thread and checks what it received; a peer
that has been silent for ``timeout_s`` makes this rank print one line naming it (rank, host, pid) and
leave with exit code 5 (``os._exit``: the group is unusable), so the launcher tears the job down.

Why this detects a stopped *process* and not a slow *step*: the heartbeats come from a thread, which
keeps running while the main thread writes a checkpoint, evaluates, builds the teacher cache or
compiles. A stopped process stops all its threads. UDP is used because sending never blocks on the
peer (a TCP store would: its server lives in rank 0's process).

Safety rules: a peer is watched only after its first heartbeat arrived (a firewall that drops UDP
disables the watchdog for that peer with one warning instead of killing a healthy job); a rank that
leaves cleanly says goodbye; a rank that notices its own thread did not run for a long time (it was
stopped itself, or starved) forgives its peers instead of accusing them.

Bound (one node, ``deepspeed`` launcher): the survivors exit within ``timeout_s`` + one period; the
launcher polls every 1 s, SIGTERMs every rank and SIGKILLs the stopped one after its 30 s grace (a
stopped process does not act on SIGTERM). So ``timeout_s`` + period + ~32 s: 41.0-46.1 s measured with
a 10 s timeout over 10 trials (bench/frozen_rank.py), ~93 s with the default 60 s.
Not covered: a main thread stuck in D state while this thread still runs (the collective timeout,
which ``init_distributed`` also applies to DeepSpeed's groups, covers it), and one C call holding the
GIL for longer than ``timeout_s`` on a rank (its peers would call it silent).
"""

from __future__ import annotations

import os
import secrets
import select
import socket
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from ..errors import EXIT_PEER_FAILURE

TIMEOUT_ENV = "DIST_PEAKD_HEARTBEAT_TIMEOUT"
DEFAULT_TIMEOUT_S = 60.0
EXIT_SILENT_PEER = EXIT_PEER_FAILURE  # 5: the exit code of a lost peer (dist_peakd/errors.py)

_MAGIC = b"DPHB"
_BEAT, _BYE = 0, 1
_PACKET = struct.Struct("!4sBIQQ")  # magic, kind, sender rank, sender nonce, sequence number


def timeout_from_env() -> float:
    """``DIST_PEAKD_HEARTBEAT_TIMEOUT`` in seconds (default 60; 0 turns the watchdog off)."""
    from ..env import env_seconds

    return env_seconds(TIMEOUT_ENV, DEFAULT_TIMEOUT_S, lambda v: v == 0 or 1.0 <= v < float("inf"),
                       "seconds >= 1 (or 0 to turn the watchdog off)")


def interval_for(timeout_s: float) -> float:
    """Heartbeat period: a tenth of the timeout, between 0.1 s and 2 s."""
    return min(2.0, max(0.1, timeout_s / 10))


def advertised_ip() -> str:
    """The address peers can reach this host at: the local end of the route to MASTER_ADDR."""
    master = os.environ.get("MASTER_ADDR", "")
    try:
        port = int(os.environ.get("MASTER_PORT", "29500") or 29500)
    except ValueError:  # refused by init_distributed before the watchdog starts
        port = 29500
    if master:
        try:
            family, _, _, _, addr = socket.getaddrinfo(master, port, type=socket.SOCK_DGRAM)[0]
            with socket.socket(family, socket.SOCK_DGRAM) as probe:
                probe.connect(addr)  # a route lookup: nothing is sent
                return probe.getsockname()[0]
        except OSError:
            pass
    try:
        return socket.gethostbyname(socket.gethostname())
    except OSError:
        return "127.0.0.1"


@dataclass(frozen=True)
class Peer:
    """How to reach one rank's watchdog, and how to name it in a message."""

    rank: int
    host: str
    pid: int
    ip: str
    port: int
    nonce: int


SilentHandler = Callable[[list[tuple[Peer, float]]], None]


class Watchdog:
    """One rank's heartbeat sender/checker. ``bind`` -> exchange ``endpoint`` -> ``start`` -> ``stop``."""

    def __init__(self, rank: int, timeout_s: float, interval_s: float | None = None,
                 on_silent: SilentHandler | None = None, is_current: Callable[[], bool] | None = None,
                 ip: str | None = None, explain: Callable[[Peer], str] | None = None) -> None:
        self.rank, self.timeout_s = rank, timeout_s
        self.interval_s = interval_s or interval_for(timeout_s)
        self.on_silent = on_silent or self._exit_naming
        self.is_current = is_current or (lambda: True)  # False once the process group it serves is gone
        self.explain = explain or (lambda peer: "stopped, frozen or cut off")  # what a silent peer's state is
        self.nonce = secrets.randbits(63)
        self.ip = ip or advertised_ip()
        family = socket.AF_INET6 if ":" in self.ip else socket.AF_INET
        self._sock = socket.socket(family, socket.SOCK_DGRAM)
        self._sock.bind(("::" if family == socket.AF_INET6 else "0.0.0.0", 0))
        self._sock.setblocking(False)
        self.port = self._sock.getsockname()[1]
        self._wake_r, self._wake_w = os.pipe()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._peers: dict[int, Peer] = {}
        self._last_seen: dict[int, float] = {}  # monotonic time of the newest heartbeat (armed peers)
        self._left: set[int] = set()             # peers that said goodbye
        self._warned_unheard = False
        self._started_at = 0.0
        self._seq = 0
        self._closed = False

    # ------------------------------------------------------------------------------------- public
    def endpoint(self) -> tuple[str, int, int]:
        """(ip, port, nonce) that the peers need; exchange it with every rank before ``start``."""
        return self.ip, self.port, self.nonce

    def start(self, peers: dict[int, Peer]) -> None:
        self._peers = {r: p for r, p in peers.items() if r != self.rank}
        self._started_at = time.monotonic()
        self._thread = threading.Thread(target=self._run, name="dist-peakd-watchdog", daemon=True)
        self._thread.start()

    def stop(self, farewell: bool = True) -> None:
        """Stop the thread (tell the peers this rank leaves on purpose) and close the socket."""
        if self._closed:
            return
        self._closed = True
        already_stopped = self._stop.is_set()  # the thread ended itself (its group was destroyed)
        self._stop.set()
        os.write(self._wake_w, b"x")
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=5)
        if farewell and not already_stopped:
            self._send(_BYE)
        for fd in (self._wake_r, self._wake_w):
            os.close(fd)
        self._sock.close()

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def silence(self) -> dict[int, float]:
        """Seconds since each watched peer's last heartbeat (peers that left or were never heard: absent)."""
        now = time.monotonic()
        return {r: now - t for r, t in list(self._last_seen.items()) if r not in self._left}

    def describe(self, rank: int) -> str:
        peer = self._peers[rank]
        return f"rank {rank} (host {peer.host}, pid {peer.pid})"

    # ------------------------------------------------------------------------------------ the thread
    def _run(self) -> None:
        next_send = last_tick = time.monotonic()
        while not self._stop.is_set():
            now = time.monotonic()
            if now - last_tick > max(self.timeout_s / 2, 5 * self.interval_s):
                # This thread itself did not run (process stopped or starved): nobody is to blame.
                self._last_seen = {r: now for r in self._last_seen}
            last_tick = now
            if not self.is_current():
                self._stop.set()
                self._send(_BYE)
                return
            if now >= next_send:
                self._send(_BEAT)
                next_send = now + self.interval_s
            self._check(now)
            ready, _, _ = select.select([self._sock, self._wake_r], [], [], max(0.0, next_send - now))
            if self._sock in ready:
                self._drain(time.monotonic())

    def _send(self, kind: int) -> None:
        self._seq += 1
        packet = _PACKET.pack(_MAGIC, kind, self.rank, self.nonce, self._seq)
        for peer in self._peers.values():
            try:
                self._sock.sendto(packet, (peer.ip, peer.port))
            except OSError:  # unreachable right now / buffer full: the next beat tries again
                pass

    def _drain(self, now: float) -> None:
        while True:
            try:
                data = self._sock.recv(64)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:  # e.g. ICMP port unreachable reported on a later recv
                continue
            if len(data) != _PACKET.size:
                continue
            magic, kind, rank, nonce, _ = _PACKET.unpack(data)
            peer = self._peers.get(rank)
            if magic != _MAGIC or peer is None or nonce != peer.nonce:
                continue  # a stray datagram (another job, an older incarnation)
            if kind == _BYE:
                self._left.add(rank)
            else:
                self._last_seen[rank] = now

    def _check(self, now: float) -> None:
        silent = [(self._peers[r], now - t) for r, t in sorted(self._last_seen.items())
                  if r not in self._left and now - t > self.timeout_s]
        if silent:
            self.on_silent(silent)
            self._last_seen.update({p.rank: now for p, _ in silent})  # a handler that returns re-arms
            return
        unheard = [r for r in self._peers if r not in self._last_seen and r not in self._left]
        if unheard and not self._warned_unheard and now - self._started_at > self.timeout_s:
            self._warned_unheard = True
            where = ", ".join(f"{r} at {self._peers[r].ip}:{self._peers[r].port}" for r in unheard)
            _say(f"dist-peakd: rank {self.rank}: warning: no heartbeat ever arrived from rank(s) {where} "
                 f"(UDP blocked between the hosts?); a frozen peer there is caught only by "
                 f"DIST_PEAKD_COLLECTIVE_TIMEOUT")

    def _exit_naming(self, silent: list[tuple[Peer, float]]) -> None:
        names = "; ".join(f"{self.describe(p.rank)} sent no heartbeat for {age:.1f} s ({self.explain(p)})"
                          for p, age in silent)
        _say(f"dist-peakd: rank {self.rank}: error: {names}; {TIMEOUT_ENV}={self.timeout_s:g}: exiting with code "
             f"{EXIT_SILENT_PEER} so the launcher ends the job")
        os._exit(EXIT_SILENT_PEER)


def _say(line: str) -> None:
    """One line on stderr without Python's stream locks (the main thread may hold them)."""
    try:
        os.write(2, (line + "\n").encode())
    except OSError:
        pass
