"""A thin facade over a DeepSpeed engine: build, train step, evaluation, exact checkpoints, export."""

from __future__ import annotations

import json
import os
import random
import shutil
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .distributed import DistInfo, all_gather_objects, barrier, broadcast_object, init_distributed
from .ds_config import build_ds_config, config_precision, load_ds_config
from .optim import build_optimizer, linear_warmup_decay

LATEST_FILE = "latest"


class NonFiniteLossError(FloatingPointError):
    """A loss term became NaN or inf; the message names the step and the term."""


@dataclass
class LossOutput:
    """What a stage's loss function returns for one micro-batch.

    ``total`` is the SUM over the micro-batch's examples of the weighted per-example loss (a scalar
    tensor with grad); ``terms`` holds each unweighted term's sum (detached) for logging; ``weights``
    the weight applied to each term (logged once per run).
    """

    total: torch.Tensor
    terms: dict[str, torch.Tensor]
    count: int
    weights: dict[str, float] = field(default_factory=dict)


@dataclass
class EngineOptions:
    """Engine options that every stage shares (filled by the CLI)."""

    ds_config: str = "fp32_zero0"
    precision: str | None = None
    zero_stage: int | None = None
    batch_size: int = 32
    micro_batch_size: int | None = None
    gradient_clipping: float | None = 1.0
    lr: float = 2e-5
    weight_decay: float = 0.01
    warmup_ratio: float = 0.1


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def rng_state() -> dict[str, Any]:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def atomic_write_text(path: Path, text: str) -> None:
    """Write a small text file via a temporary sibling and ``os.replace``."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


class Engine:
    """One DeepSpeed engine around ``model`` with a client AdamW and linear warmup/decay.

    Loss normalisation is exact across ranks and accumulation steps: each micro-batch's summed loss
    is divided by the number of examples in the whole global batch and multiplied by the world size
    (DeepSpeed averages gradients over ranks; accumulation scaling is turned off), so the gradient is
    the global-batch mean whatever the split, including a short last batch.
    """

    def __init__(self, model: nn.Module, options: EngineOptions, total_steps: int,
                 dist_info: DistInfo | None = None, train: bool = True) -> None:
        import deepspeed

        self.dist = dist_info or init_distributed()
        self.options = options
        micro = options.micro_batch_size or max(1, options.batch_size // self.dist.world_size)
        base = load_ds_config(options.ds_config)
        self.ds_config = build_ds_config(
            base, micro_batch_size=micro, global_batch_size=options.batch_size,
            world_size=self.dist.world_size, precision=options.precision,
            zero_stage=options.zero_stage, gradient_clipping=options.gradient_clipping,
            on_gpu=self.dist.device.type == "cuda")
        self.precision = config_precision(self.ds_config)
        self.gradient_accumulation_steps = int(self.ds_config["gradient_accumulation_steps"])
        self.total_steps = total_steps
        model = model.to(self.dist.device)
        optimizer = scheduler = None
        if train:
            optimizer = build_optimizer(model, options.lr, options.weight_decay)
            scheduler = linear_warmup_decay(optimizer, total_steps, options.warmup_ratio)
        else:
            self.ds_config.pop("zero_optimization", None)
        self.ds, self.optimizer, _, self.scheduler = deepspeed.initialize(
            model=model, optimizer=optimizer, lr_scheduler=scheduler, config=self.ds_config,
            dist_init_required=False)
        self.global_step = 0

    # ------------------------------------------------------------------ properties
    @property
    def module(self) -> nn.Module:
        return self.ds.module

    @property
    def device(self) -> torch.device:
        return self.dist.device

    @property
    def compute_dtype(self) -> torch.dtype:
        return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(self.precision, torch.float32)

    def lr(self) -> float:
        return float(self.optimizer.param_groups[0]["lr"]) if self.optimizer is not None else 0.0

    # ------------------------------------------------------------------ training
    def to_device(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {k: (v.to(self.device, non_blocking=True) if torch.is_tensor(v) else v) for k, v in batch.items()}

    def train_step(self, micro_batches: list[dict[str, torch.Tensor]], global_count: int,
                   loss_fn: Callable[[nn.Module, dict[str, torch.Tensor]], LossOutput],
                   dummy_batch: dict[str, torch.Tensor] | None = None) -> dict[str, float]:
        """One optimizer step over this rank's micro-batches (exactly ``gradient_accumulation_steps``).

        An empty micro-batch (a short last global batch split over many ranks) runs ``dummy_batch``
        with weight 0, so every rank takes part in every collective.
        Returns this rank's summed terms, the example count and the step's grad norm.
        """
        if len(micro_batches) != self.gradient_accumulation_steps:
            raise ValueError(f"expected {self.gradient_accumulation_steps} micro-batches, got {len(micro_batches)}")
        self.ds.train()
        scale = self.dist.world_size / max(1, global_count)
        sums: dict[str, float] = {}
        count = 0
        grad_norm = None
        for micro in micro_batches:
            empty = micro["input_ids"].shape[0] == 0
            batch = self.to_device(dummy_batch if empty else micro)
            out = loss_fn(self.ds, batch)
            total = out.total.float()
            if not empty:
                self._check_finite(out)
                for k, v in out.terms.items():
                    sums[k] = sums.get(k, 0.0) + float(v.detach().float())
                sums["loss"] = sums.get("loss", 0.0) + float(total.detach())
                count += out.count
            self.ds.backward(total * (0.0 if empty else scale), scale_wrt_gas=False)
            if self.ds.is_gradient_accumulation_boundary() and self.ds.zero_optimization_stage() == 0:
                grad_norm = self._grad_norm()
            self.ds.step()
        self.global_step += 1
        ds_norm = self.ds.get_global_grad_norm()
        grad_norm = ds_norm if ds_norm is not None else grad_norm
        sums["count"] = float(count)
        sums["grad_norm"] = float(grad_norm) if grad_norm is not None else float("nan")
        return sums

    def _grad_norm(self) -> float:
        norms = [p.grad.detach().float().norm() for p in self.module.parameters() if p.grad is not None]
        return float(torch.linalg.vector_norm(torch.stack(norms))) if norms else 0.0

    def _check_finite(self, out: LossOutput) -> None:
        bad = [k for k, v in {"total": out.total, **out.terms}.items() if not torch.isfinite(v).all()]
        if bad:
            raise NonFiniteLossError(
                f"non-finite loss at step {self.global_step + 1} (rank {self.dist.rank}): "
                f"term(s) {bad} = {[float(out.terms.get(k, out.total)) for k in bad]}")

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
        merged = {k: np.concatenate(v) for k, v in local.items()}
        gathered = all_gather_objects(merged)
        keys = next((g.keys() for g in gathered if g), [])
        result = {k: np.concatenate([g[k] for g in gathered if g]) for k in keys}
        if result:
            ids, first = np.unique(result["example_ids"], return_index=True)
            if len(ids) != len(result["example_ids"]):
                raise RuntimeError("evaluation saw an example id twice across ranks")
            result = {k: v[first] for k, v in result.items()}
        return result

    # ------------------------------------------------------------------ checkpoints
    def save_state(self, root: str | Path, tag: str, client_state: dict[str, Any]) -> Path:
        """Save model, optimizer, scheduler, per-rank RNG and ``client_state`` under ``root/tag``.

        Written to ``root/.tmp-tag`` then renamed, and ``root/latest`` is replaced atomically last,
        so an interrupted save never hides the previous good checkpoint. Collective: call on all ranks.
        """
        root = Path(root)
        tmp_tag = f".tmp-{tag}"
        if self.dist.is_main:
            root.mkdir(parents=True, exist_ok=True)
            shutil.rmtree(root / tmp_tag, ignore_errors=True)
        barrier()
        state = dict(client_state, global_step=self.global_step)
        self.ds.save_checkpoint(str(root), tag=tmp_tag, client_state=state, save_latest=False)
        torch.save(rng_state(), root / tmp_tag / f"rng_rank{self.dist.rank}.pt")
        barrier()
        if self.dist.is_main:
            final = root / tag
            if final.exists():
                shutil.rmtree(final)
            os.replace(root / tmp_tag, final)
            (final / "COMPLETE").write_text(json.dumps({"global_step": self.global_step}))
            atomic_write_text(root / LATEST_FILE, tag)
        barrier()
        return root / tag

    @staticmethod
    def latest_tag(root: str | Path) -> str | None:
        """The tag named in ``root/latest`` when it points at a complete checkpoint, else None."""
        latest = Path(root) / LATEST_FILE
        if not latest.is_file():
            return None
        tag = latest.read_text().strip()
        return tag if (Path(root) / tag / "COMPLETE").is_file() else None

    def load_state(self, root: str | Path, tag: str | None = None) -> dict[str, Any]:
        """Restore everything ``save_state`` wrote; returns the client state."""
        root = Path(root)
        tag = tag or self.latest_tag(root)
        if tag is None:
            raise FileNotFoundError(f"no complete checkpoint under {root} (missing {root / LATEST_FILE})")
        path, client_state = self.ds.load_checkpoint(str(root), tag=tag)
        if path is None:
            raise FileNotFoundError(f"DeepSpeed could not load checkpoint {root / tag}")
        rng_file = root / tag / f"rng_rank{self.dist.rank}.pt"
        if rng_file.is_file():
            set_rng_state(torch.load(rng_file, weights_only=False))
        self.global_step = int(client_state.get("global_step", 0))
        return client_state

    def prune_checkpoints(self, root: str | Path, keep: Iterable[str]) -> None:
        """Delete checkpoint tags under ``root`` not in ``keep`` (rank 0 only)."""
        root = Path(root)
        if not self.dist.is_main or not root.is_dir():
            return
        keep = set(keep)
        for child in root.iterdir():
            if child.is_dir() and child.name not in keep and not child.name.startswith("."):
                shutil.rmtree(child, ignore_errors=True)

    # ------------------------------------------------------------------ export
    def export_pretrained(self, out_dir: str | Path, tokenizer: Any = None,
                          extra_json: dict[str, Any] | None = None) -> Path:
        """Export the model in HF format (fp32 weights) with its tokenizer; atomic rename; rank 0 writes."""
        out_dir = Path(out_dir)
        module = self.module
        gathered = None
        if self.ds.zero_optimization_stage() == 3:
            import deepspeed

            gathered = deepspeed.zero.GatheredParameters(list(module.parameters()), modifier_rank=None)
            gathered.__enter__()
        try:
            if self.dist.is_main:
                tmp = out_dir.with_name(f".tmp-{out_dir.name}")
                shutil.rmtree(tmp, ignore_errors=True)
                state = {k: v.detach().float().cpu() for k, v in module.state_dict().items()}
                module.save_pretrained(str(tmp), state_dict=state)
                if tokenizer is not None:
                    tokenizer.save_pretrained(str(tmp))
                if extra_json:
                    for name, obj in extra_json.items():
                        (tmp / name).write_text(json.dumps(obj, indent=2, default=str))
                if out_dir.exists():
                    shutil.rmtree(out_dir)
                os.replace(tmp, out_dir)
        finally:
            if gathered is not None:
                gathered.__exit__(None, None, None)
        barrier()
        return out_dir


def sync_flag(value: bool) -> bool:
    """True on every rank when rank 0 says so (e.g. 'a checkpoint exists')."""
    return bool(broadcast_object(value))
