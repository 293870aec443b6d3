"""Issue 16 phase 2: the step's optimisations (attention on CPU, shared masks, fused AdamW, host syncs
only at logging steps) and their options; the end-to-end equivalences are in tests/test_perf_runs.py."""

from __future__ import annotations

import pytest
import torch
from engine_steps import train_step

from dist_peakd.config import build_options
from dist_peakd.engine import ConfigError, Engine, EngineOptions, NonFiniteLossError, init_distributed
from dist_peakd.engine.optim import build_optimizer
from dist_peakd.models import SPSBertConfig, SPSBertForSequenceClassification
from dist_peakd.models import modeling_sps_bert as sps
from dist_peakd.stages.distill import DistillOptions

TINY = dict(vocab_size=120, hidden_size=32, num_attention_heads=4, intermediate_size=64,
            max_position_embeddings=64, attention_probs_dropout_prob=0.1, hidden_dropout_prob=0.1)


def _student(seed: int = 0) -> SPSBertForSequenceClassification:
    torch.manual_seed(seed)
    return SPSBertForSequenceClassification(SPSBertConfig(**TINY, num_hidden_layers=2, sps_variant="shuffle"))


def _batch(seed: int = 1) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, 120, (6, 11), generator=g)
    mask = torch.ones_like(ids)
    mask[2, 7:] = 0
    mask[4, 3:] = 0
    return {"input_ids": ids, "attention_mask": mask}


def _train_pass(model: SPSBertForSequenceClassification, seed: int) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    torch.manual_seed(seed)
    out = model(**_batch())
    (out.logits.square().sum() + sum(c.sum() for c in out.cls_states)).backward()
    grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    return [out.logits.detach(), *[c.detach() for c in out.cls_states]], grads


# ------------------------------------------------------------------------------------------ attention
def test_cpu_training_attention_equals_sdpa_bit_for_bit(monkeypatch):
    """fp32 CPU training with dropout runs the explicit math path: outputs, dropout masks and gradients
    are those of ``F.scaled_dot_product_attention`` (its own math fallback) bit for bit."""
    model = _student().train()
    assert sps._use_math_attention(torch.zeros(1, dtype=torch.float32), 0.1)
    fast = _train_pass(model, seed=5)
    monkeypatch.setattr(sps, "_use_math_attention", lambda q, p: False)
    ref = _train_pass(model, seed=5)
    for a, b in zip(fast[0] + fast[1], ref[0] + ref[1], strict=True):
        assert torch.equal(a, b)
    again = _train_pass(model, seed=6)  # another seed draws other dropout masks: dropout is live
    assert not torch.equal(again[0][0], ref[0][0])


def test_math_attention_only_where_sdpa_would_fall_back():
    q32, q16 = torch.zeros(1), torch.zeros(1, dtype=torch.bfloat16)
    assert not sps._use_math_attention(q32, 0.0)  # evaluation / no dropout: SDPA's fused kernel
    assert not sps._use_math_attention(q16, 0.1)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert not sps._use_math_attention(q32, 0.1)


def test_masks_are_made_once_per_forward(monkeypatch):
    calls = []
    real = sps._additive_mask
    monkeypatch.setattr(sps, "_additive_mask", lambda keep, dtype: calls.append(dtype) or real(keep, dtype))
    model = _student().eval()
    with torch.no_grad():
        model(**_batch())
    assert calls == [torch.float32]  # 4 layers (k=2 shuffle), one mask


# ------------------------------------------------------------------------------------------ fused AdamW
def test_fused_optimizer_option_picks_the_kernel():
    model = torch.nn.Linear(4, 2)
    assert build_optimizer(model, 1e-3).defaults["fused"] is True
    assert not build_optimizer(model, 1e-3, fused=False).defaults.get("fused")
    model.weight.data = model.weight.data.long().float()  # still floating: fused
    assert build_optimizer(model, 1e-3).defaults["fused"] is True


def test_fused_adamw_agrees_with_the_per_tensor_loop_to_rounding():
    """Fused AdamW on CPU rounds differently from the per-tensor loop (reassociated arithmetic), by a few
    ulps per step: after 20 steps the weights agree to 1e-6 relative + 1e-6 absolute, 1,000x below one
    step's size (lr 1e-3). How many ulps depends on the CPU's vector ISA: 1.75e-7 on an AVX-512 machine."""
    weights = []
    for fused in (True, False):
        model = _student().train()
        opt = build_optimizer(model, 1e-3, fused=fused)
        for step in range(20):
            _train_pass_keep_grads(model, seed=step)
            opt.step()
            opt.zero_grad()
        weights.append([p.detach().clone() for p in model.parameters()])
    for a, b in zip(*weights, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)


def _train_pass_keep_grads(model: SPSBertForSequenceClassification, seed: int) -> None:
    torch.manual_seed(seed)
    model(**_batch(seed)).logits.square().sum().backward()


