"""Scores, logits and losses are float32 under bf16 autocast and match fp32 formulas written here;
teacher targets are never narrowed to bf16; retrieval ties take the mid-rank."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy.stats import rankdata

from violet_core.config import ModelConfig
from violet_core.downstream.metrics import retrieval_metrics, retrieval_ranks
from violet_core.heads import mlm_logits, pair_score
from violet_core.losses import fp32_cross_entropy, mlm_loss, symmetric_contrastive_loss, vtm_loss
from violet_core.masking import MaskSampler
from violet_core.model import Violet
from violet_core.mvm import MvmObjective
from violet_core.objectives import (MultipleChoiceObjective, OpenEndedObjective, PretrainObjective,
                                    RetrievalObjective, pairwise_scores)
from violet_core.target_info import TargetInfo

pytestmark = pytest.mark.usefixtures("one_torch_thread")
B, T, SIZE, L, VOCAB, HID = 4, 2, 64, 8, 40, 32
SIDE = SIZE // 32
TIGHT = {"rtol": 1e-5, "atol": 1e-5}  # fp32 against float64; one bf16 rounding is ~4e-3 relative


def bf16():
    return torch.autocast("cpu", dtype=torch.bfloat16)


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def info(ref: str, grid: str, clip_shape: tuple[int, ...]) -> TargetInfo:
    return TargetInfo(ref=ref, name=ref, variant="x", target_id=f"{ref}-x", grid=grid, loss="l1",
                      clip_shape=clip_shape, frames_needed=1, params={})


FEAT = info("feat", "patch", (T, SIDE * SIDE, 6))
DENSE = info("dense", "dense", (T, 3, SIZE, SIZE))


@pytest.fixture(scope="module")
def model() -> Violet:
    torch.manual_seed(0)
    config = ModelConfig(video_backbone="tiny", hidden=HID, layers=1, heads=2, intermediate=64, dropout=0.0)
    return Violet(config, VOCAB, L, [FEAT, DENSE]).eval()


def p64(module: torch.nn.Module, name: str) -> torch.Tensor:
    return dict(module.named_parameters())[name].detach().double()


def vtm_formula(model: Violet, x: torch.Tensor) -> torch.Tensor:
    """The VTM head (Dropout-Linear-ReLU-Linear, eval) in float64 on (N, H) features."""
    head = model.vtm_head.mlp
    hidden = F.relu(F.linear(x.double(), p64(head, "1.weight"), p64(head, "1.bias")))
    return F.linear(hidden, p64(head, "3.weight"), p64(head, "3.bias")).squeeze(-1)


def mlm_formula(model: Violet, x: torch.Tensor) -> torch.Tensor:
    """BERT's MLM head in float64: dense, gelu, LayerNorm, tied decoder plus bias."""
    head = model.mlm_head.predictions
    h = F.gelu(F.linear(x.double(), p64(head, "transform.dense.weight"), p64(head, "transform.dense.bias")))
    h = F.layer_norm(h, (HID,), p64(head, "transform.LayerNorm.weight"), p64(head, "transform.LayerNorm.bias"),
                     eps=model.bert.config.layer_norm_eps)
    return F.linear(h, model.bert.embeddings.word_embeddings.weight.detach().double(), p64(head, "decoder.bias"))


