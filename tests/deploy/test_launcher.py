"""The real ``deepspeed`` launcher on CPU (gloo): 1 rank vs 2 ranks give the same training losses; the 2-rank
run prints its console lines once."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.launcher, pytest.mark.slow]


def _launch(num_ranks: int, out: Path, backbone: Path, glue_dir: Path, tok_cache: Path) -> subprocess.CompletedProcess:
    deepspeed = shutil.which("deepspeed", path=str(Path(sys.executable).parent)) or "deepspeed"
    env = dict(os.environ, DS_ACCELERATOR="cpu", OMP_NUM_THREADS="1", HF_DATASETS_OFFLINE="1",
               HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    cmd = [deepspeed, "--num_gpus", str(num_ranks), "--master_port", str(29500 + num_ranks + os.getpid() % 1000),
           "--module", "dist_peakd.cli", "finetune-teacher",
           "--task", "mrpc", "--output_dir", str(out), "--glue_dir", str(glue_dir), "--backbone", str(backbone),
           "--max_length", "40", "--max_train_examples", "50", "--max_eval_examples", "24",
           "--batch_size", "8", "--epochs", "1", "--log_every_steps", "1", "--lr", "1e-3",
           "--eval_batch_size", "16", "--seed", "5", "--cache_dir", str(tok_cache)]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)


def _losses(out: Path) -> list[float]:
    lines = (out / "mrpc" / "teacher" / "train_log.jsonl").read_text().splitlines()
    return [json.loads(x)["train/loss"] for x in lines]


def test_one_vs_two_ranks_same_losses(tmp_path, tiny_bert_nodropout, glue_dir):
    tok = tmp_path / "tok"
    one = _launch(1, tmp_path / "r1", tiny_bert_nodropout, glue_dir, tok)
    assert one.returncode == 0, one.stdout[-3000:] + one.stderr[-3000:]
    two = _launch(2, tmp_path / "r2", tiny_bert_nodropout, glue_dir, tok)
    assert two.returncode == 0, two.stdout[-3000:] + two.stderr[-3000:]
    l1, l2 = _losses(tmp_path / "r1"), _losses(tmp_path / "r2")
    assert len(l1) == len(l2) == 7  # 50 examples / global batch 8 -> 7 steps, last one short (2 examples)
    for a, b in zip(l1, l2, strict=True):
        assert a == pytest.approx(b, rel=1e-5, abs=1e-6)
    s1 = json.loads((tmp_path / "r1" / "mrpc" / "teacher" / "summary.json").read_text())
    s2 = json.loads((tmp_path / "r2" / "mrpc" / "teacher" / "summary.json").read_text())
    assert s1["final"]["accuracy"] == pytest.approx(s2["final"]["accuracy"], abs=1e-9)
    tb_files = list((tmp_path / "r2" / "mrpc" / "teacher").glob("events.out.tfevents*"))
    assert len(tb_files) == 1, "rank 0 writes TensorBoard events, in the stage folder (the run's name)"
    # the console of the 2-rank run: banner, head re-initialisation line and outcome once each (rank 0), no
    # load report table
    out = two.stdout
    for line in ("[1/1] finetune-teacher: mrpc -> ", "[dist-peakd] teacher: new 2-label head",
                 "[dist-peakd] finetune-teacher done: f1 ", "[dist-peakd] summary: "):
        assert out.count(line) == 1, (line, out[-3000:])
    assert "LOAD REPORT" not in out + two.stderr and "MISMATCH" not in out + two.stderr