# ------------------------------------------------------------------------------------------ deferred checks
class _Tiny(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.emb, self.head = torch.nn.Embedding(50, 8), torch.nn.Linear(8, 2)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.head(self.emb(input_ids).mean(1))


def _engine(**kw) -> Engine:
    opts = EngineOptions(ds_config="fp32_zero0", batch_size=4, lr=1e-2, warmup_ratio=0.0, **kw)
    return Engine(_Tiny(), opts, total_steps=10, dist_info=init_distributed())


def _loss_fn(engine: Engine, bad_step: int | None):
    from dist_peakd.engine import LossOutput

    def loss_fn(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> LossOutput:
        ce = torch.nn.functional.cross_entropy(model(batch["input_ids"]), batch["labels"], reduction="sum")
        if engine.global_step + 1 == bad_step:
            ce = ce * float("nan")
        return LossOutput(total=ce, terms={"ce": ce.detach()}, count=len(batch["labels"]))

    return loss_fn


def _micro(step: int) -> list[dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(step)
    return [{"input_ids": torch.randint(0, 50, (4, 6), generator=g), "attention_mask": torch.ones(4, 6),
             "labels": torch.randint(0, 2, (4,), generator=g)}]


def _params(engine: Engine) -> list[torch.Tensor]:
    return [p.detach().clone() for p in engine.module.parameters()]


def test_unsynced_steps_equal_synced_steps():
    """Steps trained without a host read give the same weights and (summed) terms as synced steps."""
    runs = []
    for sync in (True, False):
        engine = _engine()
        assert engine._deferred is not None  # fused AdamW + nan_policy=stop: the deferred check
        loss_fn = _loss_fn(engine, None)
        out = [train_step(engine, _micro(s), 4, loss_fn, sync=sync) for s in range(5)]
        sums = [float(o["ce"]) for o in out]
        assert all(torch.is_tensor(o["ce"]) for o in out) == (not sync)
        runs.append((sums, _params(engine)))
    assert runs[0][0] == runs[1][0]
    assert all(torch.equal(a, b) for a, b in zip(runs[0][1], runs[1][1], strict=True))


def test_nonfinite_loss_between_syncs_is_raised_naming_its_step_and_nothing_is_updated():
    engine = _engine()
    loss_fn = _loss_fn(engine, bad_step=3)
    for s in range(2):
        train_step(engine, _micro(s), 4, loss_fn, sync=False)
    before = _params(engine)
    for s in range(2, 5):  # step 3 is non-finite; 4 and 5 come after it
        train_step(engine, _micro(s), 4, loss_fn, sync=False)
    after = _params(engine)
    assert all(torch.equal(a, b) for a, b in zip(before, after, strict=True))  # found_inf: no update
    with pytest.raises(NonFiniteLossError, match=r"non-finite loss at step 3 .*\bce\b"):
        engine.raise_if_nonfinite()
    engine.raise_if_nonfinite()  # reported once


def test_nonfinite_loss_is_raised_by_the_next_synced_step():
    engine = _engine()
    loss_fn = _loss_fn(engine, bad_step=2)
    train_step(engine, _micro(0), 4, loss_fn, sync=False)
    train_step(engine, _micro(1), 4, loss_fn, sync=False)
    with pytest.raises(NonFiniteLossError, match="at step 2"):
        train_step(engine, _micro(2), 4, loss_fn, sync=True)


@pytest.mark.parametrize("kw", [{"fused_optimizer": False}, {"nan_policy": "skip"}])
def test_without_fused_adamw_or_with_skip_every_step_is_checked_on_the_host(kw):
    engine = _engine(**kw)
    assert engine._deferred is None
    out = train_step(engine, _micro(0), 4, _loss_fn(engine, None), sync=False)
    assert isinstance(out["ce"], float)


# ------------------------------------------------------------------------------------------ options
def test_padding_multiple_follows_compile_unless_given(tmp_path):
    def opts(**kw):
        return build_options(DistillOptions, output_dir=str(tmp_path), **kw)

    assert opts().padding_multiple() is None
    assert opts(compile=True).padding_multiple() == 8
    assert opts(compile=True, pad_to_multiple_of=16).padding_multiple() == 16
    assert opts(pad_to_multiple_of=8).padding_multiple() == 8
    assert opts().fused_optimizer is True and opts().engine_options().fused_optimizer is True
    assert opts(compile=True, compile_mode="reduce-overhead").engine_options().compile_mode == "reduce-overhead"


@pytest.mark.parametrize("bad,message", [({"compile_mode": "fast"}, "option compile_mode: 'fast' is not one of"),
                                         ({"pad_to_multiple_of": 0}, "option pad_to_multiple_of: must be >= 1")])
def test_bad_step_options_are_refused(tmp_path, bad, message):
    with pytest.raises(ConfigError, match=message):
        build_options(DistillOptions, output_dir=str(tmp_path), **bad)
