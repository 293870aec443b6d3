"""Issue 14 items 5, 7, 8, 12 and the dead-peer checkpoint save: one typing path for config files, disk
full named as such, one job per stage folder, every user mistake a one-line refusal that leaves nothing
behind, a peer lost during a checkpoint save is exit 5."""

from __future__ import annotations

import errno
import json
import time
from pathlib import Path

import numpy as np
import pytest
from reliab_helpers import cli, slice_opts

from dist_peakd.config import build_options
from dist_peakd.errors import ArtifactWriteError, ConfigError
from dist_peakd.stages.distill import DistillOptions


# ------------------------------------------------------------------------------------ item 5: config files
def test_config_file_values_are_typed_like_the_command_line(tmp_path):
    as_json = tmp_path / "a.json"
    as_json.write_text(json.dumps({"use_ptp": "false", "k": "2", "lr": "1e-5"}))
    opts = build_options(DistillOptions, str(as_json))
    assert opts.use_ptp is False and opts.k == 2 and opts.lr == 1e-5
    as_yaml = tmp_path / "b.yaml"
    as_yaml.write_text('batch_size: "8"\nseed: "1"\nweight_decay: 1.0E-2\nuse_ptp: no\n')
    opts = build_options(DistillOptions, str(as_yaml))
    assert (opts.batch_size, opts.seed, opts.weight_decay, opts.use_ptp) == (8, 1, 0.01, False)
    assert type(opts.batch_size) is int and type(opts.weight_decay) is float


@pytest.mark.parametrize("text, expected", [
    ("epochs: null\n", "option epochs: expected a number, got null"),
    ("k: 2.5\n", "option k:"),
    ("batch_size: [8\n", "not valid YAML at line 2"),
    ("batch_size: 8\nbatch_size: 16\n", "batch_size"),
    ("use_ptp: maybe\n", "option use_ptp: expected true or false"),
    ("weight_decay: -0.1\n", "option weight_decay: must be >= 0"),
    ("- 1\n- 2\n", "config file"),
])
def test_a_bad_config_file_is_refused_naming_file_and_option(tmp_path, capsys, text, expected, tiny_bert, glue_dir):
    config = tmp_path / "bad.yaml"
    config.write_text(text)
    out = tmp_path / "run"
    code, err = cli("distill", {"config": str(config), "output_dir": str(out), "glue_dir": str(glue_dir),
                                "backbone": str(tiny_bert)}, capsys)
    assert code == 2, err
    line = err.strip().splitlines()[-1]
    assert f"config file {config}" in line and expected in line, err
    assert "Traceback" not in err and not out.exists()


# ------------------------------------------------------------------------------------ item 12: user mistakes
def _refused(capsys, stage: str, opts: dict, expected: str, env: dict | None = None, monkeypatch=None) -> str:
    for k, v in (env or {}).items():
        monkeypatch.setenv(k, v)
    code, err = cli(stage, opts, capsys)
    assert code == 2, err
    assert expected in err.strip().splitlines()[-1], err
    assert "Traceback" not in err
    assert not Path(opts["output_dir"]).exists(), "a refused run left a folder behind"
    return err


