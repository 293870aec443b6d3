"""Teacher cache: on-disk format (synthetic arrays) and the cache-teacher stage end to end."""

from __future__ import annotations

import json
import os
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from dist_peakd.cache import (
    CacheCorruptError,
    CacheMismatchError,
    TeacherCache,
    build_manifest,
    teacher_fingerprint,
    write_manifest,
    write_shard,
)
from dist_peakd.cache.store import FILES

C, L, H = 3, 4, 8
IDENTITY = {"teacher_fingerprint": "t" * 64, "tokenizer_fingerprint": "k" * 64, "max_length": 64,
            "data_fingerprint": "d" * 64, "task": "mrpc"}


def _synthetic(root: Path, n_train: int = 101, n_dev: int = 17, world: int = 2, seed: int = 0):
    """A cache of random rows over ``world`` shards (each rank's rows in shuffled order)."""
    rng = np.random.default_rng(seed)
    truth, records = {}, {}
    for split, n in (("train", n_train), ("dev", n_dev)):
        ids = rng.permutation(np.arange(1000, 1000 + 3 * n, 3))  # sparse, non-contiguous ids
        logits = rng.standard_normal((n, C)).astype(np.float32)
        cls = rng.standard_normal((n, L, H)).astype(np.float16)
        truth[split] = (ids, logits, cls)
        parts = np.array_split(np.arange(n), world)
        records[split] = [write_shard(root, split, r, world, ids[p], logits[p], cls[p]) for r, p in enumerate(parts)]
    manifest = build_manifest(identity=IDENTITY, splits=records, num_labels=C, num_layers=L, hidden_size=H,
                              teacher_dir=root, world_size=world, teacher_dev_metrics={"accuracy": 0.5})
    write_manifest(root, manifest)
    return truth


def _expected(**changes):
    exp = dict(IDENTITY, rows={"train": 101, "dev": 17})
    exp.update(changes)
    return exp


@pytest.fixture()
def synth(tmp_path):
    root = tmp_path / "cache"
    return root, _synthetic(root)


# --------------------------------------------------------------------------- store level
def test_round_trip_is_bitwise_for_shuffled_ids(synth):
    root, truth = synth
    cache = TeacherCache.open(root, _expected(), verify="checksum")
    assert cache.splits == ["train", "dev"] and cache.teacher_dev_metrics == {"accuracy": 0.5}
    for split, (ids, logits, cls) in truth.items():
        part = cache.split(split)
        assert len(part) == len(ids)
        np.testing.assert_array_equal(part.ids, np.sort(ids))
        order = np.random.default_rng(1).permutation(len(ids))
        got_logits, got_cls = part.lookup(torch.as_tensor(ids[order]))
        assert got_logits.dtype == torch.float32 and got_cls.dtype == torch.float16
        assert got_logits.shape == (len(ids), C) and got_cls.shape == (len(ids), L, H)
        assert torch.equal(got_logits, torch.from_numpy(logits[order]))
        assert torch.equal(got_cls, torch.from_numpy(cls[order]))
        srt = np.argsort(ids)
        assert torch.equal(part.logits(), torch.from_numpy(logits[srt]))
        # repeated ids and a plain list work too; reads are memory-mapped
        lg, _ = part.lookup([int(ids[3]), int(ids[3]), int(ids[0])])
        assert torch.equal(lg, torch.from_numpy(logits[[3, 3, 0]]))
    assert all(isinstance(a, np.memmap) for shard in cache.split("train")._shards for a in shard)


def test_unknown_id_raises_keyerror_naming_it(synth):
    root, truth = synth
    part = TeacherCache.open(root, verify="size").split("train")
    with pytest.raises(KeyError, match="999999"):
        part.lookup([int(truth["train"][0][0]), 999999])
    assert 999999 not in part and int(truth["train"][0][0]) in part
    with pytest.raises(KeyError, match="no split 'test'"):
        TeacherCache.open(root, verify="size").split("test")


