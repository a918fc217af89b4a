"""Video Swin Transformer (Liu et al., "Video Swin Transformer", CVPR'22), as VIOLETv2 uses it.

One implementation serves two roles: the frozen `tvf` teacher (mvm_targets/targets/tvf.py) and
the trainable video encoder of the VIOLET student. Parameter names follow the official mmaction
release (`patch_embed.proj`, `layers.{i}.blocks.{j}.attn.qkv`, `layers.{i}.downsample.reduction`,
`norm`, ...), so an official checkpoint's `backbone.*` keys load without renaming; see
`video_swin_weights.py` for the loaders (official and torchvision layouts).

Layout: the network runs channels-last, `(B, T, H, W, C)`, from the patch embedding to the final
LayerNorm (the official code permutes to channels-first between stages; the values are the same).

VIOLETv2's change (docs/method.md §1): the patch embedding keeps its (2, 4, 4) Conv3d kernel but strides
(1, 4, 4) over time after padding one zero frame at the end, so the token grid keeps all T frames
(token t mixes frames t and t+1). `VideoSwinConfig.temporal_stride` selects it (1) or the
original non-overlapping embedding (2). Parameter shapes do not depend on it.

Shapes for an input `(B, 3, T, H, W)`:
    patch embedding  -> (B, T', H/4,  W/4,  C)      T' = T (stride 1) or ceil(T / 2) (stride 2)
    stage 1          -> (B, T', H/4,  W/4,  C)      then patch merging -> (B, T', H/8, W/8, 2C)
    stage 2          -> (B, T', H/8,  W/8,  2C)     ... merging -> 4C
    stage 3          -> (B, T', H/16, W/16, 4C)     ... merging -> 8C
    stage 4 + norm   -> (B, T', H/32, W/32, 8C)     (each /k rounds up: sizes are padded)
Patch merging halves H and W only; time is never merged.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

Triple = tuple[int, int, int]


@dataclass(frozen=True)
class VideoSwinConfig:
    """Architecture of a Video Swin Transformer; everything that fixes parameter shapes or values."""

    embed_dim: int = 128
    depths: tuple[int, ...] = (2, 2, 18, 2)
    num_heads: tuple[int, ...] = (4, 8, 16, 32)
    patch_size: Triple = (2, 4, 4)  # Conv3d kernel (t, h, w)
    window_size: Triple = (8, 7, 7)  # attention window (t, h, w), in tokens
    mlp_ratio: float = 4.0
    qkv_bias: bool = True
    patch_norm: bool = True  # LayerNorm after the patch embedding (true in every official release)
    drop_rate: float = 0.0  # dropout after the patch embedding, in attention proj and MLP
    attn_drop_rate: float = 0.0
    drop_path_rate: float = 0.2  # stochastic depth, linearly increasing over all blocks
    temporal_stride: int = 1  # 1: VIOLETv2's overlapping embedding (T' = T); patch_size[0]: original
    in_chans: int = 3

    def __post_init__(self) -> None:
        if len(self.depths) != len(self.num_heads) or not self.depths:
            raise ValueError(f"depths {self.depths} and num_heads {self.num_heads} must be non-empty and equally long")
        if len(self.patch_size) != 3 or len(self.window_size) != 3:
            raise ValueError("patch_size and window_size must be (t, h, w) triples")
        if min(self.patch_size) < 1 or min(self.window_size) < 1:
            raise ValueError(f"patch_size {self.patch_size} and window_size {self.window_size} must be positive")
        if self.temporal_stride not in (1, self.patch_size[0]):
            raise ValueError(f"temporal_stride must be 1 (VIOLETv2) or patch_size[0]={self.patch_size[0]} "
                             f"(original), got {self.temporal_stride}")
        for stage, heads in enumerate(self.num_heads):
            dim = self.embed_dim * 2 ** stage
            if heads < 1 or dim % heads:
                raise ValueError(f"stage {stage}: width {dim} is not divisible by {heads} heads")

    @property
    def num_features(self) -> int:
        """Channels of the output, C_last = embed_dim * 2**(stages - 1) (1024 for Swin-B)."""
        return self.embed_dim * 2 ** (len(self.depths) - 1)

    def output_shape(self, num_frames: int, height: int, width: int) -> tuple[int, int, int, int]:
        """(T', H', W', C_last) of `forward` for a (B, 3, T, H, W) input."""
        frames = num_frames if self.temporal_stride == 1 else math.ceil(num_frames / self.temporal_stride)
        h, w = math.ceil(height / self.patch_size[1]), math.ceil(width / self.patch_size[2])
        for _ in range(len(self.depths) - 1):
            h, w = math.ceil(h / 2), math.ceil(w / 2)
        return frames, h, w, self.num_features


VIDEO_SWIN_PRESETS: dict[str, VideoSwinConfig] = {
    # For CPU tests only: two blocks per stage so every stage has a shifted block, and a small
    # temporal window so that a few frames already exercise temporal shifts and padding.
    "tiny": VideoSwinConfig(embed_dim=32, depths=(2, 2, 2, 2), num_heads=(1, 2, 2, 4), window_size=(2, 7, 7),
                            drop_path_rate=0.1),
    # The official Kinetics models (torchvision's swin3d_t/s/b have the same shapes). Drop-path
    # rates are the training settings; they do nothing in eval mode. Swin-B uses VIOLETv2's 0.2.
    "swin-t": VideoSwinConfig(embed_dim=96, depths=(2, 2, 6, 2), num_heads=(3, 6, 12, 24), drop_path_rate=0.1),
    "swin-s": VideoSwinConfig(embed_dim=96, depths=(2, 2, 18, 2), num_heads=(3, 6, 12, 24), drop_path_rate=0.1),
    "swin-b": VideoSwinConfig(embed_dim=128, depths=(2, 2, 18, 2), num_heads=(4, 8, 16, 32), drop_path_rate=0.2),
}


def video_swin_config(arch: str | VideoSwinConfig, **overrides: Any) -> VideoSwinConfig:
    """A preset by name (or a config), with fields replaced, e.g. `video_swin_config("swin-b", temporal_stride=2)`."""
    if isinstance(arch, VideoSwinConfig):
        base = arch
    elif arch in VIDEO_SWIN_PRESETS:
        base = VIDEO_SWIN_PRESETS[arch]
    else:
        raise ValueError(f"unknown Video Swin preset '{arch}'; choose one of {', '.join(VIDEO_SWIN_PRESETS)}")
    return dataclasses.replace(base, **overrides) if overrides else base


# ----------------------------------------------------------------------------------------------
# Windows and masks


def effective_window(size: Triple, window_size: Triple, shift_size: Triple) -> tuple[Triple, Triple]:
    """Clamp the window to the input where the input is not larger, and do not shift along that axis.

    Same rule as the official code (`get_window_size`): a stage whose token grid is at most one
    window wide along an axis attends over the whole axis without a shift.
    """
    window = tuple(s if s <= w else w for s, w in zip(size, window_size))
    shift = tuple(0 if s <= w else sh for s, w, sh in zip(size, window_size, shift_size))
    return window, shift  # type: ignore[return-value]


def window_partition(x: Tensor, window: Triple) -> Tensor:
    """(B, D, H, W, C) with D, H, W multiples of the window -> (B * nW, Wd*Wh*Ww, C), windows in raster order."""
    b, d, h, w, c = x.shape
    wd, wh, ww = window
    x = x.view(b, d // wd, wd, h // wh, wh, w // ww, ww, c)
    return x.permute(0, 1, 3, 5, 2, 4, 6, 7).reshape(-1, wd * wh * ww, c)


def window_reverse(windows: Tensor, window: Triple, batch: int, size: Triple) -> Tensor:
    """Inverse of `window_partition`: (B * nW, Wd*Wh*Ww, C) -> (B, D, H, W, C)."""
    d, h, w = size
    wd, wh, ww = window
    x = windows.view(batch, d // wd, h // wh, w // ww, wd, wh, ww, -1)
    return x.permute(0, 1, 4, 2, 5, 3, 6, 7).reshape(batch, d, h, w, -1)


def shifted_window_mask(padded: Triple, window: Triple, shift: Triple, device: torch.device) -> Tensor:
    """(nW, N, N) additive mask, 0 within a region and -100 across regions, for shifted windows.

    After the cyclic roll, a window at the far edge holds tokens from opposite sides of the grid.
    Along each shifted axis the padded grid splits into three regions, [0, P - w), [P - w, P - s)
    and [P - s, P); tokens attend only to tokens of the same region triple. -100 (not -inf)
    matches the official models, which were trained with it.
    """
    labels = []
    for length, w, s in zip(padded, window, shift):
        region = torch.zeros(length, dtype=torch.long, device=device)
        if s > 0:
            region[length - w:length - s] = 1
            region[length - s:] = 2
        labels.append(region)
    grid = labels[0][:, None, None] * 9 + labels[1][None, :, None] * 3 + labels[2][None, None, :]  # (Dp, Hp, Wp)
    windows = window_partition(grid[None, ..., None], window).squeeze(-1)  # (nW, N)
    different = windows[:, None, :] != windows[:, :, None]  # (nW, N, N)
    return torch.zeros(different.shape, device=device).masked_fill_(different, -100.0)


def relative_position_index(window_size: Triple) -> Tensor:
    """(N, N) index into the (2Wd-1)(2Wh-1)(2Ww-1)-row bias table for each token pair of a full window."""
    return _relative_position_index(tuple(window_size)).clone()  # a copy: each block owns its buffer


@functools.lru_cache(maxsize=8)
def _relative_position_index(window_size: Triple) -> Tensor:
    # cached: building Swin-B computes the same (392, 392) index for each of its 24 blocks
    coords = torch.stack(torch.meshgrid(*(torch.arange(w) for w in window_size), indexing="ij")).flatten(1)  # (3, N)
    relative = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0)  # (N, N, 3), each in (-w, w)
    relative = relative + torch.tensor(window_size) - 1  # shift to [0, 2w - 1)
    strides = torch.tensor([(2 * window_size[1] - 1) * (2 * window_size[2] - 1), 2 * window_size[2] - 1, 1])
    return (relative * strides).sum(-1)


# ----------------------------------------------------------------------------------------------
# Modules


def drop_path(x: Tensor, prob: float, training: bool) -> Tensor:
    """Stochastic depth: drop the whole residual branch per sample, rescaling the kept ones."""
    if prob == 0.0 or not training:
        return x
    keep = 1.0 - prob
    mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
    return x * mask / keep


class DropPath(nn.Module):
    def __init__(self, prob: float = 0.0) -> None:
        super().__init__()
        self.prob = prob

    def forward(self, x: Tensor) -> Tensor:
        return drop_path(x, self.prob, self.training)

    def extra_repr(self) -> str:
        return f"prob={self.prob}"


class Mlp(nn.Module):
    """fc1 -> GELU -> dropout -> fc2 -> dropout (names as in the official release)."""

    def __init__(self, dim: int, hidden: int, drop: float = 0.0) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)
        self.drop = nn.Dropout(drop)

    def forward(self, x: Tensor) -> Tensor:
        return self.drop(self.fc2(self.drop(self.act(self.fc1(x)))))


class WindowAttention3D(nn.Module):
    """Multi-head self-attention inside 3-D windows, with a learned relative position bias.

    `fused` (default) runs `F.scaled_dot_product_attention` with the position bias and the shift
    mask summed into one additive float mask; `fused = False` runs the official formula
    softmax(q k^T * head_dim^-0.5 + bias + mask) v with the attention matrix materialised. Both
    compute the same function (tests/test_video_swin_sdpa.py); `SwinTransformer3D.set_fused_attention`
    switches every block of a model, e.g. to benchmark one against the other.
    """

    fused: bool = True

    def __init__(self, dim: int, window_size: Triple, num_heads: int, qkv_bias: bool = True,
                 attn_drop: float = 0.0, proj_drop: float = 0.0) -> None:
        super().__init__()
        self.window_size = window_size
        self.num_heads = num_heads
        self.attn_drop = attn_drop
        num_offsets = (2 * window_size[0] - 1) * (2 * window_size[1] - 1) * (2 * window_size[2] - 1)
        self.relative_position_bias_table = nn.Parameter(torch.zeros(num_offsets, num_heads))
        # Not persistent: it is a function of window_size, and keeping it out of the state dict
        # lets the loaders check a checkpoint's copy instead of silently overwriting ours.
        self.register_buffer("relative_position_index", relative_position_index(window_size), persistent=False)
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)
        _trunc_normal_(self.relative_position_bias_table)

    def position_bias(self, tokens: int) -> Tensor:
        """(heads, N, N) bias for windows of N tokens.

        A clamped window (smaller than `window_size`) takes the top-left N x N block of the full
        window's index, as the official code does. This is geometrically exact when only the
        temporal extent is clamped (time is the slowest axis of the flattened window: VIOLET's 4
        frames against a window of 8), and an approximation the pretrained models share otherwise.
        """
        index = self.relative_position_index[:tokens, :tokens].reshape(-1)
        return self.relative_position_bias_table[index].view(tokens, tokens, -1).permute(2, 0, 1)

    def forward(self, windows: Tensor, mask: Tensor | None = None) -> Tensor:
        """windows: (B * nW, N, C), clip-major as `window_partition` makes them; mask: (nW, N, N)
        additive, or None for unshifted windows -> (B * nW, N, C)."""
        batch_windows, tokens, channels = windows.shape
        heads = self.num_heads
        head_dim = channels // heads
        num_windows = 1 if mask is None else mask.shape[0]
        if batch_windows % num_windows:
            raise ValueError(f"{batch_windows} windows are not a whole number of clips of {num_windows} windows")
        clips = batch_windows // num_windows
        qkv = self.qkv(windows).view(clips, num_windows, tokens, 3, heads, head_dim)
        # Windows fold into the head axis, (B, nW * heads, N, head_dim), so that one
        # (1, nW * heads, N, N) mask broadcasts over the clips: fused kernels read a batch-broadcast
        # mask in place (and keep only that for the backward pass), where a per-window mask on a
        # (B * nW)-long batch axis would have to be materialised B times.
        q, k, v = qkv.permute(3, 0, 1, 4, 2, 5).reshape(3, clips, num_windows * heads, tokens, head_dim).unbind(0)
        bias = self.position_bias(tokens).to(q.dtype)  # (heads, N, N)
        if mask is not None:
            bias = bias.unsqueeze(0) + mask.to(q.dtype).unsqueeze(1)  # (nW, heads, N, N)
        bias = bias.reshape(1, num_windows * heads, tokens, tokens)
        dropout = self.attn_drop if self.training else 0.0
        if self.fused:
            # SDPA's default scale is head_dim ** -0.5, the official one
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, dropout_p=dropout)
        else:
            out = explicit_attention(q, k, v, bias, dropout)
        out = out.view(clips, num_windows, heads, tokens, head_dim).permute(0, 1, 3, 2, 4)
        return self.proj_drop(self.proj(out.reshape(batch_windows, tokens, channels)))