def test_user_mistakes_end_in_one_line_and_leave_no_folder(tmp_path, capsys, tiny_bert, glue_dir, monkeypatch):
    base = slice_opts(tmp_path / "run", tiny_bert, glue_dir)
    bad_ds = tmp_path / "ds.json"
    bad_ds.write_text(json.dumps({"zero_optimization": {"stage": 7}}))
    _refused(capsys, "finetune-teacher", dict(base, ds_config=str(bad_ds)), f"option ds_config: {bad_ds}")
    (tmp_path / "empty").mkdir()
    _refused(capsys, "finetune-teacher", dict(base, backbone=str(tmp_path / "empty")),
             f"option backbone: {tmp_path / 'empty' / 'config.json'} is missing or not a model config")
    (tmp_path / "garbage").mkdir()
    (tmp_path / "garbage" / "config.json").write_text("{not json")
    _refused(capsys, "finetune-teacher", dict(base, backbone=str(tmp_path / "garbage")), "option backbone:")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    _refused(capsys, "finetune-teacher", dict(base, backbone="nosuchorg/nosuchmodel"),
             "'nosuchorg/nosuchmodel' is neither a model folder nor a reachable hub model id")
    _refused(capsys, "finetune-teacher", dict(base, hub_dataset="glue"), "options glue_dir and hub_dataset")
    _refused(capsys, "finetune-teacher", dict(base, weight_decay=-0.5), "option weight_decay: must be >= 0")
    _refused(capsys, "finetune-teacher", dict(base, eval_every_steps=-1), "option eval_every_steps: must be >= 0")
    for name in ("../outside", "/abs", ".hidden", "sweep-x/../../outside"):
        _refused(capsys, "distill", dict(base, k=2, run_name=name), "option run_name:")
    _refused(capsys, "finetune-teacher", base, "DIST_PEAKD_COLLECTIVE_TIMEOUT='abc'",
             env={"DIST_PEAKD_COLLECTIVE_TIMEOUT": "abc"}, monkeypatch=monkeypatch)


def test_a_late_refusal_does_not_block_the_corrected_rerun(tmp_path, capsys, tiny_bert, glue_dir):
    """distill without a teacher cache is refused after claiming its folder; the rerun with other options
    is refused for the same missing cache, not for 'made with other options'."""
    base = slice_opts(tmp_path / "run", tiny_bert, glue_dir, k=2, use_ptp=False)
    code, first = cli("distill", base, capsys)
    assert code == 4 and "teacher" in first, first
    code, second = cli("distill", dict(base, lr=5e-4), capsys)
    assert code == 4 and "other options" not in second, second


# ------------------------------------------------------------------------------------ item 8: folder locks
# (the lock itself: tests/reliability/test_locking.py)


@pytest.mark.slow
def test_two_identical_jobs_one_runs_the_other_is_refused(tmp_path, tiny_bert, glue_dir, capsys):
    """Item 8 end to end: job A (a real process) trains; job B into the same folder exits 2 naming A;
    A finishes with one train_log row per step."""
    from reliab_helpers import args_of, run_process

    opts = slice_opts(tmp_path / "run", tiny_bert, glue_dir, epochs=40, save_every_steps=20)
    job_a = run_process(["finetune-teacher", *args_of(opts)], wait=False)
    lock = tmp_path / "run" / "mrpc" / ".teacher.lock"
    deadline = time.time() + 120
    while not lock.exists() and job_a.poll() is None and time.time() < deadline:
        time.sleep(0.2)
    assert lock.exists(), job_a.communicate()[0]
    code, err = cli("finetune-teacher", opts, capsys)
    out_a = job_a.communicate(timeout=600)[0]
    assert code == 2 and f"pid {job_a.pid}" in err and "in use by another job" in err, err
    assert job_a.returncode == 0, out_a
    steps = [json.loads(x)["step"] for x in (tmp_path / "run" / "mrpc" / "teacher" / "train_log.jsonl")
             .read_text().splitlines()]
    assert steps == sorted(set(steps)) and len(steps) == 120
    assert not lock.exists()


# ------------------------------------------------------------------------------------ item 7: disk full
def test_disk_full_while_writing_a_cache_shard_names_the_path(tmp_path, monkeypatch):
    from dist_peakd.cache import writer

    def full(fd, offset, length):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(writer.os, "posix_fallocate", full)
    logits, cls = np.zeros((4, 2), np.float32), np.zeros((4, 3, 4), np.float16)
    with pytest.raises(ArtifactWriteError) as info:
        writer.write_shard(tmp_path, "train", 0, 1, np.arange(4), logits, cls)
    message = info.value.exit_message()
    assert "no space left on device" in message and "train/shard-00000-of-00001" in message
    assert info.value.exit_code == 6
    assert not list((tmp_path / "train").iterdir())  # no .tmp-shard-* left behind


