"""Issue 14 items 2 and 6: every artifact is verified where it is read (teacher cache, exports,
checkpoints, tokenization cache), a missing manifest is not a pass, verification hashes a file once
per process; a cache rebuild that fails leaves the previous cache valid and in place."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import reliab_helpers
from reliab_helpers import cli, copy_run, flip_byte, slice_opts, tree_bytes

from dist_peakd import integrity
from dist_peakd.engine.checkpoints import COMPLETE_FILE, select_checkpoint
from dist_peakd.errors import ArtifactCorruptError, CacheCorruptError, CheckpointCorruptError
from dist_peakd.integrity import EXPORT_MANIFEST, file_manifest

pytestmark = pytest.mark.slow
teacher_run = reliab_helpers.teacher_run  # the shared module fixture


def test_one_flipped_bit_in_the_cached_logits_is_refused_by_ptp_and_distill(teacher_run, tmp_path, capsys):
    out, opts = copy_run(teacher_run, tmp_path)
    logits = out / "mrpc" / "teacher_cache" / "train" / "shard-00000-of-00001" / "logits.npy"
    flip_byte(logits, offset=logits.stat().st_size - 2)  # one bit of one value: sizes and headers unchanged
    for stage, extra in (("ptp", {"k": 2}), ("distill", {"k": 2, "use_ptp": False})):
        code, err = cli(stage, dict(opts, **extra), capsys)
        assert code == 4, err
        assert f"teacher cache file {logits}: sha256 differs" in err
        assert "Traceback" not in err
    assert not list((out / "mrpc").glob("distill-*/checkpoints")) and not (out / "mrpc" / "ptp-k2-shuffle" / "best").exists()


def test_an_export_without_its_manifest_is_refused_unless_trusted(teacher_run, tmp_path, capsys):
    out, opts = copy_run(teacher_run, tmp_path)
    best = out / "mrpc" / "teacher" / "best"
    (best / EXPORT_MANIFEST).unlink()
    cache = out / "mrpc" / "teacher_cache"
    code, err = cli("cache-teacher", dict(opts, rebuild=True), capsys)
    assert code == 4 and f"{best / EXPORT_MANIFEST}: missing: this export cannot be verified" in err, err
    assert "--trust_unverified" in err
    code, err = cli("cache-teacher", dict(opts, rebuild=True, trust_unverified=True), capsys)
    assert code == 0, err
    assert json.loads((cache / "manifest.json").read_text())["splits"]["train"]["rows"] == 24


def test_a_checkpoint_whose_complete_lists_no_files_is_refused_unless_trusted(tmp_path):
    root = tmp_path / "checkpoints"
    tag = root / "step-00000004"
    tag.mkdir(parents=True)
    (tag / "mp_rank_00_model_states.pt").write_bytes(b"weights")
    (tag / COMPLETE_FILE).write_text(json.dumps({"global_step": 4, "tag": tag.name}))  # no "files"
    with pytest.raises(CheckpointCorruptError, match="lists no files, so the checkpoint cannot be verified"):
        select_checkpoint(root)
    assert select_checkpoint(root, trust_unverified=True) == (tag.name, [])
    (tag / COMPLETE_FILE).unlink()  # as _publish does: the file list first, then the marker beside it
    files = file_manifest(tag)
    (tag / COMPLETE_FILE).write_text(json.dumps({"global_step": 4, "files": files}))
    assert select_checkpoint(root) == (tag.name, [])


def test_the_tokenization_cache_is_verified_and_a_legacy_one_is_rebuilt(tiny_bert, glue_dir, tmp_path, capsys):
    from dist_peakd.config import build_options
    from dist_peakd.stages.common import load_tokenizer, prepare_data
    from dist_peakd.stages.finetune_teacher import FinetuneTeacherOptions

    opts = build_options(FinetuneTeacherOptions, **slice_opts(tmp_path / "run", tiny_bert, glue_dir,
                                                              cache_dir=str(tmp_path / "tok")))
    tok = load_tokenizer(str(tiny_bert))
    first = prepare_data(opts, tok)
    [folder] = [p for p in (tmp_path / "tok").iterdir() if not p.name.startswith(".")]
    arrow = sorted(folder.rglob("*.arrow"))[0]
    assert f"{arrow.relative_to(folder)}" in json.loads((folder / EXPORT_MANIFEST).read_text())["files"]
    assert prepare_data(opts, tok).cache_hit
    flip_byte(arrow, offset=arrow.stat().st_size // 2)
    with pytest.raises(ArtifactCorruptError, match=f"{arrow}: sha256 differs.*tokenization cache; delete {folder}"):
        prepare_data(opts, tok)
    code, err = cli("finetune-teacher", dict(slice_opts(tmp_path / "run", tiny_bert, glue_dir,
                                                        cache_dir=str(tmp_path / "tok"))), capsys)
    assert code == 4 and str(arrow) in err and "Traceback" not in err
    # a folder of an older version (no manifest) is not trusted: rebuilt in place, same rows
    shutil.rmtree(folder)
    prepare_data(opts, tok)
    (folder / EXPORT_MANIFEST).unlink()
    again = prepare_data(opts, tok)
    assert not again.cache_hit and (folder / EXPORT_MANIFEST).is_file()
    assert again.train["input_ids"] == first.train["input_ids"]


def test_verification_hashes_each_file_once_per_process_and_sees_a_rewrite(tmp_path, monkeypatch):
    from dist_peakd.cache import TeacherCache, build_manifest, write_manifest, write_shard

    identity = {"teacher_fingerprint": "t" * 64, "tokenizer_fingerprint": "k" * 64, "max_length": 8,
                "data_fingerprint": "d" * 64, "task": "mrpc"}
    root = tmp_path / "cache"
    rng = np.random.default_rng(0)
    logits, cls = rng.standard_normal((10, 2)).astype(np.float32), rng.standard_normal((10, 3, 4)).astype(np.float16)
    recs = {"train": [write_shard(root, "train", 0, 1, np.arange(10), logits, cls)]}
    write_manifest(root, build_manifest(identity=identity, splits=recs, num_labels=2, num_layers=3, hidden_size=4,
                                        teacher_dir=tmp_path, world_size=1))
    hashed: list[str] = []
    real = integrity.file_sha256
    monkeypatch.setattr(integrity, "file_sha256", lambda p: hashed.append(Path(p).name) or real(p))
    TeacherCache.open(root, identity)
    TeacherCache.open(root, identity)
    assert sorted(hashed) == ["cls.npy", "ids.npy", "logits.npy"]  # once each, for two opens
    target = root / "train" / "shard-00000-of-00001" / "logits.npy"
    flip_byte(target)  # same size, new bytes: its ctime changes, so it is hashed again
    with pytest.raises(CacheCorruptError, match="logits.npy: sha256 differs"):
        TeacherCache.open(root, identity)


def test_a_failed_rebuild_keeps_the_previous_cache_valid_and_in_place(teacher_run, tmp_path, capsys, monkeypatch):
    """Item 6: --rebuild builds beside the old cache; a corrupt teacher (refused before the build) and a
    teacher that fails half-way through the pass both leave the old cache byte-identical and valid."""
    from dist_peakd.cache import TeacherCache
    from dist_peakd.stages import cache_teacher

    out, opts = copy_run(teacher_run, tmp_path)
    cache = out / "mrpc" / "teacher_cache"
    before = tree_bytes(cache)
    weights = out / "mrpc" / "teacher" / "best" / "model.safetensors"
    original = weights.read_bytes()
    flip_byte(weights, offset=len(original) - 3)
    code, err = cli("cache-teacher", dict(opts, rebuild=True), capsys)
    assert code == 4 and f"{weights}: sha256 differs" in err, err
    assert tree_bytes(cache) == before
    weights.write_bytes(original)

    calls = {"n": 0}
    real = cache_teacher._cache_forward

    def fails_on_the_second_batch(engine, batch):
        calls["n"] += 1
        if calls["n"] == 2:
            raise RuntimeError("the teacher broke half-way")
        return real(engine, batch)

    monkeypatch.setattr(cache_teacher, "_cache_forward", fails_on_the_second_batch)
    code, err = cli("cache-teacher", dict(opts, rebuild=True, cache_batch_size=8), capsys)
    assert code == 1 and "the teacher broke half-way" in err
    assert calls["n"] == 2
    assert tree_bytes(cache) == before
    assert not any(p.name.startswith(".tmp-") for p in cache.parent.iterdir())  # the build folder is gone
    TeacherCache.open(cache, verify="checksum")