def explicit_attention(q: Tensor, k: Tensor, v: Tensor, bias: Tensor, dropout: float = 0.0) -> Tensor:
    """softmax(q k^T * head_dim^-0.5 + bias) v with the attention matrix materialised (the official code).

    q, k, v: (..., N, head_dim); bias broadcastable to (..., N, N) -> (..., N, head_dim).
    """
    attn = (q * q.shape[-1] ** -0.5) @ k.transpose(-2, -1) + bias
    attn = attn.softmax(dim=-1)
    if dropout:
        attn = F.dropout(attn, dropout)
    return attn @ v


class SwinTransformerBlock3D(nn.Module):
    """Pre-norm block: x + attn(norm1(x)) in (shifted) windows, then x + mlp(norm2(x))."""

    def __init__(self, dim: int, num_heads: int, window_size: Triple, shifted: bool, mlp_ratio: float = 4.0,
                 qkv_bias: bool = True, drop: float = 0.0, attn_drop: float = 0.0, drop_path: float = 0.0) -> None:
        super().__init__()
        self.shifted = shifted  # odd blocks shift by half a window (before clamping)
        self.norm1 = nn.LayerNorm(dim)
        self.attn = WindowAttention3D(dim, window_size, num_heads, qkv_bias, attn_drop, drop)
        self.drop_path = DropPath(drop_path)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), drop)

    def forward(self, x: Tensor, window: Triple, shift: Triple, mask: Tensor | None) -> Tensor:
        """x: (B, D, H, W, C); `window`/`shift` already clamped to (D, H, W) -> (B, D, H, W, C)."""
        if not self.shifted:
            shift = (0, 0, 0)
        x = x + self.drop_path(self._attend(self.norm1(x), window, shift, mask))
        return x + self.drop_path(self.mlp(self.norm2(x)))

    def _attend(self, x: Tensor, window: Triple, shift: Triple, mask: Tensor | None) -> Tensor:
        b, d, h, w, _ = x.shape
        # Pad after norm1 with zeros, as the official code does: the padded tokens are real keys
        # (never masked) in the windows they fall in, and the pretrained weights expect that.
        pads = [(win - size % win) % win for size, win in zip((d, h, w), window)]
        if any(pads):
            x = F.pad(x, (0, 0, 0, pads[2], 0, pads[1], 0, pads[0]))
        padded = (d + pads[0], h + pads[1], w + pads[2])
        shifted = any(shift)
        if shifted:
            x = torch.roll(x, shifts=tuple(-s for s in shift), dims=(1, 2, 3))
        windows = self.attn(window_partition(x, window), mask if shifted else None)
        x = window_reverse(windows, window, b, padded)
        if shifted:
            x = torch.roll(x, shifts=shift, dims=(1, 2, 3))
        return x[:, :d, :h, :w] if any(pads) else x


