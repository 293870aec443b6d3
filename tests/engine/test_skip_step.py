"""The one reach into DeepSpeed's internals (dist_peakd/engine/skip_step.py), checked on the installed release."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from engine_steps import train_step
from packaging.specifiers import SpecifierSet
from packaging.version import Version

from dist_peakd.engine import Engine, EngineOptions, LossOutput, init_distributed
from dist_peakd.engine.skip_step import check_supported, step_without_update

PYPROJECT = Path(__file__).resolve().parents[2] / "pyproject.toml"


def test_installed_deepspeed_is_in_the_declared_range_and_keeps_the_contract():
    import deepspeed

    spec = re.search(r'"deepspeed([^"]*)"', PYPROJECT.read_text()).group(1)  # the declared range
    assert Version(deepspeed.__version__) in SpecifierSet(spec), (deepspeed.__version__, spec)
    check_supported()  # _take_model_step still skips on optimizer.overflow


class _Toy(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = torch.nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lin(x.to(self.lin.weight.dtype))


def _loss(model, batch):
    loss = torch.nn.functional.cross_entropy(model(batch["x"]).float(), batch["y"], reduction="sum")
    return LossOutput(total=loss, terms={"ce": loss.detach()}, count=len(batch["y"]))


@pytest.mark.parametrize("ds_config", ["fp32_zero0", "fp32_zero1", "fp32_zero2", "bf16_zero1"])
def test_step_without_update_changes_nothing_but_the_counters(ds_config):
    torch.manual_seed(0)
    engine = Engine(_Toy(), EngineOptions(ds_config=ds_config, batch_size=4, lr=1e-2, gradient_clipping=0.0),
                    total_steps=10, dist_info=init_distributed())
    batch = {"input_ids": torch.zeros(4, 1), "x": torch.randn(4, 4), "y": torch.tensor([0, 1, 1, 0])}
    train_step(engine, [batch], 4, _loss)  # one real step: optimizer state exists
    ds = engine.ds
    weights = {k: v.detach().clone() for k, v in engine.module.state_dict().items()}
    opt_state = {i: {k: v.clone() for k, v in s.items()} for i, s in enumerate(engine._client_optimizer.state.values())}
    lr, sched_epoch = engine.lr(), engine.scheduler.last_epoch
    steps, skipped = ds.global_steps, ds.skipped_steps
    out = ds(batch["x"]).float().sum()
    ds.backward(out, scale_wrt_gas=False)
    step_without_update(ds, engine._client_optimizer)
    assert (ds.global_steps, ds.skipped_steps) == (steps + 1, skipped + 1)
    assert engine.lr() == lr and engine.scheduler.last_epoch == sched_epoch
    for k, v in engine.module.state_dict().items():
        assert torch.equal(v, weights[k]), k
    for i, s in enumerate(engine._client_optimizer.state.values()):
        assert all(torch.equal(v, opt_state[i][k]) for k, v in s.items())
    assert "step" not in engine._client_optimizer.__dict__  # the patch is undone
    train_step(engine, [batch], 4, _loss)  # and the next step updates again
    assert any(not torch.equal(v, weights[k]) for k, v in engine.module.state_dict().items())
