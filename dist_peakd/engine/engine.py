"""The DeepSpeed engine a stage trains with, and the calls of one training step.

A stage's recipe drives the step itself, as with Accelerate's DeepSpeed wrapper::

    out = engine.forward(**inputs)          # DeepSpeed's forward (its compile wrapper, ZeRO hooks)
    engine.backward(loss, micro.weight)     # this micro-batch's share of the global-batch mean
    result = engine.step(sync=...)          # at the accumulation boundary: non-finite check, clip, step

What DeepSpeed does not do lives here, behind those calls: the exact loss normalisation across ranks
and accumulation steps, the non-finite agreement (:mod:`.nonfinite`) and skip-step (:mod:`.skip_step`),
clipping with one foreach norm, and building the engine (config, precision, optimizer, ``--compile``).
Checkpoints (:mod:`.checkpoints`) and export (:mod:`.export`) live in their own modules; :class:`Engine`
forwards ``save_state``, ``load_state`` and ``export_pretrained`` to them, as Accelerate's ``Accelerator`` does.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .. import console
from ..errors import ConfigError, NonFiniteLossError
from ..integrity import verify_export
from ..loss_output import LossOutput
from . import checkpoints, export, safe_checkpoint
from .distributed import DistInfo, all_gather_objects, init_distributed
from .ds_config import build_ds_config, config_precision, load_ds_config
from .nonfinite import NAN_POLICIES, DeferredCheck, nonfinite_message, nonfinite_terms, ranks_flagging
from .optim import build_optimizer, linear_warmup_decay
from .options import EngineOptions  # noqa: F401 - declared with the option sections, re-exported
from .skip_step import step_without_update


class _StepSums:
    """This rank's ``[total, *terms]`` summed over a step's micro-batches, kept on the device (what
    :meth:`Engine.backward` records and :meth:`Engine.step` reports)."""

    def __init__(self) -> None:
        self.keys: list[str] = []
        self.acc: torch.Tensor | None = None
        self.count = 0

    def add(self, total: torch.Tensor, out: LossOutput) -> None:
        self.keys = self.keys or sorted(out.terms)
        vec = torch.stack([total.detach().reshape(()),
                           *[torch.as_tensor(out.terms[k], device=total.device).detach().float().reshape(())
                             for k in self.keys]])
        self.acc = vec if self.acc is None else self.acc + vec
        self.count += out.count

    def values(self) -> dict[str, float]:
        """``{"total", *terms}`` as floats (the one host sync of a step)."""
        return dict(zip(["total", *self.keys], self.acc.tolist() if self.acc is not None else [], strict=True))

    def device_values(self) -> dict[str, torch.Tensor]:
        """``{"total", *terms}`` as float64 device scalars (no sync; float64 so that summing them in the
        log window gives the same values as summing the floats of :meth:`values`)."""
        return dict(zip(["total", *self.keys], self.acc.double().unbind() if self.acc is not None else [],
                        strict=True))


class Engine:
    """One DeepSpeed engine around ``model`` with a client AdamW and linear warmup/decay.

    Loss normalisation is exact across ranks and accumulation steps: each micro-batch's summed loss
    is multiplied by its :meth:`micro_weight`, the world size over the number of examples in the whole
    global batch (DeepSpeed averages gradients over ranks; accumulation scaling is turned off), so the
    gradient is the global-batch mean whatever the split, including a short last batch.
    """

    def __init__(self, model: nn.Module, options: EngineOptions, total_steps: int,
                 dist_info: DistInfo | None = None, train: bool = True) -> None:
        import deepspeed

        if options.nan_policy not in NAN_POLICIES:
            raise ConfigError(f"option nan_policy: {options.nan_policy!r} is not one of {list(NAN_POLICIES)}")
        source = getattr(model, "name_or_path", None)
        if source and Path(str(source)).is_dir():  # a corrupted export loaded by a stage is refused, naming the file
            verify_export(source, trust_unverified=options.trust_unverified)
        self.dist = dist_info or init_distributed()
        self.options = options
        self.total_steps = total_steps
        self._configure(train)
        model = model.to(self.dist.device)
        optimizer = scheduler = None
        if train:
            optimizer = build_optimizer(model, options.lr, options.weight_decay, fused=options.fused_optimizer)
            scheduler = linear_warmup_decay(optimizer, total_steps, options.warmup_ratio)
        else:
            self.ds_config.pop("zero_optimization", None)
        self._client_optimizer = optimizer
        self.ds, self.optimizer, _, self.scheduler = deepspeed.initialize(
            model=model, optimizer=optimizer, lr_scheduler=scheduler, config=self.ds_config,
            dist_init_required=False)
        safe_checkpoint.install(self.ds)  # checkpoint files load with weights_only=True, saves fsync
        if self.dist.world_size == 1 and self.ds.zero_optimization_stage() == 0:
            self.ds.enable_backward_allreduce = False  # nothing to average in a world of one
        self.global_step = 0
        self._sums = _StepSums()  # the current step's micro-batches, recorded by backward()
        self._trainable = [p for p in self.module.parameters() if p.requires_grad]
        self._deferred = self._deferred_check(optimizer)
        if options.compile:
            self._compile_model()

    def _deferred_check(self, optimizer: torch.optim.Optimizer | None) -> DeferredCheck | None:
        """nan_policy=stop checked on the device, read lazily (a fused optimizer honours ``found_inf``;
        fp16's loss scaler has its own overflow check): see :class:`.nonfinite.DeferredCheck`."""
        fused = optimizer is not None and bool(optimizer.defaults.get("fused"))
        if not fused or self.options.nan_policy != "stop" or self.precision == "fp16":
            return None
        return DeferredCheck(optimizer, self.dist.rank, self.dist.world_size, self.device)

    # ------------------------------------------------------------------ torch.compile
    def _compile_model(self) -> None:
        """``--compile``: DeepSpeed's ``engine.compile()`` (torch.compile of the module's forward, inside
        DeepSpeed's forward wrapper), dropout drawn from torch's generator as in eager mode."""
        import torch._inductor.config as inductor_config

        inductor_config.fallback_random = True  # eager's dropout masks: a compiled run = the eager run to rounding
        if self.device.type == "cpu":
            console.info("--compile on CPU: it compiles and trains, but slower than eager on CPUs "
                         "(docs/BENCHMARKS.md); it is meant for GPUs")
        self.ds.compile(backend="inductor", compile_kwargs=self._compile_kwargs())

    def _compile_kwargs(self) -> dict[str, Any]:
        return {} if self.options.compile_mode == "default" else {"mode": self.options.compile_mode}

    def compiled(self, fn: Callable) -> Callable:
        """``fn`` through ``torch.compile`` when this engine compiles (``--compile``), else ``fn`` itself."""
        return torch.compile(fn, backend="inductor", **self._compile_kwargs()) if self.options.compile else fn

    def compile_seconds(self) -> float:
        """Seconds spent compiling so far (dynamo + inductor, forward and backward graphs; 0 if not compiling)."""
        return compile_seconds() if self.options.compile else 0.0

    def raise_if_nonfinite(self) -> None:
        """Raise the pending non-finite loss error of a step trained without a sync (no-op otherwise)."""
        if self._deferred is not None:
            self._deferred.raise_if_found()

    def _configure(self, train: bool) -> None:
        """The DeepSpeed config with this run's batch sizes, precision, ZeRO stage and clipping."""
        options = self.options
        micro = options.micro_batch_size or max(1, options.batch_size // self.dist.world_size)
        self.ds_config = build_ds_config(
            load_ds_config(options.ds_config), micro_batch_size=micro, global_batch_size=options.batch_size,
            world_size=self.dist.world_size, precision=options.precision,
            zero_stage=options.zero_stage, gradient_clipping=options.gradient_clipping,
            on_gpu=self.dist.device.type == "cuda")
        self.precision = config_precision(self.ds_config)
        self.gradient_accumulation_steps = int(self.ds_config["gradient_accumulation_steps"])
        # ZeRO 0 with fp32 weights (plain fp32 or torch autocast): the engine clips with one fused
        # foreach norm instead of DeepSpeed's per-tensor loop (same result, far fewer kernel launches).
        zero_stage = int(self.ds_config.get("zero_optimization", {}).get("stage", 0))
        self._max_grad_norm = float(self.ds_config.get("gradient_clipping", 0.0) or 0.0)
        self._own_clip = (train and zero_stage == 0 and self.precision in ("fp32", "bf16-autocast")
                          and self._max_grad_norm > 0)
        if self._own_clip:
            self.ds_config["gradient_clipping"] = 0.0

    # ------------------------------------------------------------------ properties
    @property
    def module(self) -> nn.Module:
        return self.ds.module

    @property
    def device(self) -> torch.device:
        return self.dist.device

    def lr(self) -> float:
        return float(self.optimizer.param_groups[0]["lr"]) if self.optimizer is not None else 0.0

    @property
    def skipped_steps(self) -> int:
        """Optimizer steps skipped so far: non-finite losses under ``nan_policy=skip`` plus DeepSpeed's
        own overflow skips (fp16 dynamic loss scaling, non-finite gradient norms). Saved in checkpoints."""
        return int(getattr(self.ds, "skipped_steps", 0))

    def to_device(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {k: (v.to(self.device, non_blocking=True) if torch.is_tensor(v) else v) for k, v in batch.items()}

    # ------------------------------------------------------------------ training
    def train(self) -> None:
        """Training mode (dropout on): at the start of every step, since evaluation leaves eval mode."""
        self.ds.train()

    def forward(self, **inputs: torch.Tensor) -> Any:
        """The model's forward through DeepSpeed's engine (its compile wrapper and ZeRO hooks)."""
        return self.ds(**inputs)

    def micro_weight(self, global_count: int) -> float:
        """The factor of a micro-batch's summed loss: world size / examples in the global batch (DeepSpeed
        averages the ranks' gradients), so that the step's gradient is the global-batch mean."""
        return self.dist.world_size / max(1, global_count)

    def backward(self, out: LossOutput, weight: float) -> None:
        """Backpropagate ``weight * out.total`` (accumulation scaling off) and record the micro-batch's terms
        for the step's log. ``weight`` 0: the stand-in batch of an empty share (every rank must take part in
        every collective), backpropagated but not recorded."""
        total = out.total.float()
        if weight:
            self._sums.add(total, out)
        self.ds.backward(total * weight, scale_wrt_gas=False)

    def step(self, sync: bool = True) -> dict[str, Any] | None:
        """After each micro-batch's :meth:`backward`, as DeepSpeed wants. At the accumulation boundary: all
        ranks agree on a non-finite loss (:mod:`.nonfinite`; raise, or skip the step under
        ``nan_policy=skip``), clip, step the optimizer and scheduler; returns this rank's summed terms, the
        example count, the grad norm and ``skipped``. Between boundaries: DeepSpeed's micro-step, None.

        ``sync=False`` (the trainer, between logging steps): with ``nan_policy=stop`` and a fused
        optimizer nothing is read from the device; the terms come back as device scalars and a
        non-finite loss is raised by the next synced step or :meth:`raise_if_nonfinite`.
        """
        if not self.ds.is_gradient_accumulation_boundary():
            self.ds.step()
            return None
        sums, self._sums = self._sums, _StepSums()
        checked = self._deferred_boundary(sums, sync) if self._deferred else self._at_boundary(sums)
        if checked.get("skipped"):
            step_without_update(self.ds, self._client_optimizer)
        else:
            self.ds.step()
        self.global_step += 1
        return self._step_result(checked, sums)

    def _deferred_boundary(self, sums: _StepSums, sync: bool) -> dict[str, Any]:
        """The boundary without a host read: check on the device (:class:`.nonfinite.DeferredCheck`),
        raise here when ``sync``, clip; the sums stay on the device unless ``sync``."""
        assert self._deferred is not None
        acc = sums.acc if sums.acc is not None else torch.zeros(1, device=self.device)  # an all-empty step
        self._deferred.record(self.global_step + 1, sums.keys, acc)
        if sync:
            self._deferred.raise_if_found()
        values: dict[str, Any] = sums.values() if sync else sums.device_values()
        out: dict[str, Any] = {"sums": {k: values[k] for k in sums.keys}, "grad_norm": self._clip()}
        if values:
            out["sums"]["loss"] = values["total"]
        return out

    def _clip(self) -> Any:
        """Clip with one foreach norm (own clipping), or measure the norm (ZeRO 0), or leave it to DeepSpeed."""
        if self._own_clip:
            return torch.nn.utils.clip_grad_norm_(self._trainable, self._max_grad_norm, foreach=_foreach(self.device))
        if self.ds.zero_optimization_stage() == 0:
            return self._grad_norm()
        return None

    def _at_boundary(self, sums: _StepSums) -> dict[str, Any]:
        """All ranks agree on non-finite losses, then clip (or measure) the gradients of the step."""
        values = sums.values()
        bad_terms = nonfinite_terms(values)
        out: dict[str, Any] = {"bad_terms": bad_terms, "grad_norm": None}
        if not bad_terms:
            out["sums"] = {k: values[k] for k in sums.keys}
            if values:
                out["sums"]["loss"] = values["total"]
        bad_ranks = ranks_flagging(bool(bad_terms), self.dist.rank, self.dist.world_size, self.device)
        out["bad_ranks"] = bad_ranks
        if bad_ranks:
            if self.options.nan_policy == "stop":
                raise NonFiniteLossError(nonfinite_message(self.global_step + 1, self.dist.rank, bad_ranks, bad_terms))
            out["skipped"] = True
        else:
            out["grad_norm"] = self._clip()
        return out

    def _step_result(self, result: dict[str, Any], sums: _StepSums) -> dict[str, Any]:
        if result.get("skipped"):
            message = nonfinite_message(self.global_step, self.dist.rank, result["bad_ranks"], result["bad_terms"])
            console.info(f"skipped step {self.global_step}: non-finite loss ({message}); nan_policy=skip")
            skipped = {k: 0.0 for k in sums.keys}
            skipped.update(loss=0.0, count=0.0, grad_norm=float("nan"), skipped=1.0)
            return skipped
        step = dict(result.get("sums", {}))
        ds_norm = None if self._own_clip else self.ds.get_global_grad_norm()
        grad_norm = ds_norm if ds_norm is not None else result.get("grad_norm")
        step["count"] = float(sums.count)
        # may stay a device tensor (converted by the caller when it logs, avoiding a sync per step)
        step["grad_norm"] = grad_norm if grad_norm is not None else float("nan")
        step["skipped"] = 0.0
        return step

    def _grad_norm(self) -> torch.Tensor | float:
        """The global gradient norm, left on the device (read when the step is logged)."""
        norms = [p.grad.detach().float().norm() for p in self.module.parameters() if p.grad is not None]
        return torch.linalg.vector_norm(torch.stack(norms)) if norms else 0.0

    # ------------------------------------------------------------------ evaluation
    @torch.no_grad()
    def predict(self, batches: Iterable[dict[str, torch.Tensor]],
                forward_fn: Callable[[nn.Module, dict[str, torch.Tensor]], dict[str, torch.Tensor]]
                ) -> dict[str, np.ndarray]:
        """Run ``forward_fn`` over this rank's batches and gather all ranks' outputs by example id.

        ``forward_fn`` returns per-example tensors (first dim = batch); ``example_ids`` are added.
        The result is sorted by example id, each id once (no duplicates, none dropped).
        """
        self.ds.eval()
        local: dict[str, list[np.ndarray]] = {}
        for batch in batches:
            if batch["input_ids"].shape[0] == 0:
                continue
            batch = self.to_device(batch)
            outs = forward_fn(self.ds, batch)
            outs["example_ids"] = batch["example_ids"]
            for k, v in outs.items():
                local.setdefault(k, []).append(v.detach().float().cpu().numpy()
                                               if v.is_floating_point() else v.cpu().numpy())
        return _gather_by_id({k: np.concatenate(v) for k, v in local.items()})

    # ------------------------------------------------------------------ checkpoints and export
    def save_state(self, root: str | Path, tag: str, client_state: dict[str, Any]) -> Path:
        """:func:`.checkpoints.save_checkpoint` of this engine (collective)."""
        return checkpoints.save_checkpoint(self, root, tag, client_state)

    def load_state(self, root: str | Path, tag: str | None = None) -> dict[str, Any]:
        """:func:`.checkpoints.load_checkpoint` into this engine; returns the client state."""
        return checkpoints.load_checkpoint(self, root, tag)

    def export_pretrained(self, out_dir: str | Path, tokenizer: Any = None,
                          extra_json: dict[str, Any] | None = None, label_names: Any = None,
                          card: str | None = None, plain: bool = False) -> Path:
        """:func:`.export.export_pretrained` of this engine's model (collective; rank 0 writes)."""
        return export.export_pretrained(self, out_dir, tokenizer, extra_json, label_names, card, plain)


def compile_seconds() -> float:
    """Seconds this process spent in torch.compile (dynamo + inductor, forward and backward graphs)."""
    from torch._dynamo.utils import compilation_time_metrics as metrics

    keys = ("_compile.compile_inner", "compile_fx.<locals>.bw_compiler")
    return float(sum(sum(metrics.get(k, [])) for k in keys))


def _foreach(device: torch.device) -> bool | None:
    """``foreach=True`` where torch has the foreach kernels (CPU, CUDA), else its own choice."""
    return True if device.type in ("cpu", "cuda") else None


def _gather_by_id(merged: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Every rank's arrays concatenated, sorted by ``example_ids``; an id seen twice is an error."""
    gathered = all_gather_objects(merged)
    keys = next((g.keys() for g in gathered if g), [])
    result = {k: np.concatenate([g[k] for g in gathered if g]) for k in keys}
    if result:
        ids, first = np.unique(result["example_ids"], return_index=True)
        if len(ids) != len(result["example_ids"]):
            raise RuntimeError("evaluation saw an example id twice across ranks")
        result = {k: v[first] for k, v in result.items()}
    return result
