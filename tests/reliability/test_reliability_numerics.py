"""Reliability row 4: a NaN/inf loss stops naming the step and the term, or skips the step on every
rank consistently (``nan_policy=skip``); fp16 overflow skips are reported (GPU only)."""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import pytest
import torch
from engine_steps import train_step
from torch import nn

from dist_peakd.engine import Engine, EngineOptions, LossOutput, NonFiniteLossError, init_distributed


class TinyClassifier(nn.Module):
    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.emb = nn.Embedding(50, 8)
        self.head = nn.Linear(8, 2)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.head(self.emb(input_ids).mean(1))


def _batches(n: int, size: int = 4, seed: int = 1) -> list[dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    return [{"input_ids": torch.randint(0, 50, (size, 6), generator=g),
             "attention_mask": torch.ones(size, 6, dtype=torch.long),
             "labels": torch.randint(0, 2, (size,), generator=g)} for _ in range(n)]


def nan_at(engine_ref: list, bad_step: int, term: str = "kd", bad_ranks: tuple[int, ...] | None = None,
           value: float = float("nan")):
    """A loss_fn with terms 'ce' and 'kd' whose ``term`` is ``value`` at optimizer step ``bad_step``."""

    def loss_fn(model: nn.Module, batch: dict[str, torch.Tensor]) -> LossOutput:
        logits = model(batch["input_ids"]).float()
        ce = nn.functional.cross_entropy(logits, batch["labels"], reduction="sum")
        kd = (logits ** 2).sum() * 0.01
        engine = engine_ref[0]
        if engine.global_step + 1 == bad_step and (bad_ranks is None or engine.dist.rank in bad_ranks):
            if term == "kd":
                kd = kd * value
            else:
                ce = ce * value
        total = ce + kd
        return LossOutput(total=total, terms={"ce": ce.detach(), "kd": kd.detach()}, count=len(logits))

    return loss_fn


def _engine(nan_policy: str, ds_config: str = "fp32_zero0", **kw) -> tuple[Engine, list]:
    opts = EngineOptions(ds_config=ds_config, batch_size=4, nan_policy=nan_policy, lr=1e-2,
                         warmup_ratio=0.0, **kw)
    engine = Engine(TinyClassifier(), opts, total_steps=10, dist_info=init_distributed())
    return engine, [engine]


def _params(engine: Engine) -> dict[str, torch.Tensor]:
    return {k: v.detach().float().clone() for k, v in engine.module.state_dict().items()}


def test_nan_loss_stops_naming_step_and_term():
    engine, ref = _engine("stop")
    loss_fn = nan_at(ref, bad_step=3, term="kd")
    batches = _batches(3)
    train_step(engine, [batches[0]], 4, loss_fn)
    train_step(engine, [batches[1]], 4, loss_fn)
    before = _params(engine)
    with pytest.raises(NonFiniteLossError, match=r"step 3 .*kd=nan") as info:
        train_step(engine, [batches[2]], 4, loss_fn)
    assert "ce=" not in str(info.value)  # only the bad term is named
    after = _params(engine)
    assert all(torch.equal(before[k], after[k]) for k in before), "no update from the bad step"


def test_inf_loss_stops_naming_the_ce_term():
    engine, ref = _engine("stop")
    with pytest.raises(NonFiniteLossError, match=r"step 1 .*ce=inf"):
        train_step(engine, [_batches(1)[0]], 4, nan_at(ref, bad_step=1, term="ce", value=float("inf")))


@pytest.mark.parametrize("ds_config", ["fp32_zero0", "fp32_zero1", "fp32_zero2", "bf16_zero0", "bf16_zero1"])
def test_skip_policy_leaves_weights_optimizer_and_lr_untouched(ds_config):
    engine, ref = _engine("skip", ds_config=ds_config)
    loss_fn = nan_at(ref, bad_step=3, term="kd")
    batches = _batches(5)
    for b in batches[:2]:
        out = train_step(engine, [b], 4, loss_fn)
        assert out["skipped"] == 0.0
    before, lr_before = _params(engine), engine.lr()
    opt_steps = [s.get("step") for s in engine._client_optimizer.state.values()]
    out = train_step(engine, [batches[2]], 4, loss_fn)
    assert out["skipped"] == 1.0 and out["count"] == 0.0 and set(out) >= {"ce", "kd", "loss"}
    assert engine.global_step == 3 and engine.skipped_steps == 1
    after = _params(engine)
    for k in before:
        assert torch.equal(before[k], after[k]), f"{k} changed on a skipped step"
    assert engine.lr() == lr_before
    assert [s.get("step") for s in engine._client_optimizer.state.values()] == opt_steps
    # training goes on normally after the skipped step, with finite weights
    for b in batches[3:]:
        out = train_step(engine, [b], 4, loss_fn)
        assert out["skipped"] == 0.0
    final = _params(engine)
    assert all(torch.isfinite(v).all() for v in final.values())
    assert any(not torch.equal(before[k], final[k]) for k in before)
    assert engine.skipped_steps == 1


def test_skip_with_gradient_accumulation_discards_the_whole_step():
    engine, ref = _engine("skip", micro_batch_size=2)
    assert engine.gradient_accumulation_steps == 2
    calls = {"n": 0}
    base = nan_at(ref, bad_step=0)  # never bad by step; poison the first micro-batch of step 2 by hand

    def loss_fn(model, batch):
        out = base(model, batch)
        calls["n"] += 1
        if calls["n"] == 3:  # step 2, first of two micro-batches
            out = LossOutput(total=out.total * float("nan"), terms={"ce": out.terms["ce"] * float("nan"),
                                                                    "kd": out.terms["kd"]}, count=out.count)
        return out

    b = _batches(6, size=2)
    train_step(engine, [b[0], b[1]], 4, loss_fn)
    before = _params(engine)
    out = train_step(engine, [b[2], b[3]], 4, loss_fn)  # the second micro-batch is fine, the step still skips
    assert out["skipped"] == 1.0
    after = _params(engine)
    assert all(torch.equal(before[k], after[k]) for k in before)
    train_step(engine, [b[4], b[5]], 4, loss_fn)
    assert engine.skipped_steps == 1 and engine.global_step == 3


# ------------------------------------------------------------------------------------------ two ranks
def _two_rank_worker(rank: int, port: int, out_dir: str) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE="2", LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port), DS_ACCELERATOR="cpu", OMP_NUM_THREADS="1",
                      DIST_PEAKD_COLLECTIVE_TIMEOUT="60")
    torch.set_num_threads(1)
    result: dict = {"rank": rank}
    batches = _batches(8, size=2, seed=10 + rank)
    # nan_policy=skip: only rank 1 sees a NaN at step 2; both ranks must skip that step
    engine, ref = _engine("skip", ds_config="fp32_zero1")
    loss_fn = nan_at(ref, bad_step=2, term="kd", bad_ranks=(1,))
    result["skipped"] = [train_step(engine, [batches[i]], 4, loss_fn)["skipped"] for i in range(4)]
    result.update(skipped_steps=engine.skipped_steps, params={k: v.tolist() for k, v in _params(engine).items()})
    # nan_policy=stop: both ranks raise at the same step (no rank left waiting in a collective)
    engine, ref = _engine("stop", ds_config="fp32_zero0")
    loss_fn = nan_at(ref, bad_step=2, term="kd", bad_ranks=(1,))
    try:
        for i in range(4):
            train_step(engine, [batches[i]], 4, loss_fn)
    except NonFiniteLossError as e:
        result["error"] = str(e)
    Path(out_dir, f"rank{rank}.json").write_text(json.dumps(result))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_ranks_agree_on_a_nan_seen_by_one_rank(tmp_path):
    import torch.multiprocessing as mp

    mp.start_processes(_two_rank_worker, args=(_free_port(), str(tmp_path)), nprocs=2, join=True,
                       start_method="spawn")
    r0, r1 = (json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1))
    assert r0["skipped"] == r1["skipped"] == [0.0, 1.0, 0.0, 0.0]
    assert r0["skipped_steps"] == r1["skipped_steps"] == 1
    assert r0["params"] == r1["params"], "ranks diverged after the skipped step"
    # stop: both ranks stop at step 2; rank 1 names the term, rank 0 names the rank that saw it
    assert "step 2" in r0["error"] and "[1]" in r0["error"]
    assert "step 2" in r1["error"] and "kd=nan" in r1["error"]


