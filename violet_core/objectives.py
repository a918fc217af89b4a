"""Training objectives as modules, so DDP sees one forward per step (and syncs every head's grads).

Each objective wraps the shared `Violet` model and returns a dict of named scalar losses with the
total under "loss". Scores, logits and losses are float32 under any autocast (violet_core.losses.full_precision).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from violet_core.heads import mlm_logits, pair_score
from violet_core.losses import fp32_cross_entropy, mlm_loss, symmetric_contrastive_loss, total_loss, vtm_loss
from violet_core.mask_pixels import apply_video_mask
from violet_core.masking import MaskSampler
from violet_core.model import Violet


class PretrainObjective(nn.Module):
    """L = L_MLM + L_VTM + weight * sum_target L_MVM (all weights 1 in the paper).

    Targets are computed from the unmasked clip (they come from the cache); the video the encoder
    sees has its masked patches zeroed. Without an MVM target the video is not masked at all, as
    in the official code (contrast runs see whole videos), unless the sampler's
    `video_without_mvm` asks for it. VTM pairs each video with its own caption and `negatives`
    other in-batch captions, built from the same masked inputs as the official code.
    """

    def __init__(self, model: Violet, sampler: MaskSampler, mask_token_id: int, negatives: int = 3,
                 temperature: float = 0.05, mvm_weight: float = 1.0) -> None:
        super().__init__()
        self.model = model
        self.sampler = sampler
        self.mask_token_id = mask_token_id
        self.negatives = negatives
        self.temperature = temperature
        self.mvm_weight = mvm_weight

    def forward(self, batch: dict, generator: torch.Generator, special: Tensor) -> dict[str, Tensor]:
        """batch: video (B, T, 3, S, S), text_ids/text_mask (B, L), targets, extras; special (B, L) bool."""
        video, ids, keep = batch["video"], batch["text_ids"], batch["text_mask"]
        batch_size, frames, _, size, _ = video.shape
        side = size // 32
        mask_video = self.sampler.masks_video(self.model.mvm is not None)
        video_attention = text_attention = None
        if self.sampler.needs_attention_for(mask_video):
            video_attention, text_attention = (a.cpu() for a in self.model.received_attention(video, ids, keep))
        masks = self.sampler.sample(ids.cpu(), special.cpu(), self.mask_token_id, frames, side, side, generator,
                                    mask_video=mask_video, video_attention=video_attention,
                                    text_attention=text_attention)
        video_mask = masks.video.to(video.device)
        masked_ids, labels = masks.text_ids.to(ids.device), masks.labels.to(ids.device)

        video_tokens, grid = self.model.encode_video(apply_video_mask(video, video_mask) if mask_video else video)
        text_tokens = self.model.embed_text(masked_ids)
        fused = self.model.fuse(video_tokens, text_tokens, keep)
        losses = {"mlm": mlm_loss(mlm_logits(self.model.mlm_head, fused, grid), labels)}

        options = min(batch_size, 1 + self.negatives)
        if options > 1:
            scores = [pair_score(self.model.vtm_head, fused, grid)]
            for shift in _negative_shifts(batch_size, options - 1, generator):
                order = (torch.arange(batch_size) + shift) % batch_size
                negative = self.model.fuse(video_tokens, text_tokens[order.to(ids.device)], keep[order.to(ids.device)])
                scores.append(pair_score(self.model.vtm_head, negative, grid))
            losses["vtm"] = vtm_loss(torch.stack(scores, dim=1), self.temperature)

        if self.model.mvm is not None:
            mvm = self.model.mvm(Violet.video_features(fused, grid), batch["targets"], video_mask, batch.get("extras"))
            losses.update({name: value * self.mvm_weight for name, value in mvm.items()})
        losses["loss"] = total_loss(losses)  # per-term parts of a target loss are logged, not added again
        losses["mask_ratio"] = video_mask.float().mean().detach()
        return losses


def _negative_shifts(batch_size: int, count: int, generator: torch.Generator) -> list[int]:
    """Distinct non-zero cyclic shifts: text (i + shift) % B is never video i's own caption."""
    return (torch.randperm(batch_size - 1, generator=generator)[:count] + 1).tolist()


