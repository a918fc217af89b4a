"""AdamW with the paper's settings and the warm-up-then-linear-decay schedule (docs/method.md §2)."""

from __future__ import annotations

import torch
from torch import nn

from violet_core.config import OptimConfig

BACKBONE_PREFIXES = ("video.swin.",)  # the pretrained video backbone may train at its own rate


def build_optimizer(model: nn.Module, config: OptimConfig) -> torch.optim.AdamW:
    """No weight decay on biases and norm weights, the 1-D parameters (as BERT and the official trainer).

    `backbone_lr_mult: 0` freezes the video backbone for this phase (requires_grad off), so no
    gradient is computed through it at all: a zero learning rate alone would still pay for one.
    """
    groups: dict[tuple[bool, bool], list[nn.Parameter]] = {}
    for name, param in model.named_parameters():
        name = name.removeprefix("module.").removeprefix("model.")
        backbone = name.startswith(BACKBONE_PREFIXES)
        if backbone:
            param.requires_grad_(config.backbone_lr_mult > 0)
        if not param.requires_grad:
            continue
        no_decay = param.ndim < 2
        groups.setdefault((no_decay, backbone), []).append(param)
    param_groups = [
        {"params": params, "weight_decay": 0.0 if no_decay else config.weight_decay,
         "lr": config.lr * (config.backbone_lr_mult if backbone else 1.0)}
        for (no_decay, backbone), params in sorted(groups.items())
    ]
    devices = {param.device.type for params in groups.values() for param in params}
    return torch.optim.AdamW(param_groups, lr=config.lr, betas=tuple(config.betas), weight_decay=config.weight_decay,
                             **adamw_kernel(devices))


def adamw_kernel(device_types: set[str]) -> dict[str, bool]:
    """The fastest AdamW implementation for parameters on these device types.

    On CUDA the fused kernel updates every parameter in a handful of launches and needs no host
    synchronisation; elsewhere (CPU, or a model spread over device types) the multi-tensor
    `foreach` path. Both compute the AdamW update of the per-parameter loop.
    """
    return {"fused": True} if device_types == {"cuda"} else {"foreach": True}


def warmup_linear(steps: int, warmup_ratio: float, floor: float = 0.0):
    """LR multiplier at step s: linear warm-up over `warmup_ratio * steps`, then linear decay to `floor`."""
    warmup = int(round(steps * warmup_ratio))

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        remaining = max(1, steps - warmup)
        return max(floor, 1.0 - (step - warmup) / remaining)

    return factor


def build_schedule(optimizer: torch.optim.Optimizer, config: OptimConfig) -> torch.optim.lr_scheduler.LambdaLR:
    return torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_linear(config.steps, config.warmup_ratio))
