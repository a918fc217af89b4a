"""Fused attention (F.scaled_dot_product_attention) against the explicit formulas: the Video Swin
window attention, and the BERT fusion encoder against its eager implementation.

The oracle is written out here, per window and head, in float64:
    out = proj(concat_h softmax(q_h k_h^T / sqrt(d) + B_h + M_w) v_h)
with B_h[i, j] = table[offset(i, j), h] from the 3-D coordinate difference of tokens i and j, and
M_w the additive mask of window w. It uses neither the module's index buffer nor its forward.
"""

from __future__ import annotations

import dataclasses
import itertools

import pytest
import torch
import torch.nn.functional as F

from mvm_targets.backbones import video_swin
from mvm_targets.backbones.video_swin import (VIDEO_SWIN_PRESETS, WindowAttention3D, build_video_swin,
                                              shifted_window_mask, window_partition)

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def oracle_bias(table: torch.Tensor, full: tuple[int, int, int], window: tuple[int, int, int]) -> torch.Tensor:
    """(heads, N, N) relative position bias of a `window` (possibly clamped) cut from a `full` window."""
    coords = list(itertools.product(*(range(w) for w in window)))  # raster order: t slowest, w fastest
    n = len(coords)
    bias = torch.empty(table.shape[1], n, n, dtype=table.dtype)
    for i, (ti, hi, wi) in enumerate(coords):
        for j, (tj, hj, wj) in enumerate(coords):
            row = ((ti - tj + full[0] - 1) * (2 * full[1] - 1) + (hi - hj + full[1] - 1)) * (2 * full[2] - 1) \
                + (wi - wj + full[2] - 1)
            bias[:, i, j] = table[row]
    return bias


def oracle_attention(attn: WindowAttention3D, windows: torch.Tensor, window: tuple[int, int, int],
                     mask: torch.Tensor | None) -> torch.Tensor:
    """The official formula, window by window and head by head, in float64 (differentiable)."""
    heads = attn.num_heads
    channels = windows.shape[-1]
    d = channels // heads
    x = windows.double()
    w_qkv, b_qkv = attn.qkv.weight.double(), attn.qkv.bias.double()
    bias = oracle_bias(attn.relative_position_bias_table.double(), attn.window_size, window)
    outputs = []
    for n in range(x.shape[0]):
        qkv = x[n] @ w_qkv.T + b_qkv  # (N, 3C), laid out (3, heads, d) as the official reshape
        per_head = []
        for h in range(heads):
            q = qkv[:, h * d:(h + 1) * d]
            k = qkv[:, channels + h * d:channels + (h + 1) * d]
            v = qkv[:, 2 * channels + h * d:2 * channels + (h + 1) * d]
            logits = q @ k.T / d ** 0.5 + bias[h]
            if mask is not None:
                logits = logits + mask[n % mask.shape[0]].double()  # windows are clip-major
            per_head.append(torch.softmax(logits, dim=-1) @ v)
        outputs.append(torch.cat(per_head, dim=-1) @ attn.proj.weight.double().T + attn.proj.bias.double())
    return torch.stack(outputs)


def make_attention(seed: int, dim: int = 16, heads: int = 2, window=(2, 3, 3)) -> WindowAttention3D:
    torch.manual_seed(seed)
    attn = WindowAttention3D(dim, window, heads)
    with torch.no_grad():  # a bias large enough to matter against the q k^T term
        attn.relative_position_bias_table.normal_(0.0, 1.0)
        attn.qkv.bias.normal_(0.0, 0.5)
    return attn


def random_mask(num_windows: int, tokens: int, seed: int) -> torch.Tensor:
    """(nW, N, N) of 0 / -100, each row keeping its diagonal (as every real shift mask does)."""
    generator = torch.Generator().manual_seed(seed)
    blocked = torch.rand(num_windows, tokens, tokens, generator=generator) < 0.4
    blocked &= ~torch.eye(tokens, dtype=torch.bool)
    return torch.zeros(num_windows, tokens, tokens).masked_fill_(blocked, -100.0)