# ------------------------------------------------------------------------------------------ through the CLI
def _cli_args(out: Path, backbone: Path, glue_dir: Path, **kw) -> list[str]:
    opts = dict(task="mrpc", output_dir=out, glue_dir=glue_dir, backbone=backbone, max_length=40,
                max_train_examples=24, max_eval_examples=16, batch_size=8, epochs=1, log_every_steps=1,
                eval_batch_size=16, seed=2, cache_dir=out.parent / "tok")
    opts.update(kw)
    return [f"--{k}={v}" for k, v in opts.items()]


@pytest.fixture()
def nan_at_step_2(monkeypatch):
    """The teacher stage's CE loss returns NaN at optimizer step 2 (of 3)."""
    from dist_peakd.stages import finetune_teacher

    real = finetune_teacher.classification_loss
    calls = {"n": 0}

    def poisoned(*args, **kwargs):
        out = real(*args, **kwargs)
        calls["n"] += 1
        if calls["n"] == 2:
            nan = torch.tensor(float("nan"))
            return LossOutput(total=out.total * nan, terms={"ce": out.terms["ce"] * nan}, count=out.count)
        return out

    monkeypatch.setattr(finetune_teacher, "classification_loss", poisoned)


def test_cli_exits_3_naming_step_and_term(tmp_path, tiny_bert, glue_dir, nan_at_step_2, capsys):
    from dist_peakd import cli

    with pytest.raises(SystemExit) as info:
        cli.main(["finetune-teacher", *_cli_args(tmp_path / "run", tiny_bert, glue_dir)])
    assert info.value.code == 3
    err = capsys.readouterr().err
    assert "non-finite loss at step 2" in err and "ce=nan" in err