@pytest.mark.parametrize("field,value", [
    ("teacher_fingerprint", "x" * 64), ("tokenizer_fingerprint", "y" * 64), ("max_length", 128),
    ("data_fingerprint", "z" * 64), ("task", "rte"), ("rows", {"train": 100, "dev": 17}),
])
def test_each_manifest_mismatch_is_refused_naming_the_field(synth, field, value):
    root, _ = synth
    with pytest.raises(CacheMismatchError) as err:
        TeacherCache.open(root, _expected(**{field: value}))
    name = "rows[train]" if field == "rows" else field
    found = 101 if field == "rows" else IDENTITY[field]
    wanted = 100 if field == "rows" else value
    msg = str(err.value)
    assert f"field '{name}' differs: cache has {found!r}, this run expects {wanted!r}" in msg
    assert "--rebuild" in msg and str(root) in msg
    assert [d[0] for d in err.value.differences] == [name]


def test_all_differing_fields_reported_together(synth):
    root, _ = synth
    with pytest.raises(CacheMismatchError) as err:
        TeacherCache.open(root, _expected(max_length=128, task="rte"))
    assert [d[0] for d in err.value.differences] == ["max_length", "task"]
    assert "'max_length'" in str(err.value) and "'task'" in str(err.value)
    again = pickle.loads(pickle.dumps(err.value))  # rank 0 broadcasts the error to the other ranks
    assert type(again) is CacheMismatchError and str(again) == str(err.value)
    corrupt = CacheCorruptError(root / "x.npy", "missing")
    assert str(pickle.loads(pickle.dumps(corrupt))) == str(corrupt)


def test_missing_shard_is_detected_naming_the_file(synth):
    root, _ = synth
    shutil.rmtree(root / "train" / "shard-00001-of-00002")
    with pytest.raises(CacheCorruptError, match=r"shard-00001-of-00002/ids\.npy: missing"):
        TeacherCache.open(root, verify="size")


def test_truncated_file_is_detected_naming_the_file(synth):
    root, _ = synth
    path = root / "dev" / "shard-00000-of-00002" / "cls.npy"
    with open(path, "r+b") as f:
        f.truncate(path.stat().st_size - 16)
    with pytest.raises(CacheCorruptError, match=r"dev/shard-00000-of-00002/cls\.npy: has \d+ bytes"):
        TeacherCache.open(root, verify="size")


def test_flipped_bytes_fail_the_checksum_naming_the_file(synth):
    root, _ = synth
    path = root / "train" / "shard-00000-of-00002" / "logits.npy"
    raw = bytearray(path.read_bytes())
    raw[-5] ^= 0xFF
    path.write_bytes(bytes(raw))
    TeacherCache.open(root, verify="size")  # same size: only the checksum can tell
    with pytest.raises(CacheCorruptError, match=r"train/shard-00000-of-00002/logits\.npy: sha256 differs"):
        TeacherCache.open(root)  # checksum is the default


def test_wrong_row_count_is_detected(synth):
    root, _ = synth
    original = json.loads((root / "manifest.json").read_text())
    manifest = json.loads(json.dumps(original))
    manifest["splits"]["dev"]["shards"][0]["rows"] += 1
    write_manifest(root, manifest)
    with pytest.raises(CacheCorruptError, match=r"dev/shard-00000-of-00002/ids\.npy: has 9 rows, manifest says 10"):
        TeacherCache.open(root, verify="size")
    manifest = json.loads(json.dumps(original))
    manifest["splits"]["dev"]["rows"] += 1
    write_manifest(root, manifest)
    with pytest.raises(CacheCorruptError, match=r"manifest\.json: split 'dev' lists 18 rows but its shards hold 17"):
        TeacherCache.open(root, verify="size")


def test_cache_without_manifest_is_invalid(synth):
    root, _ = synth
    manifest = json.loads((root / "manifest.json").read_text())
    del manifest["files"]["dev/shard-00000-of-00002/logits.npy"]
    write_manifest(root, manifest)
    with pytest.raises(CacheCorruptError, match=r"manifest\.json: malformed manifest"):
        TeacherCache.open(root)
    (root / "manifest.json").unlink()
    with pytest.raises(CacheCorruptError, match=r"manifest\.json: missing"):
        TeacherCache.open(root)