class RetrievalObjective(nn.Module):
    """Text-to-video finetuning: all B x B pairs are cross-encoded; symmetric contrastive loss.

    reduction "mean" averages the text-to-video and video-to-text CE; "sum" adds them, as the
    official `NormSoftmaxLoss` (paper mode).
    """

    def __init__(self, model: Violet, temperature: float = 0.05, reduction: str = "mean") -> None:
        super().__init__()
        self.model = model
        self.temperature = temperature
        self.reduction = reduction

    def forward(self, batch: dict) -> dict[str, Tensor]:
        video_tokens, grid = self.model.encode_video(batch["video"])
        text_tokens = self.model.embed_text(batch["text_ids"])
        scores = pairwise_scores(self.model, video_tokens, grid, text_tokens, batch["text_mask"])
        loss = symmetric_contrastive_loss(scores, self.temperature, self.reduction)
        return {"loss": loss, "retrieval": loss.detach()}


def pairwise_scores(model: Violet, video_tokens: Tensor, grid, text_tokens: Tensor, text_keep: Tensor) -> Tensor:
    """Cross-encode every text with every video: (N_text, N_video) float32 scores."""
    n_video, n_text = video_tokens.shape[0], text_tokens.shape[0]
    videos = video_tokens.repeat(n_text, 1, 1)  # text-major: row i*n_video + j = (text i, video j)
    texts = text_tokens.repeat_interleave(n_video, dim=0)
    keep = text_keep.repeat_interleave(n_video, dim=0)
    return pair_score(model.vtm_head, model.fuse(videos, texts, keep), grid).reshape(n_text, n_video)


class MultipleChoiceObjective(nn.Module):
    """Multiple-choice QA: each "question answer: option" text is scored VTM-style; CE over options."""

    def __init__(self, model: Violet) -> None:
        super().__init__()
        self.model = model

    def option_scores(self, batch: dict) -> Tensor:
        """video (B, T, 3, S, S), option_ids/option_mask (B, O, L) -> (B, O) float32."""
        video_tokens, grid = self.model.encode_video(batch["video"])
        batch_size, options, length = batch["option_ids"].shape
        texts = self.model.embed_text(batch["option_ids"].reshape(batch_size * options, length))
        fused = self.model.fuse(video_tokens.repeat_interleave(options, dim=0), texts,
                                batch["option_mask"].reshape(batch_size * options, length))
        return pair_score(self.model.vtm_head, fused, grid).reshape(batch_size, options)

    def forward(self, batch: dict) -> dict[str, Tensor]:
        loss = fp32_cross_entropy(self.option_scores(batch), batch["answer"])
        return {"loss": loss, "qa_mc": loss.detach()}


class OpenEndedObjective(nn.Module):
    """Open-ended QA: "question answer: [MASK]"; the MLM head predicts the answer token."""

    def __init__(self, model: Violet) -> None:
        super().__init__()
        self.model = model

    def answer_logits(self, batch: dict) -> Tensor:
        """-> (B, V) float32 logits at each sample's [MASK] position (batch["mask_position"], (B,))."""
        fused, grid = self.model(batch["video"], batch["text_ids"], batch["text_mask"])
        logits = mlm_logits(self.model.mlm_head, fused, grid)
        return logits[torch.arange(logits.shape[0], device=logits.device), batch["mask_position"]]

    def forward(self, batch: dict) -> dict[str, Tensor]:
        logits = self.answer_logits(batch)
        loss = fp32_cross_entropy(logits, batch["answer_id"], ignore_index=-100)
        if not torch.isfinite(loss):  # a batch whose answers are all unexpressible: nothing to learn
            loss = logits.sum() * 0.0
        return {"loss": loss, "qa_oe": loss.detach()}