class PatchMerging(nn.Module):
    """2x2 spatial merge: (B, D, H, W, C) -> (B, D, ceil(H/2), ceil(W/2), 2C); time is kept."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(4 * dim)
        self.reduction = nn.Linear(4 * dim, 2 * dim, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        h, w = x.shape[2:4]
        if h % 2 or w % 2:
            x = F.pad(x, (0, 0, 0, w % 2, 0, h % 2))
        # the channel order (h, w) = (0,0), (1,0), (0,1), (1,1) is what the pretrained reduction expects
        x = torch.cat([x[:, :, 0::2, 0::2], x[:, :, 1::2, 0::2], x[:, :, 0::2, 1::2], x[:, :, 1::2, 1::2]], dim=-1)
        return self.reduction(self.norm(x))


class BasicLayer(nn.Module):
    """One stage: `depth` blocks alternating plain / shifted windows, then an optional patch merge."""

    def __init__(self, dim: int, depth: int, num_heads: int, window_size: Triple, mlp_ratio: float, qkv_bias: bool,
                 drop: float, attn_drop: float, drop_paths: list[float], downsample: bool) -> None:
        super().__init__()
        self.window_size = window_size
        self.shift_size: Triple = tuple(w // 2 for w in window_size)  # type: ignore[assignment]
        self.blocks = nn.ModuleList(
            SwinTransformerBlock3D(dim, num_heads, window_size, shifted=i % 2 == 1, mlp_ratio=mlp_ratio,
                                   qkv_bias=qkv_bias, drop=drop, attn_drop=attn_drop, drop_path=drop_paths[i])
            for i in range(depth))
        self.downsample = PatchMerging(dim) if downsample else None
        self.grad_checkpointing = False

    def forward(self, x: Tensor) -> Tensor:
        """(B, D, H, W, C) -> (B, D, H, W, C), or (B, D, H/2, W/2, 2C) after the merge."""
        size: Triple = tuple(x.shape[1:4])  # type: ignore[assignment]
        window, shift = effective_window(size, self.window_size, self.shift_size)
        mask = None
        if any(shift) and len(self.blocks) > 1:
            padded = tuple(math.ceil(s / w) * w for s, w in zip(size, window))
            mask = shifted_window_mask(padded, window, shift, x.device)  # type: ignore[arg-type]
        for block in self.blocks:
            if self.grad_checkpointing and torch.is_grad_enabled():
                x = checkpoint(block, x, window, shift, mask, use_reentrant=False)
            else:
                x = block(x, window, shift, mask)
        return self.downsample(x) if self.downsample is not None else x


class PatchEmbed3D(nn.Module):
    """(B, 3, T, H, W) -> (B, T', H/4, W/4, C) with a Conv3d over (2, 4, 4) patches.

    temporal_stride 1 (VIOLETv2): stride (1, 4, 4) after one zero frame is padded at the end, so
    T' = T and token t sees frames t and t+1 (the last token sees the last frame and the pad).
    temporal_stride 2 (original): stride (2, 4, 4), T padded up to even, T' = ceil(T / 2).
    H and W are zero-padded up to multiples of 4 in both cases.
    """

    def __init__(self, patch_size: Triple, temporal_stride: int, in_chans: int, embed_dim: int, norm: bool) -> None:
        super().__init__()
        self.patch_size = patch_size
        self.temporal_stride = temporal_stride
        self.proj = nn.Conv3d(in_chans, embed_dim, kernel_size=patch_size,
                              stride=(temporal_stride, patch_size[1], patch_size[2]))
        self.norm = nn.LayerNorm(embed_dim) if norm else None

    def forward(self, x: Tensor) -> Tensor:
        t, h, w = x.shape[2:]
        pt, ph, pw = self.patch_size
        if self.temporal_stride == 1:
            pad_t = pt - 1
        else:
            pad_t = (pt - t % pt) % pt
        pad_h, pad_w = (ph - h % ph) % ph, (pw - w % pw) % pw
        if pad_t or pad_h or pad_w:
            x = F.pad(x, (0, pad_w, 0, pad_h, 0, pad_t))
        x = self.proj(x).permute(0, 2, 3, 4, 1)  # (B, T', H', W', C)
        return self.norm(x) if self.norm is not None else x


class SwinTransformer3D(nn.Module):
    """Video Swin Transformer backbone (no classification head).

    `forward(x)`: x (B, 3, T, H, W), ImageNet-normalised RGB -> (B, T', ceil(H/32), ceil(W/32), C_last)
    after the final LayerNorm, channels-last; T' = T with `temporal_stride=1` (VIOLETv2),
    ceil(T/2) with 2. For Swin-B at 224^2 and T = 4 that is (B, 4, 7, 7, 1024).
    """

    def __init__(self, config: VideoSwinConfig | None = None, grad_checkpointing: bool = False) -> None:
        super().__init__()
        self.config = config = config or VideoSwinConfig()
        self.patch_embed = PatchEmbed3D(config.patch_size, config.temporal_stride, config.in_chans,
                                        config.embed_dim, config.patch_norm)
        self.pos_drop = nn.Dropout(config.drop_rate)
        rates = torch.linspace(0, config.drop_path_rate, sum(config.depths)).tolist()
        self.layers = nn.ModuleList()
        for stage, (depth, heads) in enumerate(zip(config.depths, config.num_heads)):
            first = sum(config.depths[:stage])
            self.layers.append(BasicLayer(
                dim=config.embed_dim * 2 ** stage, depth=depth, num_heads=heads, window_size=config.window_size,
                mlp_ratio=config.mlp_ratio, qkv_bias=config.qkv_bias, drop=config.drop_rate,
                attn_drop=config.attn_drop_rate, drop_paths=rates[first:first + depth],
                downsample=stage < len(config.depths) - 1))
        self.num_features = config.num_features
        self.norm = nn.LayerNorm(self.num_features)
        self.apply(_init_weights)
        self.set_grad_checkpointing(grad_checkpointing)

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute each block's activations in the backward pass (saves memory when training)."""
        for layer in self.layers:
            layer.grad_checkpointing = enable

    def set_fused_attention(self, enable: bool = True) -> None:
        """Window attention through `F.scaled_dot_product_attention` (True, the default) or the
        explicit softmax formula (False); the two compute the same values."""
        for module in self.modules():
            if isinstance(module, WindowAttention3D):
                module.fused = enable

    def forward_features(self, x: Tensor, norm: bool = True) -> Tensor:
        """(B, 3, T, H, W) -> (B, T', H/32, W/32, C_last); `norm=False` skips the final LayerNorm."""
        if x.ndim != 5 or x.shape[1] != self.config.in_chans:
            raise ValueError(f"expected a (B, {self.config.in_chans}, T, H, W) video, got {tuple(x.shape)}")
        x = self.pos_drop(self.patch_embed(x))
        for layer in self.layers:
            x = layer(x)
        return self.norm(x) if norm else x

    def forward(self, x: Tensor) -> Tensor:
        """(B, 3, T, H, W) ImageNet-normalised -> (B, T', H/32, W/32, C_last) after the final LayerNorm."""
        return self.forward_features(x, norm=True)


def _trunc_normal_(tensor: Tensor, std: float = 0.02) -> Tensor:
    """The official `trunc_normal_(std=0.02)`: its cut-off is at +-2 in absolute units (100 sigma),
    so it is a plain normal draw. Sampling that directly is several times faster than torch's
    inverse-CDF method, which takes ~10 s for Swin-B's 88M weights on a CPU."""
    with torch.no_grad():
        return tensor.normal_(0.0, std)


def _init_weights(module: nn.Module) -> None:
    # The official initialisation; the Conv3d keeps PyTorch's default.
    if isinstance(module, nn.Linear):
        _trunc_normal_(module.weight)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


def build_video_swin(arch: str | VideoSwinConfig = "swin-b", seed: int | None = None, grad_checkpointing: bool = False,
                     **overrides: Any) -> SwinTransformer3D:
    """A randomly initialised model from a preset name or config; `seed` makes the weights reproducible
    without touching the global RNG."""
    config = video_swin_config(arch, **overrides)
    if seed is None:
        return SwinTransformer3D(config, grad_checkpointing)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return SwinTransformer3D(config, grad_checkpointing)
