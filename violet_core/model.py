"""VIOLET (v2): Video Swin video encoder + BERT-style cross-modal fusion, as the official VIOLETv2 code.

    video (B, T, 3, S, S) --Video Swin--> (B, T, h, w, C) --fc, +CLS per frame, +spatial/temporal emb, LN-->
        video tokens (B, T*(1+h*w), H)
    text ids (B, L) --BERT embeddings--> text tokens (B, L, H)
    [video tokens ; text tokens] --BERT encoder (full attention)--> fused (B, T*(1+h*w)+L, H)

This module encodes and fuses, nothing else. The model holds its heads' parameters (`mlm_head`,
`vtm_head`, `mvm.heads.<key>`: the checkpoint layout) but never applies them: violet_core.heads reads
the fused sequence with them (MLM over the text positions, the VTM/retrieval score at the first text
token ([CLS]), MVM at the video positions with the per-frame CLS dropped), in fp32.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from mvm_targets._compat import import_torchvision
from mvm_targets.backbones.video_swin import build_video_swin
from mvm_targets.backbones.video_swin_weights import load_official_checkpoint, load_torchvision_state_dict
from mvm_targets.teachers.weights import MissingWeightsError
from violet_core.config import ModelConfig
from violet_core.heads import VtmHead
from violet_core.mvm import MvmObjective
from violet_core.target_info import TargetInfo

import_torchvision()  # transformers' modeling modules import torchvision; see mvm_targets._compat
from transformers import BertConfig, BertForMaskedLM, BertModel  # noqa: E402
from transformers.models.bert.modeling_bert import BertOnlyMLMHead  # noqa: E402

BERT_SOURCE = "https://huggingface.co/bert-base-uncased (download the folder: config.json, model.safetensors, vocab.txt)"


@dataclass(frozen=True)
class VideoGrid:
    frames: int
    height: int
    width: int

    @property
    def tokens(self) -> int:
        """Video sequence length: one CLS plus h*w patch tokens per frame."""
        return self.frames * (1 + self.height * self.width)


class VideoEncoder(nn.Module):
    """(B, T, 3, S, S) ImageNet-normalised -> (B, T*(1+h*w), H) tokens, h = w = S/32."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        # VIOLETv2 keeps every frame (temporal stride 1): token t mixes frames t and t+1
        self.swin = build_video_swin(config.video_backbone, temporal_stride=1,
                                     grad_checkpointing=config.grad_checkpointing)
        self.proj = nn.Linear(self.swin.num_features, config.hidden)
        self.frame_cls = nn.Parameter(torch.zeros(config.hidden))
        self.spatial = nn.Embedding(1 + config.max_patches, config.hidden)  # index 0 is the CLS slot
        self.temporal = nn.Embedding(config.max_frames, config.hidden)
        self.norm = nn.LayerNorm(config.hidden)
        self.max_patches, self.max_frames = config.max_patches, config.max_frames
        # BERT-style small init: N(0, 1) position tables would swamp the video content after the LayerNorm
        for table in (self.frame_cls, self.spatial.weight, self.temporal.weight):
            nn.init.normal_(table, std=0.02)

    def forward(self, video: Tensor) -> tuple[Tensor, VideoGrid]:
        batch, frames = video.shape[:2]
        frozen = not any(param.requires_grad for param in self.swin.parameters())
        with torch.set_grad_enabled(torch.is_grad_enabled() and not frozen):  # no activations kept for a frozen backbone
            features = self.swin(video.transpose(1, 2))
        features = self.proj(features)  # (B, T, h, w, H)
        _, _, height, width, hidden = features.shape
        grid = VideoGrid(frames, height, width)
        if height * width > self.max_patches or frames > self.max_frames:
            raise ValueError(f"a {frames}x{height}x{width} token grid exceeds model.max_frames={self.max_frames} "
                             f"or model.max_patches={self.max_patches}")
        patches = features.reshape(batch, frames, height * width, hidden)
        cls = self.frame_cls.expand(batch, frames, 1, hidden)
        tokens = torch.cat([cls, patches], dim=2)  # (B, T, 1+h*w, H)
        positions = torch.arange(1 + height * width, device=video.device)
        tokens = tokens + self.spatial(positions)[None, None] + self.temporal(torch.arange(frames, device=video.device))[None, :, None]
        return self.norm(tokens.reshape(batch, grid.tokens, hidden)), grid


