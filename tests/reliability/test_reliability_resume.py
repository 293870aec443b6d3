"""Issue 14 items 3, 4, 7 and 10 on tiny real runs: stage reuse follows the stage's inputs, nothing in an
output folder runs code on resume, a full disk during the cache pass is exit 6 with the old cache intact,
a resume leaves one train_log row and one TensorBoard point per step."""

from __future__ import annotations

import errno
import json
import pickle
import shutil
from pathlib import Path

import pytest
import reliab_helpers
from fault_plugin import plugin_env
from reliab_helpers import args_of, cli, copy_run, run_process, tree_bytes

from dist_peakd.engine.checkpoints import COMPLETE_FILE
from dist_peakd.integrity import file_manifest

pytestmark = pytest.mark.slow
teacher_run = reliab_helpers.teacher_run  # the shared module fixture


# ------------------------------------------------------------------------------------ item 3
def test_a_retrained_teacher_invalidates_the_distilled_student(teacher_run, tmp_path, capsys):
    out, opts = copy_run(teacher_run, tmp_path)
    student = dict(opts, k=2, use_ptp=False)
    code, err = cli("distill", student, capsys)
    assert code == 0, err
    from dist_peakd import cli as cli_mod

    cli_mod.main(["distill", *args_of(student)])  # the same run again: reused, not retrained
    assert "finished earlier with the same options and inputs: reused" in capsys.readouterr().out
    stage = next((out / "mrpc").glob("distill-*"))
    inputs_before = json.loads((stage / "inputs.json").read_text())
    # the teacher is retrained (another seed) and its cache rebuilt: the student was made from the old one
    shutil.rmtree(out / "mrpc" / "teacher")
    assert cli("finetune-teacher", dict(opts, seed=11), capsys)[0] == 0
    assert cli("cache-teacher", dict(opts, seed=11, rebuild=True), capsys)[0] == 0
    summary_before = (stage / "summary.json").read_bytes()
    code, err = cli("distill", student, capsys)
    assert code == 2, err
    line = err.strip().splitlines()[-1]
    assert f"{stage} was made from other inputs: teacher_cache" in line and "--force" in line, err
    assert (stage / "summary.json").read_bytes() == summary_before  # refused: nothing touched
    code, err = cli("distill", dict(student, force=True), capsys)
    assert code == 0, err
    inputs = json.loads((stage / "inputs.json").read_text())
    assert inputs["teacher_cache"] != inputs_before["teacher_cache"]
    assert {k: v for k, v in inputs.items() if k != "teacher_cache"} == \
        {k: v for k, v in inputs_before.items() if k != "teacher_cache"}
    assert (stage / "summary.json").read_bytes() != summary_before  # retrained against the new teacher


# ------------------------------------------------------------------------------------ item 4
class _Planted:
    """Unpickling this touches a marker file: proof that code from the folder ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


@pytest.mark.parametrize("victim", ["rng_rank0.pt", "mp_rank_00_model_states.pt"])
def test_a_planted_pickle_in_a_checkpoint_never_runs(teacher_run, tmp_path, capsys, victim):
    """An attacker who can write the output folder plants a pickle and rewrites COMPLETE to match it:
    the resume refuses the file (exit 4, naming it) and the planted code does not run."""
    import torch

    out, opts = copy_run(teacher_run, tmp_path)
    shutil.rmtree(out / "mrpc" / "teacher")
    run = dict(opts, epochs=2, save_every_steps=2, stop_after_steps=2)
    code, err = cli("finetune-teacher", run, capsys)
    assert code == 75, err
    root = out / "mrpc" / "teacher" / "checkpoints"
    tag = root / (root / "latest").read_text().strip()
    marker = tmp_path / "planted-code-ran"
    with open(tag / victim, "wb") as f:
        torch.save({"payload": _Planted(marker)}, f, pickle_protocol=pickle.HIGHEST_PROTOCOL)
    record = json.loads((tag / COMPLETE_FILE).read_text())
    (tag / COMPLETE_FILE).unlink()
    record["files"] = file_manifest(tag)
    (tag / COMPLETE_FILE).write_text(json.dumps(record))
    code, err = cli("finetune-teacher", dict(run, stop_after_steps=None), capsys)
    assert code == 4, err
    assert str(tag / victim) in err and "could run code" in err and "Traceback" not in err
    assert not marker.exists(), "code planted in the checkpoint folder ran"


# ------------------------------------------------------------------------------------ item 7
def test_disk_full_during_a_cache_rebuild_is_exit_6_and_the_old_cache_stays(teacher_run, tmp_path, capsys,
                                                                            monkeypatch):
    from dist_peakd.cache import writer

    out, opts = copy_run(teacher_run, tmp_path)
    cache = out / "mrpc" / "teacher_cache"
    before = tree_bytes(cache)

    def full(fd, offset, length):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(writer.os, "posix_fallocate", full)
    code, err = cli("cache-teacher", dict(opts, rebuild=True), capsys)
    assert code == 6, err
    line = err.strip().splitlines()[-1]
    assert "no space left on device" in line and "shard-00000-of-00001" in line and "Traceback" not in err
    assert tree_bytes(cache) == before
    assert not [p for p in cache.parent.rglob(".tmp-*")]


# ------------------------------------------------------------------------------------ item 10
def test_a_resume_after_a_kill_leaves_one_log_row_and_one_event_per_step(teacher_run, tmp_path):
    """Killed after step 3 with a checkpoint at step 2: the rerun resumes from 2; train_log.jsonl and the
    TensorBoard train/loss series then hold steps 1..6 once each."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out, opts = copy_run(teacher_run, tmp_path)
    shutil.rmtree(out / "mrpc" / "teacher")
    run = dict(opts, epochs=2, save_every_steps=2)
    killed = run_process(["finetune-teacher", *args_of(run)], env=plugin_env("sigkill:rank=0:step=3"))
    assert killed.returncode == -9, killed.stdout
    stage = out / "mrpc" / "teacher"
    assert [json.loads(x)["step"] for x in (stage / "train_log.jsonl").read_text().splitlines()] == [1, 2, 3]
    resumed = run_process(["finetune-teacher", *args_of(run)])
    assert resumed.returncode == 0, resumed.stdout
    steps = [json.loads(x)["step"] for x in (stage / "train_log.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4, 5, 6]
    acc = EventAccumulator(str(stage))  # the events live in the stage folder itself
    acc.Reload()
    assert [e.step for e in acc.Scalars("train/lr")] == [1, 2, 3, 4, 5, 6]
