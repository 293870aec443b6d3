"""The frozen-rank watchdog (dist_peakd/engine/watchdog.py) on real processes, without the launcher.

Two ranks are started by hand (RANK/WORLD_SIZE/MASTER_* set, gloo) and each calls ``init_distributed``,
which starts the heartbeat thread. The test then stops processes with SIGSTOP from outside and checks
who notices what: a stopped peer is named and ends its survivor with exit 5; long work on one rank, a
clean early exit, a pause of the whole "machine" (both stopped, then continued) and a destroyed and
re-created process group (Ray reuses processes) end nobody. The launcher path is in
``tests/reliability/test_reliability_frozen_rank.py``.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time

import pytest

from dist_peakd.engine import watchdog

T = 2.0  # heartbeat timeout of the workers (interval 0.2 s)

WORKER = textwrap.dedent("""
    import json, os, sys, time
    import torch.distributed as dist
    from dist_peakd.engine import distributed as d

    T = float(os.environ["DIST_PEAKD_HEARTBEAT_TIMEOUT"])

    def say(event, **kw):
        print(json.dumps({"event": event, "rank": info.rank, "pid": os.getpid(), **kw}), flush=True)

    scenario = sys.argv[1]
    info = d.init_distributed()
    say("ready", port=d._WATCHDOG.port if d._WATCHDOG else None)
    if scenario == "hold":          # rank 0 sleeps, rank 1 waits for it in a barrier
        if info.rank == 0:
            time.sleep(float(os.environ["HOLD_S"]))
        d.barrier()
    elif scenario == "long_work":   # rank 0 computes alone for 4 timeouts (pure Python + sleep)
        if info.rank == 0:
            start = time.monotonic()
            while time.monotonic() - start < 3 * T:
                sum(i * i for i in range(20000))
            time.sleep(T)
        d.barrier()
    elif scenario == "early_exit":  # rank 0 leaves at once; rank 1 outlives it by 3 timeouts
        if info.rank == 1:
            time.sleep(3 * T)
    elif scenario == "regroup":     # destroy the group, wait, build a new one (what Ray Train reuse does)
        old = d._WATCHDOG
        d.barrier()
        dist.destroy_process_group()
        time.sleep(2 * T)
        assert not old.running, "the watchdog of a destroyed group stopped"
        os.environ["MASTER_PORT"] = os.environ["SECOND_PORT"]
        d.init_distributed()
        assert d._WATCHDOG is not old and d._WATCHDOG.running
        time.sleep(2 * T)
        d.barrier()
        say("regrouped", port=d._WATCHDOG.port)
    say("done")