# ------------------------------------------------------------------------------------ a peer lost in a save
def test_a_collective_failure_during_a_checkpoint_save_is_exit_5_not_a_write_failure(tmp_path, tiny_bert):
    """A dead or frozen peer makes DeepSpeed's save raise a gloo error: it must reach the guard as a
    collective failure (exit 5, naming the lost peers), not be wrapped as a write failure (exit 6)."""
    import torch.distributed as dist

    from dist_peakd.engine import checkpoints
    from dist_peakd.guard import classify

    class Ds:
        def save_checkpoint(self, *a, **k):
            raise RuntimeError("[../third_party/gloo/gloo/transport/tcp/pair.cc:534] Connection closed by peer "
                               "[127.0.0.1]:29500")

    class Dist:
        is_main, rank = True, 0

    class FakeEngine:
        ds, dist, global_step = Ds(), Dist(), 4

    started = not dist.is_initialized()
    if started:
        dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'pg'}", rank=0, world_size=1)
    try:
        with pytest.raises(RuntimeError, match="Connection closed by peer") as info:
            checkpoints.save_checkpoint(FakeEngine(), tmp_path / "checkpoints", "step-00000004", {})
        assert not isinstance(info.value, ArtifactWriteError)
        code, reason = classify(info.value)
        assert code == 5 and reason.startswith("error: a collective operation failed (")
    finally:
        if started:
            dist.destroy_process_group()
    assert not (tmp_path / "checkpoints" / ".tmp-step-00000004").exists()


def test_bounds_and_types_have_one_path_for_every_source():
    with pytest.raises(ConfigError, match="the command line: option batch_size: expected an integer"):
        build_options(DistillOptions, batch_size="eight")


def test_disk_full_while_appending_to_the_training_log_names_it(tmp_path, monkeypatch):
    from dist_peakd.engine import train_log
    from dist_peakd.engine.tracking import Tracker

    log = train_log.TrainLog(tmp_path / "train_log.jsonl", Tracker(tmp_path / "tb", enabled=False), True)
    log.add({"count": 8.0, "tokens": 80.0, "ce": 4.0})
    log.write(1, 1e-3, 0.5, 0)

    def full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(train_log, "open", full, raising=False)
    log.add({"count": 8.0, "tokens": 80.0, "ce": 4.0})
    with pytest.raises(ArtifactWriteError) as info:
        log.write(2, 1e-3, 0.5, 0)
    message = info.value.exit_message()
    assert f"training log {tmp_path / 'train_log.jsonl'} failed: no space left on device" in message
    assert [json.loads(x)["step"] for x in (tmp_path / "train_log.jsonl").read_text().splitlines()] == [1]


def test_model_folder_commands_refuse_an_export_without_its_manifest_unless_trusted(tmp_path, tiny_bert):
    """evaluate / predict / export open a dist-peakd folder through the same check (item 2)."""
    from transformers import AutoModelForSequenceClassification

    from dist_peakd.errors import ArtifactCorruptError
    from dist_peakd.export import export_compact
    from dist_peakd.integrity import EXPORT_MANIFEST
    from dist_peakd.stages.inference import open_model_folder

    model = AutoModelForSequenceClassification.from_pretrained(str(tiny_bert), num_labels=2)
    folder = export_compact(model, tmp_path / "best", extra_files={"dist_peakd.json": {"stage": "teacher"}})
    (folder / EXPORT_MANIFEST).unlink()
    with pytest.raises(ArtifactCorruptError, match=f"{folder / EXPORT_MANIFEST}: missing.*--trust_unverified"):
        open_model_folder(folder)
    with pytest.raises(ConfigError, match="has no tokenizer files"):  # past the check: it was trusted
        open_model_folder(folder, trust_unverified=True)