def ce_formula(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean CE over labels != -100, in float64."""
    logp = torch.log_softmax(logits.double(), dim=-1)
    keep = labels != -100
    picked = logp[keep, labels[keep]]
    return -picked.sum() / max(1, int(keep.sum()))


def fused_bf16(model: Violet, seed: int = 1) -> tuple[torch.Tensor, object]:
    grid = type("Grid", (), {"tokens": T * (1 + SIDE * SIDE), "frames": T, "height": SIDE, "width": SIDE})()
    fused = torch.randn(B, grid.tokens + L, HID, generator=gen(seed)).bfloat16()  # what a bf16 trunk hands over
    return fused, grid


# ---- heads ---------------------------------------------------------------------------------------

def test_pair_score_is_fp32_under_bf16_autocast(model):
    fused, grid = fused_bf16(model)
    with bf16():
        scores = pair_score(model.vtm_head, fused, grid)
    assert scores.dtype == torch.float32
    torch.testing.assert_close(scores.double(), vtm_formula(model, fused[:, grid.tokens]), **TIGHT)


def test_mlm_logits_are_fp32_under_bf16_autocast(model):
    fused, grid = fused_bf16(model, 2)
    with bf16():
        logits = mlm_logits(model.mlm_head, fused, grid)
    assert logits.dtype == torch.float32
    torch.testing.assert_close(logits.double(), mlm_formula(model, fused[:, grid.tokens:]), **TIGHT)


# ---- losses --------------------------------------------------------------------------------------

def test_text_losses_are_fp32_under_bf16_autocast():
    logits = (torch.randn(3, 5, VOCAB, generator=gen(3)) * 8).bfloat16()
    labels = torch.randint(0, VOCAB, (3, 5), generator=gen(4))
    labels[0, :2] = -100
    scores = torch.randn(6, 4, generator=gen(5)) * 0.3  # / 0.05: logits up to ~20, where bf16 steps are 0.125
    square = torch.randn(5, 5, generator=gen(6)) * 0.3
    t = 0.05
    with bf16():
        losses = {"mlm": mlm_loss(logits, labels), "vtm": vtm_loss(scores, t),
                  "mean": symmetric_contrastive_loss(square, t), "sum": symmetric_contrastive_loss(square, t, "sum"),
                  "ce": fp32_cross_entropy(scores, torch.tensor([0, 1, 2, 3, 0, 1]))}
    assert {name: value.dtype for name, value in losses.items()} == dict.fromkeys(losses, torch.float32)
    rows = -torch.diagonal(torch.log_softmax(square.double() / t, dim=1)).mean()
    cols = -torch.diagonal(torch.log_softmax(square.double().t() / t, dim=1)).mean()
    expected = {"mlm": ce_formula(logits, labels), "vtm": ce_formula(scores / t, torch.zeros(6, dtype=torch.long)),
                "mean": (rows + cols) / 2, "sum": rows + cols,
                "ce": ce_formula(scores, torch.tensor([0, 1, 2, 3, 0, 1]))}
    for name, value in losses.items():
        torch.testing.assert_close(value.double(), expected[name], **TIGHT, msg=name)


def feature_head_formula(objective: MvmObjective, features: torch.Tensor) -> torch.Tensor:
    """FeatureHead (Dropout-Linear-ReLU-Linear, eval) in float64: (B, T, h, w, H) -> (B, T, h*w, D)."""
    mlp = objective.heads["feat"].mlp
    hidden = F.relu(F.linear(features.double(), p64(mlp, "1.weight"), p64(mlp, "1.bias")))
    return F.linear(hidden, p64(mlp, "3.weight"), p64(mlp, "3.bias")).flatten(2, 3)


def dense_head_formula(objective: MvmObjective, features: torch.Tensor) -> torch.Tensor:
    """DenseHead in float64: a per-token linear map, then PixelShuffle(32): (B, T, h, w, H) -> (B, T, C, S, S)."""
    proj = objective.heads["dense"].proj
    out = F.linear(features.double(), p64(proj, "weight"), p64(proj, "bias"))  # (B, T, h, w, C*32*32)
    out = F.pixel_shuffle(out.permute(0, 1, 4, 2, 3).reshape(B * T, -1, SIDE, SIDE), 32)
    return out.reshape(B, T, 3, SIZE, SIZE)


@pytest.mark.parametrize("target_dtype", [torch.float32, torch.float16])
def test_mvm_losses_are_fp32_and_keep_teacher_precision(model, target_dtype):
    """Targets near 10 (bf16 steps there are 0.0625) must not be rounded to bf16 before the loss."""
    objective = model.mvm
    features = torch.randn(B, T, SIDE, SIDE, HID, generator=gen(7)).bfloat16()
    targets = {"feat": 10 + 0.02 * torch.randn(B, *FEAT.clip_shape, generator=gen(8)),
               "dense": 10 + 0.02 * torch.randn(B, *DENSE.clip_shape, generator=gen(9))}
    targets = {k: v.to(target_dtype) for k, v in targets.items()}
    mask = torch.zeros(B, T, SIDE, SIDE, dtype=torch.bool)
    mask[0, 0, 0, 0] = mask[1, 1, 1, 0] = mask[3, 0, 1, 1] = True
    with bf16():
        losses = objective(features, targets, mask)
    assert {k: v.dtype for k, v in losses.items()} == {"mvm_feat": torch.float32, "mvm_dense": torch.float32}
    where = mask.flatten(2)[..., None]  # (B, T, h*w, 1)
    err = (feature_head_formula(objective, features) - targets["feat"].double()).abs()
    expected_feat = (err * where).sum() / (where.sum() * err.shape[-1])
    pixels = mask.repeat_interleave(32, 2).repeat_interleave(32, 3)[:, :, None]  # (B, T, 1, S, S)
    err = (dense_head_formula(objective, features) - targets["dense"].double()).abs()
    expected_dense = (err * pixels).sum() / (pixels.sum() * 3)
    torch.testing.assert_close(losses["mvm_feat"].double(), expected_feat, **TIGHT)
    torch.testing.assert_close(losses["mvm_dense"].double(), expected_dense, **TIGHT)
    # the tolerance is meaningful: narrowing the target to bf16 moves the loss far beyond it
    narrowed = (feature_head_formula(objective, features) - targets["feat"].bfloat16().double()).abs()
    assert abs(float((narrowed * where).sum() / (where.sum() * 6)) - float(expected_feat)) > 1e-3


# ---- objectives end to end -----------------------------------------------------------------------

def task_batch(seed: int) -> dict:
    g = gen(seed)
    ids = torch.randint(5, VOCAB, (B, L), generator=g)
    ids[:, 0], ids[:, -1] = 1, 2
    return {"video": torch.randn(B, T, 3, SIZE, SIZE, generator=g), "text_ids": ids,
            "text_mask": torch.ones(B, L, dtype=torch.long)}


def test_retrieval_objective_loss_is_fp32_from_fp32_scores(model):
    batch = task_batch(10)
    with torch.no_grad(), bf16():
        video_tokens, grid = model.encode_video(batch["video"])
        scores = pairwise_scores(model, video_tokens, grid, model.embed_text(batch["text_ids"]), batch["text_mask"])
        out = RetrievalObjective(model, 0.05, "sum")(batch)
    assert scores.dtype == torch.float32 and out["loss"].dtype == torch.float32
    logits = scores.double().t() / 0.05  # rows = video
    labels = torch.arange(B)
    torch.testing.assert_close(out["loss"].double(), ce_formula(logits, labels) + ce_formula(logits.t(), labels),
                               **TIGHT)


def test_qa_objectives_are_fp32_under_bf16_autocast(model):
    batch = task_batch(11)
    mc = {"video": batch["video"], "option_ids": batch["text_ids"][None].expand(B, B, L).clone(),
          "option_mask": torch.ones(B, B, L, dtype=torch.long), "answer": torch.tensor([0, 1, 2, 3])}
    oe = {**batch, "mask_position": torch.tensor([3, 4, 5, 6]), "answer_id": torch.tensor([7, -100, 9, 11])}
    with torch.no_grad(), bf16():
        mc_objective, oe_objective = MultipleChoiceObjective(model), OpenEndedObjective(model)
        scores, mc_loss = mc_objective.option_scores(mc), mc_objective(mc)["loss"]
        logits, oe_loss = oe_objective.answer_logits(oe), oe_objective(oe)["loss"]
    assert scores.dtype == logits.dtype == mc_loss.dtype == oe_loss.dtype == torch.float32
    torch.testing.assert_close(mc_loss.double(), ce_formula(scores, mc["answer"]), **TIGHT)
    torch.testing.assert_close(oe_loss.double(), ce_formula(logits, oe["answer_id"]), **TIGHT)


def test_pretrain_losses_are_fp32_under_bf16_autocast(model):
    batch = {**task_batch(12), "extras": {},
             "targets": {"feat": torch.randn(B, *FEAT.clip_shape), "dense": torch.randn(B, *DENSE.clip_shape)}}
    special = torch.zeros(B, L, dtype=torch.bool)
    special[:, 0] = special[:, -1] = True
    with torch.no_grad(), bf16():
        losses = PretrainObjective(model, MaskSampler(("rm",), 0.5, 0.5), 3)(batch, gen(13), special)
    assert {"mlm", "vtm", "mvm_feat", "mvm_dense", "loss"} <= set(losses)
    assert all(value.dtype == torch.float32 for value in losses.values()), {k: v.dtype for k, v in losses.items()}


# ---- mid-rank ties -------------------------------------------------------------------------------

def test_mid_rank_ties_by_hand():
    scores = np.array([
        [0.5, 0.5, 0.5, 0.5],   # gt 1: 0 above, 4 tied            -> 0 + (4 + 1) / 2 = 2.5
        [0.9, 0.3, 0.9, 0.1],   # gt 3: 3 above, alone             -> 3 + 1 = 4
        [0.2, 0.8, 0.8, 0.8],   # gt 0: 3 above, alone             -> 4
        [0.7, 0.6, 0.7, 0.6],   # gt 1: 2 above, tied with video 3 -> 2 + (2 + 1) / 2 = 3.5
        [0.4, 0.9, 0.4, 0.1],   # gt 2: 1 above, tied with video 0 -> 1 + 1.5 = 2.5
        [0.3, 0.3, 0.2, 0.1],   # gt 0: 0 above, tied with video 1 -> 1.5
        [0.1, 0.6, 0.2, 0.3],   # gt 1: 0 above, alone             -> 1
    ])
    truth = [1, 3, 0, 1, 2, 0, 1]
    ranks = retrieval_ranks(scores, truth)
    assert ranks.dtype == np.float64
    assert ranks.tolist() == [2.5, 4.0, 4.0, 3.5, 2.5, 1.5, 1.0]
    result = retrieval_metrics(scores, truth)
    # R@1: only rank 1.0 counts (1.5 > 1); R@5 and R@10 hold all; MdR is the middle of the sorted ranks
    assert result["R@1"] == pytest.approx(100 / 7)
    assert result["R@5"] == result["R@10"] == 100.0
    assert result["MdR"] == 2.5  # sorted: 1, 1.5, 2.5, 2.5, 3.5, 4, 4
    assert result["MnR"] == pytest.approx(19 / 7)


def test_mid_ranks_match_scipy_average_ranks():
    rng = np.random.default_rng(0)
    scores = rng.integers(0, 4, size=(200, 9)).astype(np.float32) / 4  # coarse values: ties everywhere
    truth = rng.integers(0, 9, size=200)
    expected = [rankdata(-row, method="average")[t] for row, t in zip(scores, truth)]
    np.testing.assert_array_equal(retrieval_ranks(scores, truth), expected)
    r1 = np.mean(np.asarray(expected) <= 1) * 100
    assert retrieval_metrics(scores, truth)["R@1"] == pytest.approx(r1)
    assert retrieval_metrics(scores, truth)["MdR"] == pytest.approx(np.median(expected))
    assert retrieval_metrics(torch.tensor(scores, dtype=torch.bfloat16), truth)["MdR"] == pytest.approx(
        np.median(expected))  # coarse values are exact in bf16