""")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Rank:
    def __init__(self, proc: subprocess.Popen) -> None:
        self.proc, self.lines, self.events = proc, [], []
        self.thread = threading.Thread(target=self._pump, daemon=True)
        self.thread.start()

    def _pump(self) -> None:
        for line in self.proc.stdout:
            self.lines.append((time.monotonic(), line.rstrip("\n")))
            if line.startswith("{"):
                self.events.append(json.loads(line))

    @property
    def text(self) -> str:
        return "\n".join(x for _, x in self.lines)

    def wait_event(self, name: str, timeout: float = 120) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for e in self.events:
                if e["event"] == name:
                    return e
            if self.proc.poll() is not None and not self.thread.is_alive():
                break
            time.sleep(0.05)
        raise AssertionError(f"no {name!r} event:\n{self.text}")


@pytest.fixture()
def start_ranks(tmp_path):
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    started: list[Rank] = []

    def start(scenario: str, master_addr: str = "127.0.0.1", prefixes: tuple[list[str], ...] = ([], []),
              rank_env: tuple[dict[str, str], ...] = ({}, {}), **extra: str) -> list[Rank]:
        port, second_port = _free_port(), _free_port()
        for rank in range(2):
            env = dict(os.environ, RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2", MASTER_ADDR=master_addr,
                       MASTER_PORT=str(port), SECOND_PORT=str(second_port), DS_ACCELERATOR="cpu",
                       OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1", DIST_PEAKD_HEARTBEAT_TIMEOUT=str(T),
                       DIST_PEAKD_COLLECTIVE_TIMEOUT="300", **extra, **rank_env[rank])
            proc = subprocess.Popen([*prefixes[rank], sys.executable, str(script), scenario], env=env,
                                    stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            started.append(Rank(proc))
        return started[-2:]

    yield start
    for r in started:  # never leave a stopped worker behind
        if r.proc.poll() is None:
            r.proc.send_signal(signal.SIGKILL)
            r.proc.wait()


def _finish(ranks: list[Rank], timeout: float = 120) -> list[int]:
    codes = [r.proc.wait(timeout=timeout) for r in ranks]
    for r in ranks:
        r.thread.join(5)
    return codes


@pytest.mark.parametrize("frozen", [0, 1])
def test_stopped_peer_is_named_and_ends_the_survivor_with_exit_5(start_ranks, frozen):
    """Rank 0 (which also serves the c10d store) or rank 1 is stopped while the other one sleeps or waits
    in a barrier: the survivor names it (rank, host, pid) and exits 5 within timeout + 2 periods."""
    ranks = start_ranks("hold", HOLD_S="60")
    ready = [r.wait_event("ready") for r in ranks]
    assert all(e["port"] for e in ready)
    time.sleep(3 * watchdog.interval_for(T))  # a few heartbeats: both peers are armed
    survivor = ranks[1 - frozen]
    os.kill(ready[frozen]["pid"], signal.SIGSTOP)
    stopped_at = time.monotonic()
    code = survivor.proc.wait(timeout=60)
    survivor.thread.join(5)
    elapsed = time.monotonic() - stopped_at
    assert code == watchdog.EXIT_SILENT_PEER, survivor.text
    [line] = [x for _, x in survivor.lines if "sent no heartbeat" in x]
    assert line.startswith(f"dist-peakd: rank {1 - frozen}: error: rank {frozen} (host {socket.gethostname()}, "
                           f"pid {ready[frozen]['pid']}) sent no heartbeat for "), line
    assert "(its process is stopped: SIGSTOP or a debugger); DIST_PEAKD_HEARTBEAT_TIMEOUT=2: exiting with code 5" in line
    # silence counts from the peer's last heartbeat, up to one period before the SIGSTOP
    assert T - watchdog.interval_for(T) <= elapsed < T + 10, elapsed  # the slack is for a loaded 2-core machine
    assert ranks[frozen].proc.poll() is None  # the stopped one is the launcher's to kill


@pytest.mark.slow  # real processes and timeouts: the full suite (CI), not the fast tier
def test_stopped_peer_is_found_across_network_namespaces(start_ranks):
    """Each rank in its own network namespace (veth link, no shared loopback), as on two hosts: the
    heartbeats go to the address on the route to MASTER_ADDR, and a stopped rank 0 is still named."""
    from test_multinode import _drop_netns, _make_netns

    netns = _make_netns()
    if isinstance(netns, str):
        pytest.skip(netns)
    names, addrs = netns
    try:
        ranks = start_ranks("hold", master_addr=addrs[0], prefixes=tuple(["ip", "netns", "exec", n] for n in names),
                            rank_env=tuple({"GLOO_SOCKET_IFNAME": n} for n in names), HOLD_S="60")
        ready = [r.wait_event("ready") for r in ranks]
        time.sleep(3 * watchdog.interval_for(T))
        os.kill(ready[0]["pid"], signal.SIGSTOP)
        assert ranks[1].proc.wait(timeout=60) == watchdog.EXIT_SILENT_PEER, ranks[1].text
        ranks[1].thread.join(5)
        assert f"rank 0 (host {socket.gethostname()}, pid {ready[0]['pid']}) sent no heartbeat" in ranks[1].text
        assert "never arrived" not in ranks[0].text + ranks[1].text
    finally:
        _drop_netns(names)


@pytest.mark.slow  # real processes and timeouts: the full suite (CI), not the fast tier
def test_long_single_rank_work_and_an_early_clean_exit_end_nobody(start_ranks):
    """Rank 0 computes alone for 4 timeouts while rank 1 waits in a barrier; then (second pair) rank 0
    exits at once (saying goodbye) while rank 1 carries on for 3 timeouts: both runs end 0, no alarm."""
    long_work = start_ranks("long_work")
    early = start_ranks("early_exit")
    for pair in (long_work, early):
        assert _finish(pair) == [0, 0], "\n---\n".join(r.text for r in pair)
        assert not any("heartbeat" in r.text for r in pair)


@pytest.mark.slow  # real processes and timeouts: the full suite (CI), not the fast tier
def test_a_pause_of_every_rank_is_forgiven(start_ranks):
    """Both ranks stopped for 3 timeouts (a paused VM, a suspended job), then continued: each sees that
    its own thread did not run and blames nobody; the job finishes."""
    ranks = start_ranks("hold", HOLD_S=str(6 * T))
    pids = [r.wait_event("ready")["pid"] for r in ranks]
    time.sleep(3 * watchdog.interval_for(T))
    for pid in pids:
        os.kill(pid, signal.SIGSTOP)
    time.sleep(3 * T)
    for pid in pids:
        os.kill(pid, signal.SIGCONT)
    assert _finish(ranks) == [0, 0], "\n---\n".join(r.text for r in ranks)
    assert not any("heartbeat" in r.text for r in ranks)


@pytest.mark.slow  # real processes and timeouts: the full suite (CI), not the fast tier
def test_a_recreated_process_group_gets_a_new_watchdog(start_ranks):
    """destroy_process_group stops the watchdog (goodbye, no alarm during the gap); the next
    init_distributed starts a new one on a new socket."""
    ranks = start_ranks("regroup")
    first = [r.wait_event("ready")["port"] for r in ranks]
    assert _finish(ranks) == [0, 0], "\n---\n".join(r.text for r in ranks)
    second = [r.wait_event("regrouped")["port"] for r in ranks]
    assert all(second) and set(first).isdisjoint(second)
    assert not any("sent no heartbeat" in r.text for r in ranks)


def test_a_peer_never_heard_is_warned_about_not_accused(capfd):
    """UDP dropped between two hosts (a firewall): after the timeout one warning names the peer and its
    address; the watchdog never calls it silent (a healthy job is not killed)."""
    silent_calls = []
    dog = watchdog.Watchdog(0, timeout_s=1.0, on_silent=silent_calls.append, ip="127.0.0.1")
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as nobody:
        nobody.bind(("127.0.0.1", 0))
        dog.start({1: watchdog.Peer(1, "elsewhere", 4242, "127.0.0.1", nobody.getsockname()[1], 7)})
        time.sleep(1.8)
        dog.stop()
    err = capfd.readouterr().err
    assert silent_calls == []
    assert err.count("no heartbeat ever arrived from rank(s) 1 at 127.0.0.1:") == 1, err
    assert dog.silence() == {}


def test_stray_and_forged_datagrams_are_ignored():
    """Only datagrams with the peer's rank and nonce count; a goodbye ends the watch of that peer."""
    calls = []
    dog = watchdog.Watchdog(0, timeout_s=1.0, on_silent=calls.append, ip="127.0.0.1")
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as peer:
        peer.bind(("127.0.0.1", 0))
        dog.start({1: watchdog.Peer(1, "h", 1, "127.0.0.1", peer.getsockname()[1], nonce=99)})
        send = lambda kind, nonce: peer.sendto(watchdog._PACKET.pack(watchdog._MAGIC, kind, 1, nonce, 1),  # noqa: E731
                                               ("127.0.0.1", dog.port))
        send(watchdog._BEAT, 98)   # wrong nonce: not a heartbeat of rank 1
        peer.sendto(b"garbage", ("127.0.0.1", dog.port))
        time.sleep(0.3)
        assert dog.silence() == {}
        send(watchdog._BEAT, 99)   # armed
        time.sleep(1.6)
        [(peer_info, age)] = calls[0]
        assert peer_info.rank == 1 and 1.0 < age < 3.0
        send(watchdog._BYE, 99)    # it leaves on purpose: no more alarms
        time.sleep(0.3)
        calls.clear()
        time.sleep(1.6)
        assert calls == [] and dog.silence() == {}
        dog.stop()


