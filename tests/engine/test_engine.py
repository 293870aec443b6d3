"""Engine + training loop, in one process: exact resume, TensorBoard scalars, exports, precision."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from engine_steps import train_step
from safetensors.torch import load_file

from dist_peakd.config import build_options
from dist_peakd.errors import StopRequested
from dist_peakd.stages import finetune_teacher
from dist_peakd.stages.finetune_teacher import FinetuneTeacherOptions


def _opts(tmp: Path, backbone: Path, glue_dir: Path, **kw) -> FinetuneTeacherOptions:
    base = dict(task="mrpc", output_dir=str(tmp), glue_dir=str(glue_dir), backbone=str(backbone),
                max_length=48, max_train_examples=48, max_eval_examples=40, batch_size=8, epochs=2,
                eval_batch_size=16, log_every_steps=1, lr=1e-3, seed=3, cache_dir=str(tmp.parent / "tok"))
    base.update(kw)
    return build_options(FinetuneTeacherOptions, **base)


def _weights(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(str(folder / "model.safetensors"))


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, tiny_bert, glue_dir):
    out = tmp_path_factory.mktemp("full") / "run"
    summary = finetune_teacher.run(_opts(out, tiny_bert, glue_dir))
    return out, summary


def test_resume_equals_uninterrupted_run(tmp_path, tiny_bert, glue_dir, uninterrupted):
    full_dir, full_summary = uninterrupted
    out = tmp_path / "run"
    with pytest.raises(StopRequested):
        finetune_teacher.run(_opts(out, tiny_bert, glue_dir, stop_after_steps=4))  # mid-epoch 1 (6 steps/epoch)
    assert (out / "mrpc" / "teacher" / "checkpoints" / "latest").read_text().strip() == "step-00000004"
    resumed = finetune_teacher.run(_opts(out, tiny_bert, glue_dir))
    assert resumed["final"] == full_summary["final"]
    assert resumed["history"] == full_summary["history"]
    a = _weights(full_dir / "mrpc" / "teacher" / "final")
    b = _weights(out / "mrpc" / "teacher" / "final")
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0, msg=k)
    # the losses logged after the resume point equal the uninterrupted run's
    log_full = [json.loads(x) for x in (full_dir / "mrpc/teacher/train_log.jsonl").read_text().splitlines()]
    log_res = [json.loads(x) for x in (out / "mrpc/teacher/train_log.jsonl").read_text().splitlines()]
    assert [r["train/loss"] for r in log_full] == [r["train/loss"] for r in log_res]
    # once complete, the exact-resume checkpoints are gone (both runs), and a rerun reuses the stage as it is
    for run in (full_dir, out):
        assert not (run / "mrpc" / "teacher" / "checkpoints").exists()
    mtime = (out / "mrpc" / "teacher" / "summary.json").stat().st_mtime_ns
    again = finetune_teacher.run(_opts(out, tiny_bert, glue_dir))
    assert again.pop("reused") is True
    assert again == json.loads((out / "mrpc" / "teacher" / "summary.json").read_text())
    assert (out / "mrpc" / "teacher" / "summary.json").stat().st_mtime_ns == mtime
    assert len(list((out / "mrpc" / "teacher").glob("events.out.tfevents.*"))) == 2  # the stopped run + resume


def test_rerunning_a_stop_after_steps_command_advances_that_many_steps(tmp_path, tiny_bert, glue_dir,
                                                                       uninterrupted):
    """--stop_after_steps counts the steps of this invocation: the identical command rerun resumes and runs N
    more (4, 8 of 12), and the invocation that reaches the run's last step finishes it; the metrics equal
    the uninterrupted run's."""
    _, full_summary = uninterrupted
    out = tmp_path / "run"
    latest = out / "mrpc" / "teacher" / "checkpoints" / "latest"
    for step in (4, 8):
        with pytest.raises(StopRequested, match=rf"stopped after step {step} of 12 \(4 steps this run"):
            finetune_teacher.run(_opts(out, tiny_bert, glue_dir, stop_after_steps=4))
        assert latest.read_text().strip() == f"step-{step:08d}"
    resumed = finetune_teacher.run(_opts(out, tiny_bert, glue_dir, stop_after_steps=4))  # steps 9-12: done
    assert resumed["final"] == full_summary["final"] and resumed["history"] == full_summary["history"]
    assert (out / "mrpc" / "teacher" / "summary.json").is_file()


