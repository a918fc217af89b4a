"""AdamW with the paper's settings and the warm-up-then-linear-decay schedule (spec §2)."""

from __future__ import annotations

import torch
from torch import nn

from violet_core.config import OptimConfig

BACKBONE_PREFIXES = ("video.swin.",)  # the pretrained video backbone may train at its own rate


def build_optimizer(model: nn.Module, config: OptimConfig) -> torch.optim.AdamW:
    """No weight decay on biases and norm weights, the 1-D parameters (as BERT and the official trainer)."""
    groups: dict[tuple[bool, bool], list[nn.Parameter]] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        name = name.removeprefix("module.").removeprefix("model.")
        no_decay = param.ndim < 2
        backbone = name.startswith(BACKBONE_PREFIXES)
        groups.setdefault((no_decay, backbone), []).append(param)
    param_groups = [
        {"params": params, "weight_decay": 0.0 if no_decay else config.weight_decay,
         "lr": config.lr * (config.backbone_lr_mult if backbone else 1.0)}
        for (no_decay, backbone), params in sorted(groups.items())
    ]
    return torch.optim.AdamW(param_groups, lr=config.lr, betas=tuple(config.betas), weight_decay=config.weight_decay)


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