def _as_written_before(manifest: dict) -> dict:
    """The same manifest in the shape the previous version wrote: sizes and sha256 in each shard record."""
    old = json.loads(json.dumps({k: v for k, v in manifest.items() if k != "files"}))
    for info in old["splits"].values():
        for rec in info["shards"]:
            rec["sha256"] = {n: manifest["files"][f"{rec['path']}/{n}"]["sha256"] for n in FILES}
            rec["bytes"] = {n: manifest["files"][f"{rec['path']}/{n}"]["bytes"] for n in FILES}
    return old


def test_the_manifest_has_the_one_file_shape_and_an_older_cache_still_verifies(synth):
    """issue 26: the cache lists its files as every other manifest does (path -> bytes, sha256); a cache
    written by the previous version (sizes and sha256 per shard record) still opens, verifies and keeps
    its fingerprint, so the stages that consumed it are not asked to rerun."""
    import hashlib

    from dist_peakd.cache.store import cache_fingerprint

    root, _ = synth
    manifest = json.loads((root / "manifest.json").read_text())
    assert set(manifest["files"]) == {f"{s}/shard-0000{r}-of-00002/{n}" for s in ("train", "dev") for r in (0, 1)
                                      for n in FILES}
    assert all(set(rec) == {"bytes", "sha256"} for rec in manifest["files"].values())
    assert all(set(rec) == {"path", "rows"} for info in manifest["splits"].values() for rec in info["shards"])
    new = cache_fingerprint(manifest)
    old_manifest = _as_written_before(manifest)
    (root / "manifest.json").write_text(json.dumps(old_manifest, indent=2))
    cache = TeacherCache.open(root, _expected())
    assert cache_fingerprint(cache.manifest) == new
    # the previous version's formula, over the per-shard records
    content = {k: old_manifest.get(k) for k in ("teacher_fingerprint", "tokenizer_fingerprint", "max_length",
                                                "data_fingerprint", "task", "format_version", "num_labels",
                                                "num_layers", "hidden_size")}
    content["shards"] = sorted((rec["path"], n, rec["sha256"][n]) for info in old_manifest["splits"].values()
                               for rec in info["shards"] for n in sorted(rec["sha256"]))
    assert new == hashlib.sha256(json.dumps(content, sort_keys=True, default=str).encode()).hexdigest()
    flip = root / "dev" / "shard-00001-of-00002" / "logits.npy"
    raw = bytearray(flip.read_bytes())
    raw[-3] ^= 0x10
    flip.write_bytes(bytes(raw))
    with pytest.raises(CacheCorruptError, match=r"dev/shard-00001-of-00002/logits\.npy: sha256 differs from the "
                                                r"manifest \(corrupted bytes\)"):
        TeacherCache.open(root, _expected())


def test_teacher_fingerprint_reads_weights_and_config_only(tmp_path):
    d = tmp_path / "teacher"
    d.mkdir()
    with pytest.raises(FileNotFoundError, match="config.json"):
        teacher_fingerprint(d)
    (d / "config.json").write_text('{"model_type": "bert"}')
    (d / "model.safetensors").write_bytes(b"\x00" * 64)  # not a loadable model: never instantiated
    fp = teacher_fingerprint(d)
    (d / "tokenizer.json").write_text("{}")
    assert teacher_fingerprint(d) == fp
    (d / "model.safetensors").write_bytes(b"\x00" * 63 + b"\x01")
    fp2 = teacher_fingerprint(d)
    assert fp2 != fp
    (d / "config.json").write_text('{"model_type": "bert", "x": 1}')
    assert teacher_fingerprint(d) not in (fp, fp2)


