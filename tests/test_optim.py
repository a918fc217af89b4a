"""Optimizer groups, the frozen-backbone switch and the warm-up/decay schedule."""

from __future__ import annotations

import pytest
import torch

from violet_core.config import ModelConfig, OptimConfig
from violet_core.heads import pair_score
from violet_core.model import Violet
from violet_core.optim import build_optimizer, warmup_linear


@pytest.fixture(scope="module")
def model() -> Violet:
    torch.manual_seed(0)
    return Violet(ModelConfig(hidden=32, layers=1, heads=2, intermediate=64, dropout=0.0), vocab_size=50,
                  max_text_len=8)


def _video_and_text() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    video = torch.randn(2, 2, 3, 64, 64, generator=generator)
    ids = torch.randint(5, 50, (2, 8), generator=generator)
    return video, ids, torch.ones(2, 8, dtype=torch.long)


def test_backbone_lr_mult_scales_only_the_video_backbone(model):
    optimizer = build_optimizer(model, OptimConfig(lr=1e-3, backbone_lr_mult=0.1))
    swin = {id(p) for p in model.video.swin.parameters()}
    rates = {(id(p) in swin): group["lr"] for group in optimizer.param_groups for p in group["params"]}
    assert rates == {True: pytest.approx(1e-4), False: pytest.approx(1e-3)}
    assert all(p.requires_grad for p in model.parameters())


def test_zero_backbone_lr_mult_freezes_backbone_and_skips_its_gradient(model):
    optimizer = build_optimizer(model, OptimConfig(lr=1e-3, backbone_lr_mult=0.0))
    swin = list(model.video.swin.parameters())
    in_optimizer = {id(p) for group in optimizer.param_groups for p in group["params"]}
    assert not any(p.requires_grad for p in swin)
    assert not in_optimizer & {id(p) for p in swin}
    video, ids, keep = _video_and_text()
    tokens, _ = model.encode_video(video)
    # no graph through the frozen Swin: the tokens' graph starts at the projection
    fused, grid = model(video, ids, keep)
    pair_score(model.vtm_head, fused, grid).sum().backward()
    assert all(p.grad is None for p in swin)
    assert model.video.proj.weight.grad is not None and model.video.proj.weight.grad.abs().sum() > 0
    assert tokens.requires_grad
    # a later phase with a non-zero multiplier trains the backbone again
    build_optimizer(model, OptimConfig(backbone_lr_mult=1.0))
    assert all(p.requires_grad for p in swin)
    model.zero_grad(set_to_none=True)


def test_frozen_backbone_gives_the_same_forward_values(model):
    video, ids, keep = _video_and_text()
    model.eval()
    build_optimizer(model, OptimConfig(backbone_lr_mult=1.0))
    trained, _ = model.encode_video(video)
    build_optimizer(model, OptimConfig(backbone_lr_mult=0.0))
    frozen, _ = model.encode_video(video)
    build_optimizer(model, OptimConfig(backbone_lr_mult=1.0))
    model.train()
    torch.testing.assert_close(frozen, trained)


def test_warmup_then_linear_decay():
    factor = warmup_linear(steps=10, warmup_ratio=0.2)
    assert [round(factor(s), 4) for s in range(10)] == [0.5, 1.0, 1.0, 0.875, 0.75, 0.625, 0.5, 0.375, 0.25, 0.125]


def test_adamw_kernel_is_fused_only_when_every_parameter_is_on_cuda():
    from violet_core.optim import adamw_kernel

    assert adamw_kernel({"cuda"}) == {"fused": True}
    assert adamw_kernel({"cpu"}) == {"foreach": True}
    assert adamw_kernel({"cuda", "cpu"}) == {"foreach": True}


def test_built_optimizer_takes_the_adamw_update_of_the_formula():
    """Three steps of the built optimizer (foreach on CPU) against AdamW written out:
    p <- p (1 - lr wd);  p <- p - lr m_hat / (sqrt(v_hat) + eps), bias-corrected moments."""
    torch.manual_seed(0)
    layer = torch.nn.Linear(4, 3)  # a 2-D weight (decayed) and a 1-D bias (not decayed)
    config = OptimConfig(lr=1e-2, weight_decay=0.1, betas=(0.9, 0.98))
    optimizer = build_optimizer(layer, config)
    assert optimizer.defaults["foreach"] is True and not optimizer.defaults.get("fused")
    expected = {name: p.detach().double().clone() for name, p in layer.named_parameters()}
    moments = {name: (torch.zeros_like(p), torch.zeros_like(p)) for name, p in expected.items()}
    (b1, b2), eps = config.betas, 1e-8
    generator = torch.Generator().manual_seed(1)
    for step in range(1, 4):
        optimizer.zero_grad()
        layer(torch.randn(5, 4, generator=generator)).square().sum().backward()
        for name, param in layer.named_parameters():
            grad = param.grad.double()
            m, v = moments[name]
            m.mul_(b1).add_((1 - b1) * grad)
            v.mul_(b2).add_((1 - b2) * grad * grad)
            decay = config.weight_decay if param.ndim >= 2 else 0.0
            p = expected[name] * (1 - config.lr * decay)
            expected[name] = p - config.lr * (m / (1 - b1 ** step)) / ((v / (1 - b2 ** step)).sqrt() + eps)
        optimizer.step()
    for name, param in layer.named_parameters():
        torch.testing.assert_close(param.detach().double(), expected[name], rtol=1e-6, atol=1e-7)