def test_final_shares_the_files_best_has_identical(uninterrupted):
    """final/ and best/ are complete folders; identical files (e.g. the weights when the last evaluation was
    the best) are stored once, as hard links."""
    out, summary = uninterrupted
    stage = out / "mrpc" / "teacher"
    best, final = stage / "best", stage / "final"
    same_step = summary["best"]["step"] == summary["final"]["step"]
    assert (best / "model.safetensors").samefile(final / "model.safetensors") == same_step
    assert (best / "tokenizer.json").samefile(final / "tokenizer.json")  # same tokenizer either way
    from dist_peakd.integrity import verify_export

    verify_export(best)
    verify_export(final)


def test_kept_checkpoints_and_an_early_stop(tmp_path, tiny_bert, glue_dir, monkeypatch):
    """--keep_checkpoints_after_success keeps checkpoints/; a hook raising EarlyStopped (a sweep's ASHA) ends
    the run after that evaluation with best/ and a summary marked stopped, no final/, no checkpoints."""
    kept = tmp_path / "kept"
    finetune_teacher.run(_opts(kept, tiny_bert, glue_dir, epochs=1, keep_checkpoints_after_success=True))
    assert (kept / "mrpc" / "teacher" / "checkpoints" / "latest").is_file()

    (tmp_path / "stop_plugin.py").write_text(
        "from dist_peakd.errors import EarlyStopped\n\n"
        "class Stop:\n"
        "    def on_eval(self, step, metrics):\n"
        "        if step == 2:\n"
        "            raise EarlyStopped(step, 'asha')\n\n"
        "def trainer_hooks():\n"
        "    return [Stop()]\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("DIST_PEAKD_PLUGINS", "stop_plugin")
    out = tmp_path / "stopped"
    summary = finetune_teacher.run(_opts(out, tiny_bert, glue_dir, eval_every_steps=2))
    stage = out / "mrpc" / "teacher"
    assert summary["stopped"] == {"step": 2, "by": "asha"} and summary["total_steps"] == 12
    assert [h["step"] for h in summary["history"]] == [2] and summary["final"]["step"] == 2
    assert json.loads((stage / "summary.json").read_text())["stopped"] == {"step": 2, "by": "asha"}
    assert (stage / "best" / "model.safetensors").is_file()
    assert not (stage / "final").exists() and not (stage / "checkpoints").exists()


def test_exports_are_hf_folders_with_tokenizer(uninterrupted):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    out, summary = uninterrupted
    stage = out / "mrpc" / "teacher"
    for name in ("best", "final"):
        model = AutoModelForSequenceClassification.from_pretrained(str(stage / name))
        assert model.config.num_labels == 2
        AutoTokenizer.from_pretrained(str(stage / name))
        info = json.loads((stage / name / "dist_peakd.json").read_text())
        assert info["task"] == "mrpc"
    assert summary["best"]["f1"] >= summary["final"]["f1"]
    assert set(summary["final"]) >= {"f1", "accuracy", "step"}
    saved = json.loads((stage / "stage_options.json").read_text())
    assert saved["max_length"] == 48 and saved["task"] == "mrpc"


def test_tensorboard_has_the_listed_scalars(uninterrupted):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out, _ = uninterrupted
    acc = EventAccumulator(str(out / "mrpc" / "teacher"))  # the stage folder: TensorBoard's run "teacher"
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    for tag in ("train/loss", "train/ce", "train/lr", "train/grad_norm", "train/samples_per_s",
                "train/tokens_per_s", "eval/f1", "eval/accuracy", "eval/loss", "best/f1"):
        assert tag in tags, f"{tag} missing from {sorted(tags)}"
    assert len(acc.Scalars("train/loss")) == 12  # 2 epochs x 6 steps, logged every step
    assert "config" in "".join(acc.Tags()["tensors"])


def test_bf16_on_cpu_trains_like_fp32(tmp_path, tiny_bert_nodropout, glue_dir):
    """bf16 + ZeRO-1 takes the same two steps as fp32 within bf16 rounding, and exports fp32 weights."""
    def losses(name: str, **kw) -> list[float]:
        out = tmp_path / name
        summary = finetune_teacher.run(_opts(out, tiny_bert_nodropout, glue_dir, epochs=1, max_train_examples=16, **kw))
        assert summary["total_steps"] == 2
        return [json.loads(x)["train/loss"] for x in (out / "mrpc/teacher/train_log.jsonl").read_text().splitlines()]

    bf16, fp32 = losses("bf16", precision="bf16", zero_stage=1), losses("fp32")
    assert len(bf16) == len(fp32) == 2
    assert bf16 == pytest.approx(fp32, rel=5e-2)
    assert bf16 != fp32  # the forward really ran in bf16
    weights = _weights(tmp_path / "bf16" / "mrpc" / "teacher" / "final")
    assert {w.dtype for w in weights.values()} == {torch.float32}


def test_fp16_on_cpu_fails_before_work(tmp_path, tiny_bert, glue_dir, capsys):
    from dist_peakd import cli
    from dist_peakd.errors import ConfigError

    with pytest.raises(ConfigError, match="fp16 needs a CUDA GPU"):
        _opts(tmp_path / "fp16", tiny_bert, glue_dir, precision="fp16")
    with pytest.raises(ConfigError, match="fp16 needs a CUDA GPU"):
        _opts(tmp_path / "fp16", tiny_bert, glue_dir, ds_config="fp16_zero1")
    out = tmp_path / "cli"
    with pytest.raises(SystemExit) as info:  # the stage command itself: refused with exit 2, nothing written
        cli.main(["finetune-teacher", "--task", "mrpc", "--output_dir", str(out), "--glue_dir", str(glue_dir),
                  "--backbone", str(tiny_bert), "--precision", "fp16", "--cache_dir", str(tmp_path / "tok")])
    assert info.value.code == 2
    assert "fp16 needs a CUDA GPU" in capsys.readouterr().err
    assert not out.exists() and not (tmp_path / "tok").exists()


class _Toy(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = torch.nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lin(x.to(self.lin.weight.dtype))


@pytest.mark.parametrize("ds_config", ["fp32_zero0", "fp32_zero1", "fp32_zero2", "zero2_offload",
                                       "bf16_zero0", "bf16_zero1", "bf16_zero2", "autocast_bf16_zero0",
                                       "autocast_bf16_zero1"])
def test_every_cpu_capable_ds_config_trains_like_fp32(ds_config):
    """Each shipped config builds an engine on CPU and takes the same 3 steps as plain fp32 ZeRO-0
    (exactly for the fp32 family, within bf16 rounding otherwise)."""
    from dist_peakd.engine import Engine, EngineOptions, LossOutput

    x = torch.randn(8, 4, generator=torch.Generator().manual_seed(0))
    y = torch.tensor([0, 1, 1, 0, 1, 0, 0, 1])

    def loss_fn(model, batch):
        loss = torch.nn.functional.cross_entropy(model(batch["x"]).float(), batch["y"], reduction="sum")
        return LossOutput(total=loss, terms={"ce": loss.detach()}, count=len(batch["y"]))

    def three_steps(cfg: str) -> float:
        torch.manual_seed(0)
        engine = Engine(_Toy(), EngineOptions(ds_config=cfg, batch_size=8, lr=1e-2), total_steps=10)
        for _ in range(3):
            out = train_step(engine, [{"input_ids": x, "x": x, "y": y}], 8, loss_fn)
        return out["ce"]

    reference, value = three_steps("fp32_zero0"), three_steps(ds_config)
    tol = 0 if ds_config.startswith(("fp32", "zero2")) else 2e-2
    assert value == pytest.approx(reference, rel=tol, abs=1e-5 if tol == 0 else tol)