@pytest.mark.parametrize("value", ["abc", "-1", "0.5", "inf", "nan"])
def test_a_malformed_timeout_is_refused_naming_the_variable(monkeypatch, value):
    from dist_peakd.engine import ConfigError

    monkeypatch.setenv(watchdog.TIMEOUT_ENV, value)
    with pytest.raises(ConfigError, match=rf"DIST_PEAKD_HEARTBEAT_TIMEOUT='{value}': expected seconds >= 1"):
        watchdog.timeout_from_env()


def test_timeout_values_and_periods(monkeypatch):
    monkeypatch.delenv(watchdog.TIMEOUT_ENV, raising=False)
    assert watchdog.timeout_from_env() == 60.0
    monkeypatch.setenv(watchdog.TIMEOUT_ENV, "0")
    assert watchdog.timeout_from_env() == 0.0  # off
    assert [watchdog.interval_for(t) for t in (1, 10, 60, 600)] == [0.1, 1.0, 2.0, 2.0]


@pytest.mark.slow  # real processes and timeouts: the full suite (CI), not the fast tier
def test_groups_created_later_get_the_collective_timeout(tmp_path):
    """torch's new_group (how DeepSpeed makes its data-parallel group) uses c10d's 30 min default unless
    init_distributed replaced it; the group DeepSpeed's engine reduces gradients over gets it too."""
    code = textwrap.dedent("""
        import torch, torch.distributed as dist
        from dist_peakd.engine import distributed as d
        from deepspeed.utils import groups
        d.init_distributed(timeout_s=123)
        timeout = lambda g: g._get_backend(torch.device("cpu")).options._timeout.total_seconds()
        print(timeout(dist.group.WORLD), timeout(dist.new_group([0])), timeout(groups._get_data_parallel_group()),
              d._WATCHDOG)
    """)
    env = dict(os.environ, DS_ACCELERATOR="cpu", OMP_NUM_THREADS="1")
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(k, None)
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["123.0", "123.0", "123.0", "None"]  # one process: no watchdog


