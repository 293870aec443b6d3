"""Ray settings of a sweep: a local instance runs without auth and leaves the user's env alone; joining a
cluster (``ray start --head`` on 127.0.0.1, in a process group of its own) uses the user's Ray settings.

Each driver runs in a fresh Python (``init_ray`` does nothing when Ray is already up in this process) with
an environment the test controls: ``RAY_AUTH_MODE`` removed unless a case sets it.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
RAY = Path(sys.executable).with_name("ray")

DRIVER = r"""
import json, os, sys
from dist_peakd.sweep.cluster import LOCAL_INSTANCE_ENV, init_ray, shutdown_ray
watched = [*LOCAL_INSTANCE_ENV, "RAY_AUTH_TOKEN"]
before = {k: os.environ.get(k) for k in watched}
address = None if sys.argv[1] == "local" else sys.argv[1]
started = init_ray(address, num_cpus=1)
after = {k: os.environ.get(k) for k in watched}
import ray

@ray.remote(num_cpus=1)
def worker_env():
    return {"auth": os.environ.get("RAY_AUTH_MODE"), "glue": os.environ.get("DIST_PEAKD_GLUE_DIR"),
            "nice": os.nice(0)}

print("RESULT " + json.dumps({"started": started, "before": before, "after": after,
                              "worker": ray.get(worker_env.remote()), "driver_nice": os.nice(0)}), flush=True)
shutdown_ray(started)
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env(**extra: str) -> dict[str, str]:
    """This process's env without RAY_AUTH_MODE / RAY_ADDRESS, Ray bound to 127.0.0.1, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_AUTH_MODE", "RAY_ADDRESS", "RAY_AUTH_TOKEN")}
    env.update(RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0", PYTHONPATH=str(REPO), **extra)
    return env


def _drive(address: str, env: dict[str, str]) -> dict:
    proc = subprocess.run([sys.executable, "-c", DRIVER, address], env=env, cwd=REPO, capture_output=True,
                          text=True, timeout=240)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, proc.stdout[-2000:] + proc.stderr[-4000:]
    return json.loads(lines[-1].removeprefix("RESULT "))


@pytest.fixture
def ray_tmp() -> Iterator[Path]:
    """A short private folder (Ray's socket paths must stay under ~100 characters)."""
    with tempfile.TemporaryDirectory(prefix="h17ray-", dir="/tmp") as d:
        yield Path(d)


def _start_head(tmp: Path, **auth: str) -> tuple[subprocess.Popen, int]:
    """``ray start --head --block`` on 127.0.0.1 in its own session (Ray's files under ``tmp``)."""
    port = _free_port()
    env = _env(RAY_TMPDIR=str(tmp), HOME=str(tmp), **auth)
    cmd = [str(RAY), "start", "--head", "--block", "--port", str(port), "--node-ip-address", "127.0.0.1",
           "--ray-client-server-port", str(_free_port()), "--num-cpus", "1", "--include-dashboard", "false",
           "--disable-usage-stats"]
    log = open(tmp / "head.log", "w")
    proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.time() + 120
    while time.time() < deadline:
        if "--block" in (tmp / "head.log").read_text():
            return proc, port
        if proc.poll() is not None:
            break
        time.sleep(1)
    _stop_head(proc)
    pytest.fail(f"ray start --head did not come up: {(tmp / 'head.log').read_text()[-3000:]}")


def _stop_head(proc: subprocess.Popen) -> None:
    """End the head's process group (only the processes this test started)."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait(timeout=30)


@pytest.mark.slow
def test_local_instance_runs_without_auth_and_restores_the_env(ray_tmp):
    out = _drive("local", _env(HOME=str(ray_tmp), RAY_TMPDIR=str(ray_tmp)))
    assert out["started"] is True
    assert out["before"]["RAY_AUTH_MODE"] is None and out["after"] == out["before"]  # env as it was
    assert out["worker"]["auth"] == "disabled"          # the instance itself ran without auth
    assert out["worker"]["nice"] == out["driver_nice"]  # RAY_worker_niceness=0 reached its raylet
    assert not (ray_tmp / ".ray" / "auth_token").exists()  # no token written for a private instance


@pytest.mark.slow
def test_local_instance_keeps_the_users_explicit_setting(ray_tmp):
    """A user's RAY_AUTH_MODE wins even for a local instance (here: token, so Ray writes a token)."""
    out = _drive("local", _env(HOME=str(ray_tmp), RAY_TMPDIR=str(ray_tmp), RAY_AUTH_MODE="token"))
    assert out["before"]["RAY_AUTH_MODE"] == out["after"]["RAY_AUTH_MODE"] == "token"
    assert out["worker"]["auth"] == "token" and (ray_tmp / ".ray" / "auth_token").is_file()


@pytest.mark.slow
def test_joining_a_head_uses_the_env_as_it_is(ray_tmp):
    """Head without auth (set by this test's env); the driver has no RAY_AUTH_MODE and init_ray sets none."""
    head, port = _start_head(ray_tmp, RAY_AUTH_MODE="disabled")
    try:
        out = _drive(f"127.0.0.1:{port}", _env(HOME=str(ray_tmp), DIST_PEAKD_GLUE_DIR="/glue/for/trials"))
    finally:
        _stop_head(head)
    assert out["started"] is True
    assert out["before"]["RAY_AUTH_MODE"] is None and out["after"] == out["before"]
    assert out["worker"]["glue"] == "/glue/for/trials"  # FORWARDED_VARS reach the cluster's workers


@pytest.mark.slow
def test_joining_a_token_authenticated_head(ray_tmp):
    """A head with token auth, found by ``address="auto"``: with RAY_AUTH_MODE unset Ray enables token auth
    from the user's token (forcing RAY_AUTH_MODE=disabled, as init_ray once did, fails to connect)."""
    token = uuid.uuid4().hex
    head, _ = _start_head(ray_tmp, RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=token)
    try:
        out = _drive("auto", _env(RAY_TMPDIR=str(ray_tmp), HOME=str(ray_tmp), RAY_AUTH_TOKEN=token))
    finally:
        _stop_head(head)
    assert out["before"]["RAY_AUTH_MODE"] is None
    assert out["after"]["RAY_AUTH_MODE"] == "token"  # Ray's own choice, from the user's token
    assert out["after"]["RAY_AUTH_TOKEN"] == token and out["worker"]["auth"] == "token"