def shift_mask_of_grid() -> tuple[torch.Tensor, tuple[int, int, int]]:
    """A real shift mask: a (4, 6, 6) grid in (2, 3, 3) windows shifted by (1, 1, 1) -> (8, 18, 18)."""
    window = (2, 3, 3)
    return shifted_window_mask((4, 6, 6), window, (1, 1, 1), torch.device("cpu")), window


CASES = {
    "unshifted": lambda: (None, (2, 3, 3), 3),
    "random-mask": lambda: (random_mask(3, 18, seed=5), (2, 3, 3), 3),
    "shift-mask": lambda: (shift_mask_of_grid()[0], (2, 3, 3), 8),
    "clamped-time": lambda: (random_mask(4, 9, seed=6), (1, 3, 3), 4),  # 1 frame against a window of 2
}


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("fused", [True, False], ids=["sdpa", "explicit"])
def test_window_attention_matches_the_official_formula(case, fused):
    mask, window, num_windows = CASES[case]()
    attn = make_attention(seed=1)
    attn.fused = fused
    tokens = window[0] * window[1] * window[2]
    clips = 2
    windows = torch.randn(clips * num_windows, tokens, 16, generator=torch.Generator().manual_seed(2))
    out = attn(windows, mask)
    expected = oracle_attention(attn, windows, window, mask)
    torch.testing.assert_close(out.double(), expected, rtol=1e-5, atol=1e-5)

    # gradients too: the bias table's gradient flows through the mask the fused kernel receives
    weights = torch.randn(expected.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    params = [attn.relative_position_bias_table, attn.qkv.weight, attn.proj.weight]
    got = torch.autograd.grad((out.double() * weights).sum(), params)
    want = torch.autograd.grad((expected * weights).sum(), params)
    for name, g, w in zip(("bias table", "qkv", "proj"), got, want):
        torch.testing.assert_close(g.double(), w.double(), rtol=1e-4, atol=1e-5, msg=lambda m, name=name: f"{name}: {m}")


def test_mask_is_broadcast_over_clips_not_repeated(monkeypatch):
    """The fused call gets one (1, nW * heads, N, N) mask for the whole batch of clips."""
    seen = []
    real = F.scaled_dot_product_attention

    def spy(q, k, v, attn_mask=None, **kwargs):
        seen.append((tuple(q.shape), tuple(attn_mask.shape)))
        return real(q, k, v, attn_mask=attn_mask, **kwargs)

    monkeypatch.setattr(video_swin.F, "scaled_dot_product_attention", spy)
    attn = make_attention(seed=0)
    mask, window = shift_mask_of_grid()
    attn(torch.randn(3 * 8, 18, 16), mask)
    # 3 clips x (8 windows x 2 heads), head_dim 8; the mask has one row for all clips
    assert seen == [((3, 16, 18, 8), (1, 16, 18, 18))]


def test_bad_window_count_is_a_clear_error():
    attn = make_attention(seed=0)
    with pytest.raises(ValueError, match="not a whole number of clips"):
        attn(torch.randn(5, 18, 16), random_mask(3, 18, seed=0))


@pytest.mark.parametrize("shape", [(2, 3, 4, 64, 64), (1, 3, 5, 72, 60)], ids=["4x64", "5x72x60"])
def test_backbone_fused_equals_explicit(shape):
    """Whole Video Swin (shifts in every axis, padding, clamped windows): forward and gradients."""
    config = dataclasses.replace(VIDEO_SWIN_PRESETS["tiny"], drop_path_rate=0.0)
    model = build_video_swin(config, seed=4).train()
    with torch.no_grad():  # large biases, so that a mistake in where the bias goes shows
        for module in model.modules():
            if isinstance(module, WindowAttention3D):
                module.relative_position_bias_table.normal_(0.0, 1.0)
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(5))
    results = []
    for fused in (True, False):
        model.set_fused_attention(fused)
        model.zero_grad(set_to_none=True)
        out = model(x)
        out.square().mean().backward()
        results.append((out.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}))
    (fused_out, fused_grads), (explicit_out, explicit_grads) = results
    torch.testing.assert_close(fused_out, explicit_out, rtol=1e-5, atol=1e-5)
    for name in fused_grads:
        torch.testing.assert_close(fused_grads[name], explicit_grads[name], rtol=1e-4, atol=1e-6,
                                   msg=lambda m, name=name: f"{name}: {m}")
    assert all(m.fused is False for m in model.modules() if isinstance(m, WindowAttention3D))