def test_write_shard_refuses_duplicates_and_fp16_overflow(tmp_path):
    with pytest.raises(ValueError, match="duplicate"):
        write_shard(tmp_path, "train", 0, 1, [1, 1], np.zeros((2, C)), np.zeros((2, L, H)))
    with pytest.raises(ValueError, match="overflow float16"):
        write_shard(tmp_path, "train", 0, 1, [1, 2], np.zeros((2, C)), np.full((2, L, H), 1e6))
    assert not list((tmp_path / "train").iterdir())  # nothing published, temp dirs removed


# --------------------------------------------------------------------------- the stage, end to end
MAXLEN, N_TRAIN, N_DEV = 40, 60, 24


@pytest.fixture(scope="module")
def teacher(tmp_path_factory, tiny_bert) -> Path:
    """A tiny 'fine-tuned' teacher folder (random 2-label head on the tiny BERT) with its tokenizer."""
    from transformers import AutoTokenizer

    from dist_peakd.models import load_teacher

    out = tmp_path_factory.mktemp("teacher") / "best"
    torch.manual_seed(0)
    load_teacher(tiny_bert, 2).save_pretrained(str(out))
    AutoTokenizer.from_pretrained(str(tiny_bert)).save_pretrained(str(out))
    return out


def _options(out: Path, teacher: Path, glue_dir: Path, tok: Path, **kw) -> dict:
    base = dict(task="mrpc", output_dir=str(out), glue_dir=str(glue_dir), teacher_dir=str(teacher),
                max_length=MAXLEN, max_train_examples=N_TRAIN, max_eval_examples=N_DEV, cache_batch_size=16,
                cache_dir=str(tok))
    return {**base, **kw}


def _cli_args(**options) -> list[str]:
    return [x for k, v in options.items() for x in (f"--{k}", str(v))]


