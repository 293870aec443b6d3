"""A frozen rank through the real ``deepspeed --num_gpus 2`` launcher (2 CPU ranks, gloo): SIGSTOP of a
random rank (0 hosts the rendezvous store, 1 does not) at a random step ends the job within the
documented bound, naming the stopped rank, with nothing left running; rerunning the same command
resumes to the uninterrupted result. One trial per suite run (the launches cost ~80 s each); both ranks
at every step are the unit tests' (``test_watchdog.py``) and ``bench/frozen_rank.py``'s (10 trials).

The collective timeout is left at 600 s, so it is the heartbeat watchdog (10 s here) that ends the
job. The harness is ``bench/frozen_rank.py`` (the same code runs >= 10 trials there); the process is
stopped from outside (no fault-injection hook). The seed of the random steps is printed on failure;
``DIST_PEAKD_TEST_SEED`` replays one.
"""

from __future__ import annotations

import importlib.util
import os
import random
import sys
import time
from pathlib import Path

import pytest

pytestmark = [pytest.mark.launcher, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location("bench_frozen_rank", REPO / "bench" / "frozen_rank.py")
frozen = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = frozen
_spec.loader.exec_module(frozen)

SEED = int(os.environ.get("DIST_PEAKD_TEST_SEED", time.time_ns() % 10_000))


@pytest.fixture(scope="module")
def reference(tmp_path_factory, tiny_bert_nodropout, glue_dir):
    out = tmp_path_factory.mktemp("frozen_ref") / "run"
    run = frozen.launch(out, tiny_bert_nodropout, glue_dir)
    assert run.rc == 0, run.tail()
    summary = frozen.summary(out)
    assert summary["total_steps"] == frozen.TOTAL_STEPS
    return summary


def test_sigstop_of_a_rank_ends_the_job_within_the_bound_and_the_rerun_resumes(tmp_path, tiny_bert_nodropout,
                                                                                glue_dir, reference):
    rng = random.Random(SEED)
    rank, step = rng.randint(0, 1), rng.randint(1, frozen.TOTAL_STEPS - 2)
    where = f"(rank {rank}, step {step}, DIST_PEAKD_TEST_SEED={SEED})"
    out = tmp_path / "run"
    run = frozen.launch(out, tiny_bert_nodropout, glue_dir, freeze=(rank, step))
    assert run.stopped_at is not None, f"the job ended before step {step} {where}:\n{run.tail()}"
    assert run.rc == 5, f"{where}\n{run.tail()}"
    elapsed = run.ended - run.stopped_at
    assert elapsed < frozen.BOUND_S, f"{elapsed:.1f} s from SIGSTOP to exit {where}"
    line = run.watchdog_line()
    assert f"dist-peakd: rank {1 - rank}: error: rank {rank} (host " in line, f"{where}\n{run.tail()}"
    assert f"pid {run.stopped_pid}) sent no heartbeat for " in line
    assert "(its process is stopped: SIGSTOP or a debugger)" in line
    assert run.left_running == [], f"processes left running after the job ended {where}"
    assert not (frozen.stage_dir(out) / "summary.json").exists()

    rerun = frozen.launch(out, tiny_bert_nodropout, glue_dir)
    assert rerun.rc == 0, f"{where}\n{rerun.tail()}"
    if run.stopped_step >= 5:  # checkpoints every 4 steps: step 4 was complete, the rerun resumed
        assert "[dist-peakd] resumed from " in rerun.text
    resumed = frozen.summary(out)
    assert resumed["final"] == reference["final"]
    assert resumed["best"] == reference["best"]
    assert resumed["history"] == reference["history"]
