"""Reliability rows 3 and 7: artifacts are written atomically; corruption is detected on load and named,
with a fall back to the previous intact checkpoint; a full disk while writing leaves the previous
artifacts intact and names the path."""

from __future__ import annotations

import errno
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from dist_peakd.engine import Engine, EngineOptions, init_distributed
from dist_peakd.engine.checkpoints import COMPLETE_FILE, LATEST_FILE, select_checkpoint
from dist_peakd.errors import ArtifactCorruptError, ArtifactWriteError, CheckpointCorruptError, StopRequested
from dist_peakd.integrity import EXPORT_MANIFEST, file_manifest, verify_export


def _flip_byte(path: Path, offset: int | None = None) -> None:
    data = bytearray(path.read_bytes())
    i = len(data) // 2 if offset is None else offset
    data[i] ^= 0xFF
    path.write_bytes(bytes(data))


def _truncate(path: Path) -> None:
    with open(path, "r+b") as f:
        f.truncate(path.stat().st_size // 2)


# ------------------------------------------------------------------------------------------ stage runs
def _stage_opts(out: Path, backbone: Path, glue_dir: Path, **kw) -> dict:
    base = dict(task="mrpc", output_dir=str(out), glue_dir=str(glue_dir), backbone=str(backbone), max_length=40,
                max_train_examples=24, max_eval_examples=16, batch_size=8, epochs=2, eval_batch_size=16,
                log_every_steps=1, lr=1e-3, seed=4, save_every_steps=2, cache_dir=str(out.parent / "tok"))
    base.update(kw)
    return base


def _run_stage(**opts):
    from dist_peakd.config import build_options
    from dist_peakd.stages import finetune_teacher

    return finetune_teacher.run(build_options(finetune_teacher.FinetuneTeacherOptions, **opts))


def _cli(args: dict) -> int:
    from dist_peakd import cli

    try:
        cli.main(["finetune-teacher", *[f"--{k}={v}" for k, v in args.items()]])
    except SystemExit as e:
        return int(e.code or 0)
    return 0


@pytest.fixture(scope="module")
def reference(tmp_path_factory, tiny_bert_nodropout, glue_dir):
    """Uninterrupted in-process run: 3 steps per epoch, 2 epochs."""
    out = tmp_path_factory.mktemp("artifacts_ref") / "run"
    summary = _run_stage(**_stage_opts(out, tiny_bert_nodropout, glue_dir))
    assert summary["total_steps"] == 6
    return out, summary


def test_checkpoints_record_every_file_and_keep_the_newest_two(tmp_path, tiny_bert_nodropout, glue_dir, reference):
    out = tmp_path / "run"
    with pytest.raises(StopRequested):
        _run_stage(**_stage_opts(out, tiny_bert_nodropout, glue_dir, stop_after_steps=5))
    ckpts = out / "mrpc" / "teacher" / "checkpoints"
    # saved at 2 (every 2), 3 (epoch end), 4 (every 2), 5 (stop); the newest two are kept
    assert sorted(p.name for p in ckpts.iterdir()) == [LATEST_FILE, "step-00000004", "step-00000005"]
    for tag in ("step-00000004", "step-00000005"):
        record = json.loads((ckpts / tag / COMPLETE_FILE).read_text())
        assert record["files"] == file_manifest(ckpts / tag, exclude=[COMPLETE_FILE])
        assert any(name.endswith("model_states.pt") for name in record["files"])
    # exports carry their own file manifest
    verify_export(out / "mrpc" / "teacher" / "best")
    assert (out / "mrpc" / "teacher" / "best" / EXPORT_MANIFEST).is_file()


def test_corrupted_newest_checkpoint_falls_back_to_previous(tmp_path, tiny_bert_nodropout, glue_dir, reference,
                                                            capsys):
    out = tmp_path / "run"
    with pytest.raises(StopRequested):
        _run_stage(**_stage_opts(out, tiny_bert_nodropout, glue_dir, stop_after_steps=4))
    ckpts = out / "mrpc" / "teacher" / "checkpoints"
    bad = next((ckpts / "step-00000004").glob("*model_states.pt"))
    _flip_byte(bad)
    capsys.readouterr()
    summary = _run_stage(**_stage_opts(out, tiny_bert_nodropout, glue_dir, keep_checkpoints_after_success=True))
    printed = capsys.readouterr().out
    assert f"checkpoint {ckpts / 'step-00000004'} is corrupted: {bad}: sha256 differs" in printed
    assert f"resumed from {ckpts / 'step-00000003'} at step 3" in printed
    assert (ckpts / ".corrupt-step-00000004").is_dir()  # set aside for inspection, never loaded again
    _, ref = reference
    assert summary["final"] == ref["final"] and summary["history"] == ref["history"]


def test_only_checkpoint_truncated_is_refused_naming_the_file(tmp_path, tiny_bert_nodropout, glue_dir, capsys):
    out = tmp_path / "run"
    opts = _stage_opts(out, tiny_bert_nodropout, glue_dir, keep_checkpoints=1, save_every_steps=0)
    assert _cli(dict(opts, stop_after_steps=2)) == 75  # stopped on request, checkpoint written
    ckpts = out / "mrpc" / "teacher" / "checkpoints"
    bad = next((ckpts / "step-00000002").glob("*model_states.pt"))
    _truncate(bad)
    capsys.readouterr()
    assert _cli(opts) == 4
    err = capsys.readouterr().err
    assert str(bad) in err and "truncated" in err
    assert (ckpts / "step-00000002").is_dir() and not (out / "mrpc" / "teacher" / "summary.json").exists()


def test_corrupted_export_is_refused_by_the_stage_that_loads_it(tmp_path, tiny_bert_nodropout, glue_dir,
                                                                 reference, capsys):
    ref_out, _ = reference
    export = tmp_path / "teacher_best"
    shutil.copytree(ref_out / "mrpc" / "teacher" / "best", export)
    verify_export(export)
    weights = export / "model.safetensors"
    _flip_byte(weights, offset=weights.stat().st_size - 3)  # tensor bytes: safetensors itself loads it fine
    with pytest.raises(ArtifactCorruptError, match="model.safetensors: sha256 differs"):
        verify_export(export)
    out = tmp_path / "run"
    capsys.readouterr()
    assert _cli(_stage_opts(out, export, glue_dir)) == 4  # a stage loading the export as its backbone
    err = capsys.readouterr().err
    assert f"{weights}: sha256 differs" in err
    assert not (out / "mrpc" / "teacher" / "checkpoints").exists()


# ------------------------------------------------------------------------------------------ selection rules
def _fake_checkpoint(root: Path, tag: str, step: int, complete: bool = True) -> Path:
    d = root / tag
    d.mkdir(parents=True)
    (d / "mp_rank_00_model_states.pt").write_bytes(bytes(range(256)) * (step + 1))
    if complete:
        record = {"global_step": step, "tag": tag, "files": file_manifest(d)}
        (d / COMPLETE_FILE).write_text(json.dumps(record))
    return d


def test_half_written_checkpoints_are_never_selected(tmp_path):
    root = tmp_path / "checkpoints"
    _fake_checkpoint(root, "step-00000004", 4)
    _fake_checkpoint(root, ".tmp-step-00000006", 6, complete=False)  # a save killed before its rename
    _fake_checkpoint(root, "step-00000008", 8, complete=False)  # a tag folder without COMPLETE
    (root / LATEST_FILE).write_text("step-00000008")
    tag, warnings = select_checkpoint(root, quarantine=True)
    assert tag == "step-00000004" and len(warnings) == 1 and "step-00000008, which has no COMPLETE marker" in warnings[0]
    assert (root / "step-00000008").is_dir()  # incomplete, not corrupted: left alone
    (root / LATEST_FILE).unlink()  # killed between the rename and writing `latest`
    assert select_checkpoint(root) == ("step-00000004", [])
    shutil.rmtree(root / "step-00000004")
    assert select_checkpoint(root) == (None, [])  # nothing complete: start from scratch


def test_missing_file_in_checkpoint_is_named(tmp_path):
    root = tmp_path / "checkpoints"
    d = _fake_checkpoint(root, "step-00000002", 2)
    (d / "mp_rank_00_model_states.pt").unlink()
    with pytest.raises(CheckpointCorruptError, match="mp_rank_00_model_states.pt: missing"):
        select_checkpoint(root)


# ------------------------------------------------------------------------------------------ disk full (row 7)
class _Tiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.lin = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lin(x)


def _tiny_engine() -> Engine:
    return Engine(_Tiny(), EngineOptions(batch_size=2, lr=1e-2), total_steps=4, dist_info=init_distributed())


@pytest.fixture()
def saved_once(tmp_path):
    engine = _tiny_engine()
    root = tmp_path / "checkpoints"
    engine.global_step = 1
    engine.save_state(root, "step-00000001", {"loop": {"marker": 1}})
    with torch.no_grad():
        for p in engine.module.parameters():
            p.add_(1.0)  # the state the failed save would have recorded
    engine.global_step = 2
    return engine, root


def _assert_previous_intact(root: Path) -> None:
    assert (root / LATEST_FILE).read_text() == "step-00000001"
    assert sorted(p.name for p in root.iterdir()) == [LATEST_FILE, "step-00000001"]  # nothing half-written
    assert select_checkpoint(root) == ("step-00000001", [])
    fresh = _tiny_engine()
    assert fresh.load_state(root)["loop"] == {"marker": 1}
    ref = _Tiny()
    for a, b in zip(fresh.module.parameters(), ref.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


@pytest.mark.parametrize("failure", [
    OSError(errno.ENOSPC, "No space left on device"),
    RuntimeError("PytorchStreamWriter failed writing file data/0: file write failed"),  # torch's zip writer
])
def test_disk_full_while_writing_checkpoint(saved_once, monkeypatch, failure):
    engine, root = saved_once
    real_save = torch.save

    def full_disk(obj, f, *args, **kwargs):
        Path(f).write_bytes(b"PK\x03\x04partial")  # some bytes reach the disk, then it is full
        raise failure

    monkeypatch.setattr(torch, "save", full_disk)
    with pytest.raises(ArtifactWriteError) as info:
        engine.save_state(root, "step-00000002", {"loop": {"marker": 2}})
    monkeypatch.setattr(torch, "save", real_save)
    assert str(root / "step-00000002") in str(info.value) and str(root / LATEST_FILE) in str(info.value)
    _assert_previous_intact(root)


def test_disk_full_while_writing_complete_marker(saved_once, monkeypatch):
    import dist_peakd.integrity as engine_mod  # the one manifest writer writes the COMPLETE record

    engine, root = saved_once
    real = engine_mod.atomic_write_text

    def full_disk(path, text, **kw):
        if Path(path).name == COMPLETE_FILE:
            raise OSError(errno.ENOSPC, "No space left on device")
        real(path, text, **kw)

    monkeypatch.setattr(engine_mod, "atomic_write_text", full_disk)
    with pytest.raises(ArtifactWriteError, match="writing checkpoint .*step-00000002 failed: no space left on device"):
        engine.save_state(root, "step-00000002", {"loop": {"marker": 2}})
    monkeypatch.setattr(engine_mod, "atomic_write_text", real)
    _assert_previous_intact(root)


def test_disk_full_while_exporting_keeps_previous_export(tmp_path, tiny_bert):
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    cfg = BertConfig.from_pretrained(str(tiny_bert), num_labels=2)
    model = BertForSequenceClassification(cfg)
    engine = Engine(model, EngineOptions(batch_size=2), total_steps=1, dist_info=init_distributed(), train=False)
    tok = AutoTokenizer.from_pretrained(str(tiny_bert))
    out = tmp_path / "best"
    engine.export_pretrained(out, tok)
    before = {p.name: p.read_bytes() for p in out.iterdir()}

    class FullDiskTokenizer:
        def save_pretrained(self, path):
            Path(path, "tokenizer.json").write_text('{"trunc')
            raise OSError(errno.ENOSPC, "No space left on device")

    with torch.no_grad():
        for p in engine.module.parameters():
            p.add_(1.0)
    with pytest.raises(ArtifactWriteError, match=f"writing export {out} failed: no space left on device"):
        engine.export_pretrained(out, FullDiskTokenizer())
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best"]  # no .tmp-best left behind
    verify_export(out)


def test_teacher_cache_shard_write_failure_leaves_previous_cache_intact(tmp_path, monkeypatch):
    """The teacher cache (dist_peakd/cache) publishes shards by rename and the manifest last."""
    from dist_peakd.cache import TeacherCache, build_manifest, write_manifest, write_shard

    identity = {"teacher_fingerprint": "t" * 64, "tokenizer_fingerprint": "k" * 64, "max_length": 8,
                "data_fingerprint": "d" * 64, "task": "mrpc"}
    root = tmp_path / "cache"
    rng = np.random.default_rng(0)
    ids = np.arange(10)
    logits, cls = rng.standard_normal((10, 2)).astype(np.float32), rng.standard_normal((10, 3, 4)).astype(np.float16)
    recs = {"train": [write_shard(root, "train", 0, 1, ids, logits, cls)]}
    write_manifest(root, build_manifest(identity=identity, splits=recs, num_labels=2, num_layers=3, hidden_size=4,
                                        teacher_dir=tmp_path, world_size=1))
    listing = sorted(p.relative_to(root).as_posix() for p in root.rglob("*"))

    real_memmap = np.lib.format.open_memmap
    calls = {"n": 0}

    def full_disk(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_memmap(*args, **kwargs)

    monkeypatch.setattr(np.lib.format, "open_memmap", full_disk)
    with pytest.raises(OSError) as info:  # a rebuild of the same shard fails half-way
        write_shard(root, "train", 0, 1, ids, logits * 2, cls)
    monkeypatch.setattr(np.lib.format, "open_memmap", real_memmap)
    assert info.value.errno == errno.ENOSPC
    visible = sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if ".tmp-" not in p.as_posix())
    assert visible == listing  # the published shard and manifest are untouched
    cache = TeacherCache.open(root, expected=identity, verify="checksum")
    np.testing.assert_array_equal(cache.split("train").lookup(ids)[0].numpy(), logits)