class Violet(nn.Module):
    """The VIOLET model: video encoder and fusion encoder, plus the parameters of the heads.

    `infos` lists the MVM targets; each gets its own head inside `self.mvm` (none when empty). The
    heads are built here, after the encoders, so that their place in the state dict and in the
    initialisation's draws from the global RNG stays fixed.
    """

    def __init__(self, config: ModelConfig, vocab_size: int, max_text_len: int, infos: list[TargetInfo] = (),
                 normalization: str = "mean", flow_max_magnitude: float | None = 50.0,
                 attention_weights: bool = False) -> None:
        super().__init__()
        self.config = config
        bert_config = BertConfig(
            vocab_size=vocab_size, hidden_size=config.hidden, num_hidden_layers=config.layers,
            num_attention_heads=config.heads, intermediate_size=config.intermediate,
            hidden_dropout_prob=config.dropout, attention_probs_dropout_prob=config.dropout,
            max_position_embeddings=max(512, max_text_len), initializer_range=config.init_std,
            # fused F.scaled_dot_product_attention; eager attention exposes the attention
            # probabilities that attended masking (AM) samples from
            attn_implementation="eager" if attention_weights else "sdpa")
        self.video = VideoEncoder(config)
        self.bert = BertModel(bert_config, add_pooling_layer=False)
        self.mlm_head = BertOnlyMLMHead(bert_config)
        self.mlm_head.predictions.decoder.weight = self.bert.embeddings.word_embeddings.weight  # tied, as BERT
        self.vtm_head = VtmHead(config.hidden)
        self.mvm = MvmObjective(list(infos), config.hidden, normalization, flow_max_magnitude) if infos else None

    # --- building blocks --------------------------------------------------------------------

    def encode_video(self, video: Tensor) -> tuple[Tensor, VideoGrid]:
        """(B, T, 3, S, S) -> ((B, Lv, H), grid)."""
        return self.video(video)

    def embed_text(self, ids: Tensor) -> Tensor:
        """(B, L) -> (B, L, H): BERT embeddings only; text meets video in the fusion encoder."""
        return self.bert.embeddings(input_ids=ids)

    def fuse(self, video_tokens: Tensor, text_tokens: Tensor, text_mask: Tensor) -> Tensor:
        """(B, Lv, H) + (B, L, H) with text padding mask (B, L) -> fused (B, Lv + L, H)."""
        keep = torch.cat([text_mask.new_ones(video_tokens.shape[:2]), text_mask], dim=1)
        additive = (1.0 - keep[:, None, None, :].to(video_tokens.dtype)) * torch.finfo(video_tokens.dtype).min
        sequence = torch.cat([video_tokens, text_tokens], dim=1)
        return self.bert.encoder(sequence, attention_mask=additive).last_hidden_state

    @staticmethod
    def video_features(fused: Tensor, grid: VideoGrid) -> Tensor:
        """(B, Lv + L, H) -> (B, T, h, w, H): the video positions without the per-frame CLS."""
        batch, hidden = fused.shape[0], fused.shape[-1]
        video = fused[:, :grid.tokens].reshape(batch, grid.frames, 1 + grid.height * grid.width, hidden)
        return video[:, :, 1:].reshape(batch, grid.frames, grid.height, grid.width, hidden)

    def forward(self, video: Tensor, text_ids: Tensor, text_mask: Tensor) -> tuple[Tensor, VideoGrid]:
        video_tokens, grid = self.encode_video(video)
        return self.fuse(video_tokens, self.embed_text(text_ids), text_mask), grid

    @torch.no_grad()
    def received_attention(self, video: Tensor, text_ids: Tensor, text_mask: Tensor) -> tuple[Tensor, Tensor]:
        """Attention each position receives, for attended masking (AM): ((B, T, h, w) video patches,
        (B, L) text tokens), float32.

        As the official `get_att`: attention probabilities averaged over heads, summed over layers
        and over query positions; per-frame CLS slots are dropped. Needs `attention_weights=True`.
        """
        captured: list[Tensor] = []
        hooks = [layer.attention.self.register_forward_hook(lambda _m, _i, out: captured.append(out[1]))
                 for layer in self.bert.encoder.layer]
        try:
            fused, grid = self(video, text_ids, text_mask)
        finally:
            for hook in hooks:
                hook.remove()
        if not captured or captured[0] is None:
            raise RuntimeError("attention weights are not available: build Violet(attention_weights=True) for AM")
        received = torch.stack(captured).float().mean(dim=2).sum(dim=(0, 2))  # (B, Lv + L): per key position
        batch = fused.shape[0]
        video_received = received[:, :grid.tokens].reshape(batch, grid.frames, -1)[:, :, 1:]
        return (video_received.reshape(batch, grid.frames, grid.height, grid.width), received[:, grid.tokens:])

    def video_attention(self, video: Tensor, text_ids: Tensor, text_mask: Tensor) -> Tensor:
        """(B, T, h, w) float32: the video part of `received_attention`."""
        return self.received_attention(video, text_ids, text_mask)[0]


