"""Reliability rows 1-2 through the real ``deepspeed`` launcher (2 CPU ranks, gloo):

* a rank that dies (SIGKILL mid-epoch) ends the job non-zero within a bounded time, naming the dead
  rank, and rerunning the same command resumes from the last complete checkpoint to the same result;
* SIGTERM (to one rank, or to the launcher) writes a checkpoint on every rank before exiting with
  'preempted, checkpoint at ...'; the rerun resumes from it to the same result as an uninterrupted run.

Faults are injected deterministically by the test-only trainer plugin ``tests/fault_plugin.py``
(``DIST_PEAKD_PLUGINS=fault_plugin`` + ``DIST_PEAKD_FAULT_INJECT``).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from fault_plugin import plugin_env

from dist_peakd.engine.checkpoints import select_checkpoint

pytestmark = [pytest.mark.launcher, pytest.mark.slow]

#: A dead rank must end the job within this many seconds (launcher poll 1 s + its 30 s SIGTERM grace;
#: the collective timeout below is the backstop), plus slack for a loaded 2-core CI machine.
DEAD_RANK_BOUND_S = 45
COLLECTIVE_TIMEOUT_S = 20


class Run:
    def __init__(self, rc: int, lines: list[tuple[float, str]], started: float, ended: float) -> None:
        self.rc, self.lines, self.started, self.ended = rc, lines, started, ended

    @property
    def text(self) -> str:
        return "\n".join(line for _, line in self.lines)

    def time_of(self, needle: str) -> float | None:
        return next((t for t, line in self.lines if needle in line), None)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch(out: Path, backbone: Path, glue_dir: Path, fault: str | None = None, timeout: float = 300) -> Run:
    deepspeed = shutil.which("deepspeed", path=str(Path(sys.executable).parent)) or "deepspeed"
    env = dict(os.environ, DS_ACCELERATOR="cpu", OMP_NUM_THREADS="1", HF_DATASETS_OFFLINE="1",
               HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false",
               DIST_PEAKD_COLLECTIVE_TIMEOUT=str(COLLECTIVE_TIMEOUT_S), PYTHONUNBUFFERED="1")
    env.pop("DIST_PEAKD_FAULT_INJECT", None)
    if fault:
        env.update(plugin_env(fault))
    cmd = [deepspeed, "--num_gpus", "2", "--master_port", str(_free_port()), "--module", "dist_peakd.cli",
           "finetune-teacher", "--task", "mrpc", "--output_dir", str(out), "--glue_dir", str(glue_dir),
           "--backbone", str(backbone), "--max_length", "40", "--max_train_examples", "48",
           "--max_eval_examples", "24", "--batch_size", "8", "--epochs", "2", "--log_every_steps", "1",
           "--lr", "1e-3", "--eval_batch_size", "16", "--seed", "5", "--save_every_steps", "4",
           "--cache_dir", str(out.parent / "tok")]
    started = time.monotonic()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    lines: list[tuple[float, str]] = []

    def pump() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append((time.monotonic(), line.rstrip("\n")))

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    try:
        rc = proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, 9)
        proc.wait()
        reader.join(5)
        pytest.fail(f"launcher hung for {timeout} s:\n" + "\n".join(x for _, x in lines[-60:]))
    ended = time.monotonic()
    reader.join(10)
    return Run(rc, lines, started, ended)


def _stage(out: Path) -> Path:
    return out / "mrpc" / "teacher"


def _summary(out: Path) -> dict:
    return json.loads((_stage(out) / "summary.json").read_text())


def _tail(run: Run, n: int = 80) -> str:
    return "\n".join(line for _, line in run.lines[-n:])


@pytest.fixture(scope="module")
def reference(tmp_path_factory, tiny_bert_nodropout, glue_dir):
    """The same 2-rank run, uninterrupted (12 steps: 48 examples / batch 8 x 2 epochs)."""
    out = tmp_path_factory.mktemp("reliability_ref") / "run"
    run = _launch(out, tiny_bert_nodropout, glue_dir)
    assert run.rc == 0, _tail(run)
    summary = _summary(out)
    assert summary["total_steps"] == 12
    return summary


def test_preemption_and_dead_rank_then_rerun_resumes_to_same_result(tmp_path, tiny_bert_nodropout, glue_dir,
                                                                     reference):
    """One output folder through four launches (the launches dominate the runtime, so the faults share them):

    1. SIGTERM reaches rank 1 only -> both ranks checkpoint (all-reduce MAX of the flag), exit 143;
    2. rerun resumes from it; SIGTERM to the launcher (launch.py) -> the ranks checkpoint, exit non-zero;
    3. rerun resumes; rank 1 is SIGKILLed mid-epoch (after step 9) -> the job ends non-zero within
       DEAD_RANK_BOUND_S, naming rank 1; the last complete checkpoint (step 8) is intact;
    4. rerun resumes from step 8 and ends with exactly the uninterrupted run's metrics.
    """
    out = tmp_path / "run"
    ckpts = _stage(out) / "checkpoints"
    # 1. preemption signal on one rank only
    first = _launch(out, tiny_bert_nodropout, glue_dir, fault="sigterm:rank=1:step=3")
    assert first.rc == 143, _tail(first)
    assert f"preempted (SIGTERM), checkpoint at {ckpts / 'step-00000003'}" in first.text, _tail(first)
    assert select_checkpoint(ckpts) == ("step-00000003", [])
    complete = json.loads((ckpts / "step-00000003" / "COMPLETE").read_text())
    assert {"rng_rank0.pt", "rng_rank1.pt"} <= set(complete["files"])  # both ranks took part

    # 2. preemption signal to the launcher: deepspeed's launch.py SIGTERMs the ranks
    second = _launch(out, tiny_bert_nodropout, glue_dir, fault="sigterm-parent:rank=0:step=7")
    assert second.rc != 0, _tail(second)
    assert "step-00000003 at step 3" in second.text
    assert f"preempted (SIGTERM), checkpoint at {ckpts / 'step-00000007'}" in second.text, _tail(second)
    assert select_checkpoint(ckpts) == ("step-00000007", [])

    # 3. a rank dies mid-epoch (epoch 2 is steps 7-12; checkpoints every 4 steps)
    killed = _launch(out, tiny_bert_nodropout, glue_dir, fault="sigkill:rank=1:step=9")
    assert killed.rc != 0, _tail(killed)
    assert "step-00000007 at step 7" in killed.text
    t_kill = killed.time_of("fault injection: sigkill on rank 1 after step 9")
    assert t_kill is not None, _tail(killed)
    assert killed.ended - t_kill < DEAD_RANK_BOUND_S, f"took {killed.ended - t_kill:.1f} s after the kill"
    assert "rank(s) 1 (pid" in killed.text and "no longer running" in killed.text, _tail(killed)
    assert select_checkpoint(ckpts) == ("step-00000008", [])
    assert not (_stage(out) / "summary.json").exists()

    # 4. the rerun finishes with the uninterrupted run's result
    last = _launch(out, tiny_bert_nodropout, glue_dir)
    assert last.rc == 0, _tail(last)
    assert "step-00000008 at step 8" in last.text
    resumed = _summary(out)
    assert resumed["final"] == reference["final"]
    assert resumed["history"] == reference["history"]
    assert resumed["best"] == reference["best"]
    assert not ckpts.exists()  # a completed stage removes its checkpoints (keep_checkpoints_after_success=False)
