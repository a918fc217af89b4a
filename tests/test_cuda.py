"""On a CUDA device: bf16 training (eager and compiled) tracks fp32, the fused kernels agree with the
explicit ones, and the optimizer is the fused AdamW. Skipped where CUDA is absent.

The model is base-shaped at a small size: Video Swin-T (the base's (8, 7, 7) windows, shifts in
every stage) on 8 frames at 128^2, with a 2 x 256 BERT fusion encoder. Dropout and stochastic
depth are off, and the masks come from seeded host generators, so every run sees the same data
and the only differences are numerical.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch

from tests.test_gpu_suite import load_suite
from violet_core.config import ModelConfig

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

DEVICE = "cuda"
STEPS = 4
# bf16 keeps 8 significant bits; over a 16-block Swin and a 2-layer fusion the losses of the first
# steps stay within 2 % (or 0.02 absolute) of fp32's, while a wrong kernel or mask is off by far more
LOSS_RTOL, LOSS_ATOL = 2e-2, 2e-2


@pytest.fixture(scope="module")
def suite():
    return load_suite()


@pytest.fixture(scope="module")
def shape(suite):
    return suite.Shape(ModelConfig(video_backbone="swin-t", hidden=256, layers=2, heads=4, intermediate=1024,
                                   dropout=0.0), frames=8, size=128, text_len=24, vocab=1000)


def deterministic(model: torch.nn.Module) -> None:
    """Dropout (also the heads' fixed 0.1) and stochastic depth off: no device randomness."""
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
        if hasattr(module, "prob"):  # Video Swin DropPath
            module.prob = 0.0


def train_losses(suite, shape, precision: str, compiled: bool, initial: dict | None = None) -> tuple[list, dict]:
    device = torch.device(DEVICE)
    runner = suite.StepRunner(shape, device, precision=precision, seed=0)
    deterministic(runner.model)
    if initial is not None:
        runner.model.load_state_dict(initial)
    start = {k: v.detach().clone() for k, v in runner.model.state_dict().items()}
    if compiled:
        runner.compile(dynamic=False)
    losses = []
    for step in range(STEPS):
        batch = suite.synthetic_batch(shape, 4, device, seed=step)
        out = runner.step(batch)
        losses.append({name: float(value.detach()) for name, value in out.items()})
    return losses, start


@pytest.fixture(scope="module")
def fp32_run(suite, shape):
    return train_losses(suite, shape, "fp32", compiled=False)


@pytest.mark.parametrize("compiled", [False, True], ids=["eager", "compiled"])
def test_bf16_training_tracks_fp32(suite, shape, fp32_run, compiled):
    reference, initial = fp32_run
    losses, _ = train_losses(suite, shape, "bf16", compiled=compiled, initial=initial)
    for step, (mine, want) in enumerate(zip(losses, reference)):
        for name in ("loss", "mlm", "vtm"):
            assert torch.isfinite(torch.tensor(mine[name])), (step, name, mine[name])
            assert mine[name] == pytest.approx(want[name], rel=LOSS_RTOL, abs=LOSS_ATOL), (step, name)


def test_compiled_fp32_matches_eager_fp32(suite, shape, fp32_run):
    reference, initial = fp32_run
    losses, _ = train_losses(suite, shape, "fp32", compiled=True, initial=initial)
    for step, (mine, want) in enumerate(zip(losses, reference)):
        # same arithmetic, other kernels and fusions: float32 rounding differences only
        assert mine["loss"] == pytest.approx(want["loss"], rel=5e-3, abs=5e-3), step


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).norm() / b.double().norm())


# relative L2 error of the whole output / gradient: fp32 kernels differ in summation order only;
# bf16 rounds every block's activations, which over 12 blocks is about 1 % either way
@pytest.mark.parametrize("dtype, tolerance", [(torch.float32, 1e-5), (torch.bfloat16, 2e-2)])
def test_video_swin_fused_attention_equals_explicit_on_cuda(dtype, tolerance):
    from mvm_targets.backbones.video_swin import VIDEO_SWIN_PRESETS, build_video_swin

    config = dataclasses.replace(VIDEO_SWIN_PRESETS["swin-t"], drop_path_rate=0.0)
    model = build_video_swin(config, seed=0).to(DEVICE).train()
    x = torch.randn(2, 3, 8, 128, 128, generator=torch.Generator().manual_seed(0)).to(DEVICE)
    results = []
    for fused in (True, False):
        model.set_fused_attention(fused)
        model.zero_grad(set_to_none=True)
        with torch.autocast(DEVICE, dtype=torch.bfloat16, enabled=dtype == torch.bfloat16):
            out = model(x)
        out.float().square().mean().backward()
        table = model.layers[0].blocks[1].attn.relative_position_bias_table.grad  # a shifted block's bias
        results.append((out.float(), table.clone()))
    (fused_out, fused_grad), (explicit_out, explicit_grad) = results
    assert relative_error(fused_out, explicit_out) < tolerance
    assert relative_error(fused_grad, explicit_grad) < 5 * tolerance  # a gradient sums many rounded terms


def test_optimizer_is_fused_adamw_with_the_formula_update():
    from violet_core.config import OptimConfig
    from violet_core.optim import build_optimizer

    torch.manual_seed(0)
    layer = torch.nn.Linear(4, 3).to(DEVICE)
    config = OptimConfig(lr=1e-2, weight_decay=0.1, betas=(0.9, 0.98))
    optimizer = build_optimizer(layer, config)
    assert optimizer.defaults["fused"] is True
    params = {name: p.detach().double().clone() for name, p in layer.named_parameters()}
    moments = {name: (torch.zeros_like(p), torch.zeros_like(p)) for name, p in params.items()}
    (b1, b2), eps = config.betas, 1e-8
    for step in range(1, 4):
        optimizer.zero_grad()
        layer(torch.randn(5, 4, device=DEVICE)).square().sum().backward()
        for name, param in layer.named_parameters():
            grad = param.grad.double()
            m, v = moments[name]
            m.mul_(b1).add_((1 - b1) * grad)
            v.mul_(b2).add_((1 - b2) * grad * grad)
            decay = config.weight_decay if param.ndim >= 2 else 0.0
            p = params[name] * (1 - config.lr * decay)
            params[name] = p - config.lr * (m / (1 - b1 ** step)) / ((v / (1 - b2 ** step)).sqrt() + eps)
        optimizer.step()
    for name, param in layer.named_parameters():
        torch.testing.assert_close(param.detach().double(), params[name], rtol=1e-5, atol=1e-6)