def load_pretrained_parts(model: Violet, config: ModelConfig) -> list[str]:
    """Load the video backbone and/or BERT weights named in the config; returns what was loaded."""
    loaded = []
    if config.backbone_weights:
        path = Path(config.backbone_weights)
        if not path.exists():
            raise MissingWeightsError(f"{path}: Video Swin weights not found; get the official Kinetics-600 "
                                      "release (swin_base_patch244_window877_kinetics600_22k.pth) from "
                                      "https://github.com/SwinTransformer/Video-Swin-Transformer#models")
        if path.suffix == ".pth" and "torchvision" not in path.name:
            load_official_checkpoint(model.video.swin, path)
        else:
            load_torchvision_state_dict(model.video.swin, torch.load(path, map_location="cpu", weights_only=True))
        loaded.append(f"video backbone from {path}")
    if config.text_weights:
        loaded.append(load_bert_weights(model, Path(config.text_weights)))
    return loaded


def load_bert_weights(model: Violet, folder: Path) -> str:
    """Initialise the text embeddings, fusion encoder and MLM head from a local bert-base-uncased folder.

    The MLM head's transform (dense + LayerNorm) and output bias come from BERT's `cls.predictions`,
    as the official code copies `BertForMaskedLM.cls`; its decoder weight is the word-embedding
    table, tied, so it is loaded with the embeddings.
    """
    if not (folder / "config.json").exists():
        raise MissingWeightsError(f"{folder}: no BERT weights (config.json missing); get {BERT_SOURCE}")
    pretrained, info = BertForMaskedLM.from_pretrained(folder, local_files_only=True, output_loading_info=True)
    if pretrained.config.hidden_size != model.config.hidden or pretrained.config.num_hidden_layers != model.config.layers:
        raise ValueError(f"{folder}: BERT is {pretrained.config.num_hidden_layers}x{pretrained.config.hidden_size}, "
                         f"the model config asks for {model.config.layers}x{model.config.hidden}")
    vocab = model.bert.embeddings.word_embeddings.num_embeddings
    if pretrained.config.vocab_size != vocab:
        raise ValueError(f"{folder}: BERT has a {pretrained.config.vocab_size}-token vocabulary, the model "
                         f"{vocab}; set data.tokenizer to the same folder")
    missing, unexpected = model.bert.load_state_dict(pretrained.bert.state_dict(), strict=False)
    if missing:
        raise ValueError(f"{folder}: BERT weights lack {missing[:4]}")
    head_missing = [key for key in info.get("missing_keys", ()) if key.startswith("cls.predictions.")
                    and not key.startswith("cls.predictions.decoder.")]
    if head_missing:  # e.g. a folder saved from BertModel: keep our own initialisation of the head
        return f"BERT from {folder} (no MLM head there: {head_missing[0]}...; head randomly initialised)"
    source, head = pretrained.cls.predictions, model.mlm_head.predictions
    with torch.no_grad():
        head.transform.load_state_dict(source.transform.state_dict())
        # the forward adds decoder.bias; `bias` is the same vector under BERT's name, kept equal
        head.decoder.bias.copy_(source.bias)
        head.bias.copy_(source.bias)
    return f"BERT from {folder} (embeddings, fusion encoder, MLM head)"