def test_a_failed_collective_names_a_stopped_or_exited_local_peer(monkeypatch):
    """With the watchdog off (or its UDP dropped), the collective timeout's message still says which
    local peer is stopped and which one has exited."""
    import psutil

    from dist_peakd.engine import distributed as d

    stopped = subprocess.Popen(["sleep", "60"])
    exited = subprocess.Popen(["true"])
    exited.wait()
    try:
        os.kill(stopped.pid, signal.SIGSTOP)
        time.sleep(0.2)
        host = socket.gethostname()
        monkeypatch.setattr(d, "_PEERS", {0: (host, os.getpid(), 0.0),
                                          1: (host, stopped.pid, psutil.Process(stopped.pid).create_time()),
                                          2: (host, exited.pid, 0.0), 3: ("elsewhere", 1, 0.0)})
        monkeypatch.setattr(d, "_WATCHDOG", None)
        assert d.describe_lost_peers() == (f"rank(s) 2 (pid {exited.pid}) on this host are no longer running; "
                                           f"rank 1 (pid {stopped.pid}): its process is stopped: SIGSTOP or a "
                                           "debugger; rank(s) [3] on other hosts could not be checked")
        assert d.peer_state(3) == f"on another host: stopped, frozen or cut off from {host}"
    finally:
        stopped.kill()
        stopped.wait()