def test_cli_skip_policy_counts_skipped_steps(tmp_path, tiny_bert, glue_dir, nan_at_step_2):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from dist_peakd import cli

    cli.main(["finetune-teacher", *_cli_args(tmp_path / "run", tiny_bert, glue_dir, nan_policy="skip",
                                             max_skipped_fraction=0.5)])  # 1 of 3 steps skipped is allowed
    stage = tmp_path / "run" / "mrpc" / "teacher"
    summary = json.loads((stage / "summary.json").read_text())
    assert summary["skipped_steps"] == 1 and summary["total_steps"] == 3
    acc = EventAccumulator(str(stage))
    acc.Reload()
    assert [e.value for e in acc.Scalars("train/skipped_steps")] == [0.0, 1.0, 1.0]
    logged = [json.loads(x) for x in (stage / "train_log.jsonl").read_text().splitlines()]
    assert all(v == v for r in logged for v in r.values() if isinstance(v, float) and r["step"] != 2)


def test_a_mostly_skipped_run_is_not_called_finished(tmp_path, tiny_bert, glue_dir, nan_at_step_2, capsys):
    """Item 11: 1 of 3 steps skipped is over the default max_skipped_fraction (0.1): exit 3, no final/ and
    no summary.json; the skipped step's train_log row carries no loss (never 0.0) and says it was skipped."""
    from dist_peakd import cli

    with pytest.raises(SystemExit) as info:
        cli.main(["finetune-teacher", *_cli_args(tmp_path / "run", tiny_bert, glue_dir, nan_policy="skip")])
    assert info.value.code == 3
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert "skipped 1 of 3 optimizer steps" in line and "max_skipped_fraction 0.1" in line
    stage = tmp_path / "run" / "mrpc" / "teacher"
    assert not (stage / "summary.json").exists() and not (stage / "final").exists()
    rows = {r["step"]: r for r in map(json.loads, (stage / "train_log.jsonl").read_text().splitlines())}
    assert "train/ce" not in rows[2] and "ce" not in rows[2] and rows[2].get("train/skipped_in_window") == 1.0
    assert any(k.endswith("ce") for k in rows[1]) and any(k.endswith("ce") for k in rows[3])


# ------------------------------------------------------------------------------------------ fp16 (GPU only)
@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="fp16 dynamic loss scaling needs a CUDA GPU")
def test_fp16_overflow_steps_are_skipped_and_counted():
    engine, ref = _engine("stop", ds_config="fp16_zero1")
    huge = nan_at(ref, bad_step=3, term="kd", value=1e30)  # finite fp32 loss whose fp16 gradients overflow
    batches = _batches(5)
    before = None
    for i, b in enumerate(batches):
        if i == 2:
            before = _params(engine)
        train_step(engine, [b], 4, huge)
        if i == 2:
            after = _params(engine)
            assert all(torch.equal(before[k], after[k]) for k in before), "the overflow step was applied"
    assert engine.skipped_steps >= 1
    assert all(torch.isfinite(v).all() for v in _params(engine).values())
