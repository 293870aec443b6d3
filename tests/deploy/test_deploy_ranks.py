"""evaluate and predict through the real launcher: 2 ranks write what 1 process writes, byte for byte."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from dist_peakd.config import build_options
from dist_peakd.stages import finetune_teacher

pytestmark = [pytest.mark.launcher, pytest.mark.slow]


@pytest.fixture(scope="module")
def teacher(tmp_path_factory, tiny_bert, glue_dir) -> Path:
    """A tiny STS-B teacher (regression: Pearson moves with every logit, a strict comparison)."""
    out = tmp_path_factory.mktemp("ranks")
    opts = build_options(finetune_teacher.FinetuneTeacherOptions, task="stsb", output_dir=str(out),
                         glue_dir=str(glue_dir), backbone=str(tiny_bert), cache_dir=str(out / "tok"), max_length=40,
                         max_train_examples=48, max_eval_examples=45, batch_size=16, eval_batch_size=8, epochs=1,
                         lr=1e-3)
    finetune_teacher.run(opts)
    return out / "stsb" / "teacher" / "final"


def _cli(ranks: int, stage: str, args: list[str]) -> subprocess.CompletedProcess:
    rendezvous = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")  # this pytest's own world
    env = {k: v for k, v in os.environ.items() if k not in rendezvous}
    env.update(DS_ACCELERATOR="cpu", OMP_NUM_THREADS="1", HF_DATASETS_OFFLINE="1", HF_HUB_OFFLINE="1",
               TOKENIZERS_PARALLELISM="false")
    if ranks == 1:
        cmd = [sys.executable, "-m", "dist_peakd.cli", stage, *args]
    else:
        deepspeed = shutil.which("deepspeed", path=str(Path(sys.executable).parent)) or "deepspeed"
        cmd = [deepspeed, "--num_gpus", str(ranks), "--master_port", str(29700 + os.getpid() % 1000),
               "--module", "dist_peakd.cli", stage, *args]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600, stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def _common(teacher: Path, glue_dir: Path, work: Path) -> list[str]:
    return ["--model_dir", str(teacher), "--glue_dir", str(glue_dir), "--output_dir", str(work),
            "--cache_dir", str(work / "tok"), "--max_eval_examples", "45", "--eval_batch_size", "8"]


def test_evaluate_on_two_ranks_gives_the_one_rank_metrics(teacher, glue_dir, tmp_path):
    results = {}
    for ranks in (1, 2):
        out = tmp_path / f"eval{ranks}.json"
        _cli(ranks, "evaluate", [*_common(teacher, glue_dir, tmp_path), "--out", str(out)])
        results[ranks] = json.loads(out.read_text())
    assert results[2]["world_size"] == 2 and results[1]["world_size"] == 1
    assert results[1]["rows"] == results[2]["rows"] == 45
    assert results[2]["metrics"] == results[1]["metrics"]  # exactly: same batches, whole on one rank each


def test_predict_on_two_ranks_writes_the_one_rank_files(teacher, glue_dir, tmp_path):
    texts = {}
    for ranks in (1, 2):
        folder = tmp_path / f"pred{ranks}"
        _cli(ranks, "predict", [*_common(teacher, glue_dir, tmp_path), "--split", "test",
                                "--out", str(folder / "stsb_test.tsv")])
        texts[ranks] = {name: (folder / name).read_text() for name in ("stsb_test.tsv", "STS-B.tsv")}
    assert texts[2] == texts[1]
    lines = texts[1]["STS-B.tsv"].splitlines()
    assert lines[0] == "index\tprediction" and len(lines) == 46
    assert all(float(line.split("\t")[1]) == float(line.split("\t")[1]) for line in lines[1:])  # floats, no NaN