def test_windows_are_clip_major():
    """`window_partition` puts clip b's windows at rows b * nW ... (b + 1) * nW - 1 (what the fold assumes)."""
    x = torch.arange(2 * 2 * 4 * 4, dtype=torch.float32).view(2, 2, 4, 4, 1)  # (B, D, H, W, C)
    windows = window_partition(x, (2, 2, 2))  # 4 windows per clip
    assert windows.shape == (8, 8, 1)
    assert (windows[:4] < 32).all() and (windows[4:] >= 32).all()  # 32 values per clip


# --- the fusion encoder: BERT with SDPA against BERT with eager attention -----------------------


def _violets() -> tuple[torch.nn.Module, torch.nn.Module]:
    from violet_core.config import ModelConfig
    from violet_core.model import Violet

    config = ModelConfig(hidden=32, layers=2, heads=4, intermediate=64, dropout=0.0)
    torch.manual_seed(0)
    fused = Violet(config, vocab_size=60, max_text_len=10)
    eager = Violet(config, vocab_size=60, max_text_len=10, attention_weights=True)
    eager.load_state_dict(fused.state_dict())
    return fused, eager


def test_fusion_encoder_sdpa_equals_eager_with_padding(monkeypatch):
    fused, eager = _violets()
    assert fused.bert.config._attn_implementation == "sdpa"
    assert eager.bert.config._attn_implementation == "eager"
    generator = torch.Generator().manual_seed(1)
    video_tokens = torch.randn(3, 2 * (1 + 4), 32, generator=generator)  # 2 frames of 2 x 2 patches
    ids = torch.randint(5, 60, (3, 10), generator=generator)
    keep = torch.ones(3, 10, dtype=torch.long)
    keep[0, 6:] = 0  # padded texts of different lengths, and one without padding
    keep[1, 3:] = 0

    calls = []
    real = F.scaled_dot_product_attention
    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention",
                        lambda *a, **k: calls.append(1) or real(*a, **k))
    kept = torch.cat([torch.ones(3, 10, dtype=torch.bool), keep.bool()], dim=1)
    weights = torch.randn(int(kept.sum()), 32, generator=generator)
    outputs, grads = [], []
    for model in (fused, eager):
        model.train()  # dropout is 0: train mode is deterministic and exercises the training path
        text = model.embed_text(ids)
        out = model.fuse(video_tokens, text, keep)
        (out[kept] * weights).sum().backward()
        outputs.append(out.detach())
        grads.append({n: p.grad.clone() for n, p in model.bert.encoder.named_parameters()})
        if model is fused:
            assert len(calls) == 2  # one fused call per layer
    assert len(calls) == 2  # and none in the eager model
    torch.testing.assert_close(outputs[0][kept], outputs[1][kept], rtol=1e-5, atol=1e-5)
    for name in grads[0]:
        torch.testing.assert_close(grads[0][name], grads[1][name], rtol=1e-4, atol=1e-6,
                                   msg=lambda m, name=name: f"{name}: {m}")


def test_padded_text_does_not_reach_kept_positions():
    """The padding mask works in the fused path: changing padded tokens changes no kept output."""
    fused, _ = _violets()
    fused.eval()
    generator = torch.Generator().manual_seed(2)
    video_tokens = torch.randn(2, 10, 32, generator=generator)
    text = torch.randn(2, 10, 32, generator=generator)
    keep = torch.ones(2, 10, dtype=torch.long)
    keep[:, 4:] = 0
    changed = text.clone()
    changed[:, 4:] += 5.0
    with torch.no_grad():
        a, b = fused.fuse(video_tokens, text, keep), fused.fuse(video_tokens, changed, keep)
    kept = torch.cat([torch.ones(2, 10, dtype=torch.bool), keep.bool()], dim=1)
    torch.testing.assert_close(a[kept], b[kept], rtol=1e-5, atol=1e-6)
    assert not torch.allclose(a[~kept], b[~kept])  # the padded positions themselves do change
