"""Reliability row 5: bad configuration is refused before any work starts, naming the option
(exit status 2, nothing written to output_dir), through the CLI."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from reliab_helpers import run_cli


def _run(args: list[str], capsys) -> tuple[int, str]:
    code, out, err = run_cli(args, capsys)
    return code, err + out


@pytest.fixture()
def bad_json(tmp_path) -> Path:
    path = tmp_path / "broken_ds.json"
    path.write_text('{"train_micro_batch_size_per_gpu": 4,,}')
    return path


@pytest.fixture()
def config_with_unknown_key(tmp_path) -> Path:
    path = tmp_path / "run.yaml"
    path.write_text("lr: 3.0e-5\nlearning_rate_typo: 1.0\n")
    return path


# (stage, extra arguments, WORLD_SIZE, text the message must contain)
CASES = [
    ("distill", ["--temperature", "0"], None, "option temperature"),
    ("distill", ["--temperature", "-2"], None, "option temperature"),
    ("distill", ["--alpha", "1.5"], None, "option alpha"),
    ("distill", ["--alpha", "-0.1"], None, "option alpha"),
    ("distill", ["--beta", "-1"], None, "option beta"),
    ("distill", ["--k", "0"], None, "option k"),
    ("distill", ["--k", "5"], None, "option k: student depth 5 exceeds the backbone's 4 layers"),
    ("finetune-teacher", ["--batch_size", "8", "--micro_batch_size", "3"], None, "option batch_size"),
    ("finetune-teacher", ["--batch_size", "6", "--micro_batch_size", "2"], "2",
     "option batch_size: global batch 6 is not divisible by micro_batch_size x ranks = 2 x 2 = 4"),
    ("finetune-teacher", ["--batch_size", "7"], "2", "micro_batch_size x ranks = 3 x 2 = 6"),
    ("finetune-teacher", ["--learning_rate", "1e-3"], None, "unknown option --learning_rate"),
    ("distill", ["--temprature", "2"], None, "unknown option --temprature (did you mean --temperature?)"),
    ("finetune-teacher", ["--config", "{config_with_unknown_key}"], None, "unknown option(s) ['learning_rate_typo']"),
    ("finetune-teacher", ["--ds_config", "no_such_config"], None, "option ds_config: file 'no_such_config' not found"),
    ("finetune-teacher", ["--ds_config", "{bad_json}"], None, "option ds_config: {bad_json} is not valid JSON"),
    ("finetune-teacher", ["--precision", "fp16"], None, "option precision: fp16 needs a CUDA GPU"),
    ("finetune-teacher", ["--ds_config", "fp16_zero1"], None, "option precision: fp16 needs a CUDA GPU"),
    ("finetune-teacher", ["--nan_policy", "ignore"], None, "option nan_policy"),
    ("finetune-teacher", ["--keep_checkpoints", "0"], None, "option keep_checkpoints"),
    ("finetune-teacher", ["--save_every_steps", "-1"], None, "option save_every_steps"),
    ("finetune-teacher", ["--epochs", "0"], None, "option epochs"),
]


@pytest.mark.parametrize("stage,args,world,needle", CASES,
                         ids=[f"{c[0]}{''.join(c[1])}{'-ws' + c[2] if c[2] else ''}" for c in CASES])
def test_bad_option_is_refused_before_any_work(stage, args, world, needle, tmp_path, tiny_bert, glue_dir, capsys,
                                               monkeypatch, bad_json, config_with_unknown_key):
    import torch

    if "fp16" in " ".join(args) and torch.cuda.is_available():
        pytest.skip("fp16 is allowed on a GPU")
    fill = {"bad_json": bad_json, "config_with_unknown_key": config_with_unknown_key}
    args = [a.format(**fill) for a in args]
    needle = needle.format(**fill)
    if world:
        monkeypatch.setenv("WORLD_SIZE", world)
    else:
        monkeypatch.delenv("WORLD_SIZE", raising=False)
    out = tmp_path / "out"
    common = ["--task", "mrpc", "--output_dir", str(out), "--glue_dir", str(glue_dir), "--backbone", str(tiny_bert),
              "--cache_dir", str(tmp_path / "tok")]
    code, text = _run([stage, *common, *args], capsys)
    assert code == 2, text[-3000:]
    assert needle in text, text[-3000:]
    assert not out.exists(), f"something was written to output_dir: {sorted(out.rglob('*'))}"
    assert not (tmp_path / "tok").exists()


@pytest.mark.slow
def test_refusal_exit_status_through_a_real_process(tmp_path, tiny_bert):
    out = tmp_path / "out"
    env = dict(os.environ, DS_ACCELERATOR="cpu")
    env.pop("WORLD_SIZE", None)
    proc = subprocess.run([sys.executable, "-m", "dist_peakd.cli", "distill", "--temperature", "0",
                           "--output_dir", str(out), "--backbone", str(tiny_bert)],
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "option temperature: must be > 0, got 0" in proc.stderr
    assert not out.exists()
