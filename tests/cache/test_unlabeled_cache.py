"""Issue 25: the unlabeled pool in the teacher cache (split "unlabeled"): the teacher's outputs, the cache
identity covering the sources, 2 ranks = 1 rank, the disk check before the pass."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from reliab_helpers import run_cli
from test_cache import MAXLEN, _cli_args, _options

from dist_peakd.cache import UNLABELED_SPLIT, TeacherCache, bytes_per_row
from dist_peakd.data import read_glue_tsv
from dist_peakd.errors import CacheMismatchError

NEW_PAIRS = [("the cat sat on the mat .", "a cat was sitting on a mat ."),
             ("stocks rose sharply on monday .", "markets climbed at the start of the week ."),
             ("he left the company in 2003 .", "he quit in 2003 ."),
             ("the vote was delayed .", "lawmakers postponed the vote ."),
             ("rain is expected tomorrow .", "forecasters predict rain for tomorrow .")]


@pytest.fixture(scope="module")
def teacher(tmp_path_factory, tiny_bert) -> Path:
    """A tiny 'fine-tuned' teacher (random 2-label head on the tiny BERT), as tests/cache/test_cache.py makes it."""
    from transformers import AutoTokenizer

    from dist_peakd.models import load_teacher

    out = tmp_path_factory.mktemp("teacher") / "best"
    torch.manual_seed(0)
    load_teacher(tiny_bert, 2).save_pretrained(str(out))
    AutoTokenizer.from_pretrained(str(tiny_bert)).save_pretrained(str(out))
    return out


def _pool(folder: Path, glue_dir: Path, name: str = "pool.txt") -> Path:
    """5 new pairs, one MRPC dev pair (upper-cased, extra spaces: still a duplicate) and one repeat."""
    dev = read_glue_tsv("mrpc", glue_dir / "MRPC" / "dev.tsv", "dev")
    planted = (dev["text_a"][3].upper() + "  ", dev["text_b"][3])
    lines = [f"{a}\t{b}" for a, b in [*NEW_PAIRS[:3], planted, *NEW_PAIRS[3:], NEW_PAIRS[0]]]
    path = folder / name
    path.write_text("\n".join(lines) + "\n")
    return path


def _opts(out: Path, teacher: Path, glue_dir: Path, tok: Path, **kw):
    from dist_peakd.config import build_options
    from dist_peakd.stages.cache_teacher import CacheTeacherOptions

    return build_options(CacheTeacherOptions, **_options(out, teacher, glue_dir, tok, **kw))


@pytest.fixture(scope="module")
def pool_cache(tmp_path_factory, teacher, glue_dir):
    """One in-process cache-teacher run (1 rank) with the pool: ``(cache_dir, options kwargs, pool file)``."""
    from dist_peakd.stages import cache_teacher

    root = tmp_path_factory.mktemp("unlabeled_cache")
    pool = _pool(root, glue_dir)
    kw = dict(unlabeled_file=str(pool))
    summary = cache_teacher.run(_opts(root / "r1", teacher, glue_dir, root / "tok", **kw))
    assert summary["rows"][UNLABELED_SPLIT] == 5
    return root / "r1" / "mrpc" / "teacher_cache", root, kw


def test_pool_rows_reach_the_cache_with_the_teachers_outputs_and_no_label(pool_cache, teacher, glue_dir):
    from dist_peakd.models import load_teacher, teacher_forward
    from dist_peakd.stages.common import collator_for, load_tokenizer, prepare_data

    cache_dir, root, kw = pool_cache
    opts = _opts(root / "r1", teacher, glue_dir, root / "tok", **kw)
    tokenizer = load_tokenizer(str(teacher))
    data = prepare_data(opts, tokenizer, unlabeled=True)
    pool = data.unlabeled
    assert len(pool) == 5 and set(pool.column_names) == set(data.train.column_names)
    assert pool["label"] == [-1] * 5 and pool["idx"] == list(range(5))
    assert data.unlabeled_info.rows["text_a"] == [a for a, _ in NEW_PAIRS]  # the dev pair and the repeat dropped
    record = data.unlabeled_info.sources[0]
    assert (record["rows_read"], record["kept"], record["dropped_labelled_duplicates"],
            record["dropped_pool_duplicates"]) == (7, 5, 1, 1)
    cache = TeacherCache.open(cache_dir)
    assert cache.has_split(UNLABELED_SPLIT) and cache.manifest["unlabeled_fingerprint"] == data.unlabeled_fingerprint
    assert cache.manifest["unlabeled"]["sources"][0]["kept"] == 5
    batch = collator_for(tokenizer)([pool[i] for i in range(5)])
    model = load_teacher(teacher, 2).eval()
    with torch.no_grad():
        out = teacher_forward(model, batch["input_ids"], batch["attention_mask"], batch["token_type_ids"])
    ids = batch["example_ids"].flip(0)  # any order
    logits, cls = cache.split(UNLABELED_SPLIT).lookup(ids)
    torch.testing.assert_close(logits, out.logits.flip(0), rtol=0, atol=1e-5)
    torch.testing.assert_close(cls.float(), torch.stack(out.cls_states, 1).flip(0), rtol=2e-3, atol=2e-3)
    # the labelled splits are the same as a cache without the pool would hold
    assert cache.manifest["splits"]["train"]["rows"] == len(data.train)


def test_cache_identity_covers_the_unlabeled_sources(pool_cache, teacher, glue_dir, tmp_path):
    from dist_peakd.stages import cache_teacher

    cache_dir, root, kw = pool_cache
    out = tmp_path / "run"
    shutil.copytree(cache_dir, out / "mrpc" / "teacher_cache")
    tok = root / "tok"
    assert cache_teacher.run(_opts(out, teacher, glue_dir, tok, **kw))["skipped"] is True
    extra = tmp_path / "more.txt"
    extra.write_text("an extra pair\tof sentences\n")
    for changed in ({"unlabeled_file": [kw["unlabeled_file"], str(extra)]}, {}):  # a file added; the pool removed
        with pytest.raises(CacheMismatchError, match="field 'unlabeled_fingerprint' differs"):
            cache_teacher.run(_opts(out, teacher, glue_dir, tok, **changed))
    rebuilt = cache_teacher.run(_opts(out, teacher, glue_dir, tok, rebuild=True,
                                      unlabeled_file=[kw["unlabeled_file"], str(extra)]))
    assert rebuilt["skipped"] is False and rebuilt["rows"][UNLABELED_SPLIT] == 6
    # the same file's bytes changed: a different cache too
    Path(kw["unlabeled_file"]).write_text(Path(kw["unlabeled_file"]).read_text())  # same bytes: same pool
    cache_teacher.run(_opts(out, teacher, glue_dir, tok, unlabeled_file=[kw["unlabeled_file"], str(extra)]))
    extra.write_text("an extra pair\tof other sentences\n")
    with pytest.raises(CacheMismatchError, match="field 'unlabeled_fingerprint' differs"):
        cache_teacher.run(_opts(out, teacher, glue_dir, tok, unlabeled_file=[kw["unlabeled_file"], str(extra)]))


def test_disk_check_prints_the_size_and_refuses_a_full_disk(pool_cache, teacher, glue_dir, tmp_path, capsys,
                                                            monkeypatch):
    from dist_peakd.stages import cache_teacher

    _, root, kw = pool_cache
    out = tmp_path / "run"
    args = ["cache-teacher", *[f"--{k}={v}" for k, v in _options(out, teacher, glue_dir, root / "tok", **kw).items()]]
    rows = 60 + 24 + 5
    per_row = bytes_per_row(2, 4, 32)
    assert per_row == 4 * 2 + 2 * 4 * 32 + 8
    free = rows * per_row - 1
    real = shutil.disk_usage
    monkeypatch.setattr(cache_teacher.shutil, "disk_usage",
                        lambda p: real(p)._replace(free=free))
    code, stdout, err = run_cli(args, capsys)
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert code == 6 and len(lines) == 1, err
    assert f"not enough free disk space for the teacher cache: {rows} rows x {per_row} bytes" in lines[0]
    assert "teacher_cache" in lines[0]
    assert not (out / "mrpc" / "teacher_cache").exists()
    assert not list((out / "mrpc").glob(".tmp-*"))
    monkeypatch.setattr(cache_teacher.shutil, "disk_usage", lambda p: real(p)._replace(free=free + 1))
    code, stdout, err = run_cli(args, capsys)
    assert code == 0, err
    assert f"teacher cache: {rows} rows x {per_row} bytes" in stdout


@pytest.mark.launcher
@pytest.mark.slow
def test_two_ranks_equal_one_rank_for_the_unlabeled_split(pool_cache, teacher, glue_dir):
    """The real deepspeed launcher (CPU, gloo) with 2 ranks against the in-process 1-rank cache."""
    cache_dir, root, kw = pool_cache
    deepspeed = shutil.which("deepspeed", path=str(Path(sys.executable).parent)) or "deepspeed"
    env = dict(os.environ, DS_ACCELERATOR="cpu", OMP_NUM_THREADS="1", HF_DATASETS_OFFLINE="1",
               HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    env = {k: v for k, v in env.items() if k not in ("MASTER_ADDR", "MASTER_PORT", "RANK", "LOCAL_RANK", "WORLD_SIZE")}
    out = root / "r2"
    cmd = [deepspeed, "--num_gpus", "2", "--master_port", str(29700 + os.getpid() % 1000),
           "--module", "dist_peakd.cli", "cache-teacher", *_cli_args(**_options(out, teacher, glue_dir, root / "tok",
                                                                               **kw))]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    one, two = TeacherCache.open(cache_dir), TeacherCache.open(out / "mrpc" / "teacher_cache")
    assert len(two.manifest["splits"][UNLABELED_SPLIT]["shards"]) == 2
    assert one.manifest["unlabeled_fingerprint"] == two.manifest["unlabeled_fingerprint"]
    a, b = one.split(UNLABELED_SPLIT), two.split(UNLABELED_SPLIT)
    np.testing.assert_array_equal(a.ids, b.ids)
    ids = np.random.default_rng(0).permutation(a.ids)
    (la, ca), (lb, cb) = a.lookup(ids), b.lookup(ids)
    torch.testing.assert_close(la, lb, rtol=0, atol=1e-6)
    torch.testing.assert_close(ca, cb, rtol=1e-3, atol=1e-3)
    assert json.loads((out / "mrpc" / "teacher_cache" / "manifest.json").read_text())["world_size"] == 2
    assert MAXLEN == one.manifest["max_length"]
