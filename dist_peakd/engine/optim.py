"""AdamW with no-decay groups and the linear warmup + linear decay schedule."""

from __future__ import annotations

import torch
from torch import nn

NO_DECAY_KEYS = ("bias", "LayerNorm.weight", "LayerNorm.bias", "layer_norm.weight", "norm.weight")


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Two groups: decayed weights, and biases + LayerNorm parameters without weight decay."""
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        (no_decay if any(k in name for k in NO_DECAY_KEYS) else decay).append(param)
    groups = [{"params": decay, "weight_decay": weight_decay},
              {"params": no_decay, "weight_decay": 0.0}]
    return [g for g in groups if g["params"]]


def fused_supported(model: nn.Module) -> bool:
    """torch's fused AdamW kernel takes these parameters: floating, all on CPU or all on one GPU."""
    params = [p for p in model.parameters() if p.requires_grad]
    devices = {p.device.type for p in params}
    return bool(params) and len(devices) == 1 and devices <= {"cpu", "cuda"} and all(
        p.dtype in (torch.float32, torch.float16, torch.bfloat16, torch.float64) for p in params)


def build_optimizer(model: nn.Module, lr: float, weight_decay: float = 0.01,
                    betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                    fused: bool = True) -> torch.optim.AdamW:
    """Client-side ``torch.optim.AdamW`` (bias-corrected): no JIT-compiled DeepSpeed op needed on CPU.

    ``fused`` (default): torch's fused kernel (one call per step instead of ~10 per parameter tensor;
    on CPU it rounds differently from the per-tensor loop, by an ulp or so per step). ``fused=False``:
    the fused kernel on a GPU (as always), the per-tensor loop on CPU (the results before issue 16).
    """
    on_gpu = torch.cuda.is_available() and all(p.is_cuda for p in model.parameters())
    kwargs = {"fused": True} if (on_gpu or fused) and fused_supported(model) else {}
    return torch.optim.AdamW(param_groups(model, weight_decay), lr=lr, betas=betas, eps=eps, **kwargs)


def linear_warmup_decay(optimizer: torch.optim.Optimizer, total_steps: int,
                        warmup_ratio: float = 0.1) -> torch.optim.lr_scheduler.LambdaLR:
    """LR factor rises linearly over ``warmup_ratio * total_steps`` then decays linearly to 0."""
    total_steps = max(1, int(total_steps))
    warmup = int(round(warmup_ratio * total_steps))

    def factor(step: int) -> float:
        if warmup > 0 and step < warmup:
            return (step + 1) / warmup
        return max(0.0, (total_steps - step) / max(1, total_steps - warmup))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
