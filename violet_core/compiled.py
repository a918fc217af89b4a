"""`torch.compile` of VIOLET's two trunks, switched on by `model.compile: true` in a run config.

The video encoder (Video Swin + token embedding) and the fusion encoder hold nearly all the FLOPs
of a step; each compiles as one graph (the fusion encoder's graph serves the positive pass and
the VTM negatives alike, which have the same shapes). Heads, losses and masking stay eager:
they are small, the fp32 heads switch autocast off, and masking runs on the host.

Compiling is in place (`nn.Module.compile`), so parameter names, state dicts, checkpoints, the
optimizer and DDP see the same modules as without it. The first step of each new input shape
(train / eval, another batch size or frame count) pays the compile; later steps reuse it.
"""

from __future__ import annotations

from typing import Any

from torch import nn


def compile_model(model: nn.Module, **options: Any) -> nn.Module:
    """Compile `model.video` and `model.bert.encoder` of a `violet_core.model.Violet` in place.

    `options` go to `torch.compile` (e.g. `backend="aot_eager"` to check graph capture on a CPU
    without generating kernels, or `mode="max-autotune"`). Returns the same model.
    """
    for name in ("video", "bert"):
        if not hasattr(model, name):
            raise TypeError(f"compile_model expects a VIOLET model with .video and .bert, got {type(model).__name__}")
    model.video.compile(**options)
    model.bert.encoder.compile(**options)
    return model