@pytest.fixture(scope="module")
def launched(tmp_path_factory, teacher, glue_dir):
    """The real deepspeed launcher (CPU, gloo) building the cache with 1 and with 2 ranks."""
    root = tmp_path_factory.mktemp("launch")
    deepspeed = shutil.which("deepspeed", path=str(Path(sys.executable).parent)) or "deepspeed"
    env = dict(os.environ, DS_ACCELERATOR="cpu", OMP_NUM_THREADS="1", HF_DATASETS_OFFLINE="1",
               HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    dirs = {}
    for n in (1, 2):
        out = root / f"r{n}"
        cmd = [deepspeed, "--num_gpus", str(n), "--master_port", str(29600 + n + os.getpid() % 1000),
               "--module", "dist_peakd.cli", "cache-teacher",
               *_cli_args(**_options(out, teacher, glue_dir, root / "tok"))]
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        dirs[n] = out / "mrpc" / "teacher_cache"
    return dirs, root / "tok"


@pytest.mark.launcher
@pytest.mark.slow
def test_two_rank_cache_equals_one_rank_cache(launched):
    dirs, _ = launched
    one, two = TeacherCache.open(dirs[1]), TeacherCache.open(dirs[2])
    assert [len(s["shards"]) for s in two.manifest["splits"].values()] == [2, 2]
    assert two.manifest["world_size"] == 2 and one.manifest["world_size"] == 1
    for key in ("teacher_fingerprint", "tokenizer_fingerprint", "data_fingerprint", "max_length", "task"):
        assert one.manifest[key] == two.manifest[key]
    for split, n in (("train", N_TRAIN), ("dev", N_DEV)):
        a, b = one.split(split), two.split(split)
        assert len(a) == len(b) == n
        np.testing.assert_array_equal(a.ids, b.ids)
        ids = np.random.default_rng(0).permutation(a.ids)
        la, ca = a.lookup(ids)
        lb, cb = b.lookup(ids)
        torch.testing.assert_close(la, lb, rtol=0, atol=1e-6)
        # fp32 sums over differently padded batches can differ in the last bit before fp16 rounding
        torch.testing.assert_close(ca, cb, rtol=1e-3, atol=1e-3)
        assert (ca == cb).float().mean() > 0.99
    assert one.teacher_dev_metrics == pytest.approx(two.teacher_dev_metrics)
    assert set(one.teacher_dev_metrics) == {"f1", "accuracy"}
    assert (dirs[2] / "stage_options.json").is_file() and (dirs[2] / "summary.json").is_file()


@pytest.mark.launcher
@pytest.mark.slow
def test_cached_values_are_the_teachers_eval_outputs(launched, teacher, glue_dir):
    """Spot check against a direct eval-mode forward of the teacher on the same rows."""
    from dist_peakd.models import load_teacher, teacher_forward
    from dist_peakd.stages.cache_teacher import CacheTeacherOptions
    from dist_peakd.stages.common import collator_for, load_tokenizer, prepare_data

    dirs, tok = launched
    opts = CacheTeacherOptions(**_options(dirs[1].parent.parent, teacher, glue_dir, tok))
    tokenizer = load_tokenizer(str(teacher))
    data = prepare_data(opts, tokenizer)
    batch = collator_for(tokenizer)([data.dev[i] for i in range(5)])
    model = load_teacher(teacher, 2).eval()
    with torch.no_grad():
        out = teacher_forward(model, batch["input_ids"], batch["attention_mask"], batch["token_type_ids"])
    logits, cls = TeacherCache.open(dirs[1], verify="size").split("dev").lookup(batch["example_ids"])
    torch.testing.assert_close(logits, out.logits, rtol=0, atol=1e-5)
    torch.testing.assert_close(cls.float(), torch.stack(out.cls_states, 1), rtol=2e-3, atol=2e-3)


@pytest.mark.launcher
@pytest.mark.slow
def test_stage_skips_refuses_and_rebuilds(tmp_path, launched, teacher, glue_dir):
    from dist_peakd.config import build_options
    from dist_peakd.stages import cache_teacher
    from dist_peakd.stages.cache_teacher import CacheTeacherOptions

    dirs, tok = launched
    out = tmp_path / "run"
    shutil.copytree(dirs[1], out / "mrpc" / "teacher_cache")

    def opts(**kw):
        return build_options(CacheTeacherOptions, **_options(out, teacher, glue_dir, tok, **kw))

    cache_dir = out / "mrpc" / "teacher_cache"
    created = json.loads((cache_dir / "manifest.json").read_text())["created_at"]
    summary = cache_teacher.run(opts())
    assert summary["skipped"] is True and summary["rows"] == {"train": N_TRAIN, "dev": N_DEV}
    # mismatches through the stage: max_length, data slice (data fingerprint + rows)
    with pytest.raises(CacheMismatchError, match="field 'max_length' differs: cache has 40, this run expects 32"):
        cache_teacher.run(opts(max_length=32))
    with pytest.raises(CacheMismatchError, match="'data_fingerprint'.*'rows\\[train\\]' differs: cache has 60"):
        cache_teacher.run(opts(max_train_examples=N_TRAIN - 1))
    # corruption through the stage, then --rebuild repairs it
    cls_file = cache_dir / "train" / "shard-00000-of-00001" / "cls.npy"
    raw = bytearray(cls_file.read_bytes())
    raw[-1] ^= 0x01
    cls_file.write_bytes(bytes(raw))
    with pytest.raises(CacheCorruptError, match="cls.npy: sha256 differs"):
        cache_teacher.run(opts())
    rebuilt = cache_teacher.run(opts(rebuild=True))
    assert rebuilt["skipped"] is False and rebuilt["rows_per_s"] > 0 and rebuilt["verify_s"] >= 0
    assert json.loads((cache_dir / "manifest.json").read_text())["created_at"] >= created
    a = TeacherCache.open(cache_dir).split("train")
    b = TeacherCache.open(dirs[1]).split("train")
    torch.testing.assert_close(a.logits(), b.logits(), rtol=0, atol=1e-6)
    # a different teacher (other weights) is refused by fingerprint
    other = tmp_path / "other_teacher"
    shutil.copytree(teacher, other)
    cfg = json.loads((other / "config.json").read_text())
    cfg["classifier_dropout"] = 0.2
    (other / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CacheMismatchError, match="field 'teacher_fingerprint' differs"):
        cache_teacher.run(opts(teacher_dir=str(other)))
    # and the rebuilt cache is skipped the next time
    assert cache_teacher.run(opts())["skipped"] is True


def test_length_run_batches_cache_equals_fixed_size_batches(tmp_path, teacher, glue_dir, monkeypatch):
    """The pass's length-run batches (issue 16: no padding where a length has enough rows) give the cache
    that fixed-size length-sorted batches gave, to rounding: the same rows, logits within 1e-6, [CLS]
    states within one fp16 step (a padded key changes the order of fp32 sums inside attention)."""
    from reliab_helpers import cli

    from dist_peakd.data.sampler import length_run_batches
    from dist_peakd.stages import cache_teacher

    calls = []

    def recording(lengths, max_rows, min_fill=0.5):
        batches = length_run_batches(lengths, max_rows, min_fill)
        calls.append((np.asarray(lengths), batches))
        return batches

    def fixed_size(lengths, max_rows, min_fill=0.5):
        order = np.argsort(-np.asarray(lengths), kind="stable")
        return [order[i:i + max_rows].tolist() for i in range(0, len(order), max_rows)]

    opts = dict(task="sst2", output_dir=str(tmp_path / "runs"), glue_dir=str(glue_dir), teacher_dir=str(teacher),
                max_length=32, max_train_examples=400, max_eval_examples=64, cache_batch_size=32,
                cache_dir=str(tmp_path / "tok"), ds_config="fp32_zero0")
    built = {}
    for name, batching in (("runs", recording), ("fixed", fixed_size)):
        monkeypatch.setattr(cache_teacher, "length_run_batches", batching)
        code, _ = cli("cache-teacher", dict(opts, output_dir=str(tmp_path / name)))
        assert code == 0
        built[name] = TeacherCache.open(tmp_path / name / "sst2" / "teacher_cache", verify="checksum")
    lengths, batches = calls[0]  # train: the batching differs, with more batches of a single length
    def single(bs):
        return sum(len(set(lengths[b].tolist())) == 1 for b in bs)
    assert batches != fixed_size(lengths, 32) and single(batches) > single(fixed_size(lengths, 32))
    for split in ("train", "dev"):
        a, b = built["runs"].split(split), built["fixed"].split(split)
        np.testing.assert_array_equal(np.sort(a.ids), np.sort(b.ids))
        la, ca = a.lookup(a.ids)
        lb, cb = b.lookup(a.ids)
        torch.testing.assert_close(la, lb, rtol=0, atol=1e-6)
        torch.testing.assert_close(ca.float(), cb.float(), rtol=1e-3, atol=1e-3)
    assert built["runs"].teacher_dev_metrics == pytest.approx(built["fixed"].teacher_dev_metrics)


def test_default_inference_rows_per_device():
    from dist_peakd.stages.cache_teacher import CPU_BATCH_BUDGET, inference_rows

    assert inference_rows(48, "cpu", 2, 32, 4) == 48 and inference_rows(48, "cuda", 1, 384, 12) == 48  # as given
    assert inference_rows(None, "cuda", 4, 384, 12) == 256
    rows = inference_rows(None, "cpu", 1, 32, 4)  # the tiny 4 x 32 BERT: short rows, big batches
    assert CPU_BATCH_BUDGET == 4 * 2**20
    assert (rows(13), rows(64)) == (4194304 // (13 * (32 + 4 * 13)), 4194304 // (64 * (32 + 4 * 64))) == (3840, 227)
    minilm = inference_rows(None, "cpu", 2, 384, 12)  # per rank's share: twice the rows on 2 ranks
    assert (minilm(70), minilm(128)) == (2 * 48, 2 * 17)
    assert rows(1) == 8192 and inference_rows(None, "cpu", 1, 10**9, 1)(512) == 1  # the bounds
