"""MVM heads and losses (docs/method.md §4, §5): layouts, masked-only supervision, loss scaling, one head per target."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from violet_core.heads import DenseHead, FeatureHead, TokenHead, VtmHead, build_head
from violet_core.losses import mlm_loss, symmetric_contrastive_loss, target_loss, vtm_loss
from violet_core.mvm import MvmObjective
from violet_core.target_info import TargetInfo

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(autouse=True)
def seeded_init():
    """Head initialisation draws from the global RNG; tiny heads (1 channel per VQ cell at hidden 8)
    can have every ReLU dead at a position for an unlucky init, so fix it."""
    torch.manual_seed(0)
B, T, HH, WW, HID = 2, 3, 2, 2, 8  # 2 x 2 patches of 32 px: S = 64
S, D, VOCAB = 64, 16, 16


def info(ref: str, name: str, grid: str, clip_shape: tuple[int, ...], loss: str = "l1", frames: int = 1,
         **params) -> TargetInfo:
    return TargetInfo(ref=ref, name=name, variant="x", target_id=f"{name}-x", grid=grid, loss=loss,
                      clip_shape=clip_shape, frames_needed=frames, params=params)


PIXEL = info("pixel", "pixel", "dense", (T, 3, S, S))
DEPTH = info("depth", "depth", "dense", (T, S, S))  # stored without a channel axis
HOG = info("hog", "hog", "dense", (T, S, S))
FLOW = info("flow", "flow", "dense", (T - 1, 2, S, S), frames=2)
SIF = info("sif", "sif", "patch", (T, HH * WW, D))
TVF = info("tvf", "tvf", "patch", (T, HH * WW, D))
MASKFEAT = info("hog:maskfeat", "hog", "patch", (T, HH * WW, D))
VQ = info("vq", "vq", "token", (T, S // 8, S // 8), loss="ce", vocab_size=VOCAB)
VQ1 = info("vq:v1", "vq", "patch", (T, HH, WW), loss="ce", vocab_size=VOCAB)
ALL = [PIXEL, DEPTH, FLOW, SIF, MASKFEAT, VQ, VQ1]


def features(seed: int = 0, grad: bool = False) -> torch.Tensor:
    x = torch.randn(B, T, HH, WW, HID, generator=torch.Generator().manual_seed(seed))
    return x.requires_grad_(grad)


def some_mask() -> torch.Tensor:
    mask = torch.zeros(B, T, HH, WW, dtype=torch.bool)
    mask[0, 0, 0, 0] = mask[0, 2, 1, 1] = mask[1, 1, 0, 1] = True
    return mask


def random_target(target_info: TargetInfo, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    shape = (B, *target_info.clip_shape)
    if target_info.loss == "ce":
        return torch.randint(0, VOCAB, shape, generator=g)
    return torch.randn(shape, generator=g)


def head_output(target_info: TargetInfo, seed: int = 2) -> torch.Tensor:
    with torch.no_grad():
        return build_head(target_info, HID).eval()(features(seed))


# ---- heads -------------------------------------------------------------------------------------

def test_head_output_shapes():
    x = features()
    assert DenseHead(HID, 3)(x).shape == (B, T, 3, S, S)
    assert DenseHead(HID, 2, pair=True)(x).shape == (B, T - 1, 2, S, S)
    assert FeatureHead(HID, D)(x).shape == (B, T, HH * WW, D)
    assert TokenHead(HID, VOCAB)(x).shape == (B, T, 4 * HH, 4 * WW, VOCAB)
    assert isinstance(build_head(FLOW, HID), DenseHead) and build_head(FLOW, HID).proj.in_features == 2 * HID
    assert isinstance(build_head(DEPTH, HID), DenseHead) and build_head(DEPTH, HID).channels == 1
    assert isinstance(build_head(SIF, HID), FeatureHead) and isinstance(build_head(VQ, HID), TokenHead)
    assert build_head(VQ1, HID)(x).shape == (B, T, HH * WW, VOCAB)  # v1 VQ: logits per patch


def test_token_head_has_96_channels_per_cell_at_hidden_768():
    head = TokenHead(768, 10)
    assert head.proj.out_features == 1536
    assert head.mlp[1].in_features == 96 and head.mlp[1].out_features == 192 and head.mlp[3].out_features == 10
    with pytest.raises(ValueError, match="divisible"):
        TokenHead(6, 10)


def test_dense_head_equals_conv1x1_pixel_shuffle():
    head = DenseHead(HID, 3)
    conv = torch.nn.Conv2d(HID, 3 * 32 * 32, 1)
    conv.weight.data = head.proj.weight.data[:, :, None, None].clone()
    conv.bias.data = head.proj.bias.data.clone()
    x = features()
    ref = F.pixel_shuffle(conv(x.permute(0, 1, 4, 2, 3).flatten(0, 1)), 32).view(B, T, 3, S, S)
    torch.testing.assert_close(head(x), ref)


def input_gradient(head: torch.nn.Module, select) -> torch.Tensor:
    """|d sum(select(head(x))) / dx| summed over the hidden axis -> (B, T, h, w)."""
    x = features(grad=True)
    select(head.eval()(x)).sum().backward()
    return x.grad.abs().sum(dim=-1)


@pytest.mark.parametrize("kind", ["dense", "pair", "feature", "token"])
def test_each_output_cell_depends_only_on_its_own_token(kind):
    """Block (t, i, j) of the output is predicted by video token (t, i, j) (and t+1 for pairs)."""
    t, i, j = 1, 1, 0
    if kind == "dense":
        grad = input_gradient(DenseHead(HID, 3), lambda y: y[:, t, :, 32 * i:32 * (i + 1), 32 * j:32 * (j + 1)])
    elif kind == "pair":
        grad = input_gradient(DenseHead(HID, 2, pair=True),
                              lambda y: y[:, t, :, 32 * i:32 * (i + 1), 32 * j:32 * (j + 1)])
    elif kind == "feature":
        grad = input_gradient(FeatureHead(HID, D), lambda y: y[:, t, i * WW + j])
    else:
        grad = input_gradient(TokenHead(HID, VOCAB), lambda y: y[:, t, 4 * i:4 * (i + 1), 4 * j:4 * (j + 1)])
    expected = torch.zeros(B, T, HH, WW, dtype=torch.bool)
    expected[:, t, i, j] = True
    if kind == "pair":
        expected[:, t + 1, i, j] = True
    assert torch.equal(grad > 0, expected)


def test_pair_head_concatenates_frame_t_before_frame_t_plus_1():
    head = DenseHead(HID, 2, pair=True)
    torch.nn.init.zeros_(head.proj.bias)
    with torch.no_grad():
        head.proj.weight[:, HID:] = 0  # only the first half (frame t) remains
    x = features()
    out = head(x)
    x2 = x.clone()
    x2[:, -1] = 0  # the last frame only ever appears as frame t+1
    torch.testing.assert_close(head(x2), out)


# ---- masked-only supervision -------------------------------------------------------------------

@pytest.mark.parametrize("target_info", ALL, ids=lambda i: i.ref)
def test_loss_gradient_is_zero_at_unmasked_predictions(target_info):
    mask = some_mask()
    pred = head_output(target_info).requires_grad_(True)
    target_loss(target_info, pred, random_target(target_info), mask).backward()
    grad = pred.grad.abs()
    if target_info.grid == "dense":
        coarse = mask[:, :-1] | mask[:, 1:] if target_info.is_pair else mask
        supervised = coarse.repeat_interleave(32, 2).repeat_interleave(32, 3)
        per_pos = grad.sum(dim=2)
    elif target_info.grid == "patch":
        supervised, per_pos = mask.flatten(2), grad.sum(dim=-1)
    else:
        supervised, per_pos = mask.repeat_interleave(4, 2).repeat_interleave(4, 3), grad.sum(dim=-1)
    assert bool((per_pos[~supervised] == 0).all())
    assert bool((per_pos[supervised] > 0).all())


def test_features_get_gradient_only_at_masked_tokens():
    objective = MvmObjective([PIXEL, SIF, VQ], HID).eval()
    x = features(grad=True)
    targets = {i.key: random_target(i) for i in (PIXEL, SIF, VQ)}
    sum(objective(x, targets, some_mask()).values()).backward()
    assert torch.equal(x.grad.abs().sum(dim=-1) > 0, some_mask())


def test_unmasked_prediction_changes_do_not_change_loss():
    mask = some_mask()
    pred, target = head_output(SIF), random_target(SIF)
    changed = pred.clone()
    changed[~mask.flatten(2)] += 100.0
    assert torch.equal(target_loss(SIF, pred, target, mask), target_loss(SIF, changed, target, mask))


# ---- loss values against hand computations -----------------------------------------------------

def single_patch_mask() -> torch.Tensor:
    mask = torch.zeros(B, T, HH, WW, dtype=torch.bool)
    mask[0, 0, 0, 0] = True
    return mask


def test_pixel_loss_mean_and_paper():
    pred = torch.zeros(B, T, 3, S, S)
    target = torch.full((B, T, 3, S, S), 100.0)  # unmasked pixels: large, must not count
    target[0, 0, :, :32, :32] = torch.tensor([1.0, 2.0, 3.0])[:, None, None]
    mask = single_patch_mask()
    assert float(target_loss(PIXEL, pred, target, mask)) == pytest.approx(2.0)  # (1 + 2 + 3) / 3
    assert float(target_loss(PIXEL, pred, target, mask, "paper")) == pytest.approx(2.0 / 3)
    l2 = info("pixel", "pixel", "dense", (T, 3, S, S), loss="l2")
    assert float(target_loss(l2, pred, target, mask)) == pytest.approx(14.0 / 3)  # (1 + 4 + 9) / 3
    assert float(target_loss(l2, pred, target, mask, "paper")) == pytest.approx(14.0 / 9)


def test_single_channel_dense_losses_depth_and_hog():
    pred = torch.zeros(B, T, 1, S, S)
    target = torch.full((B, T, S, S), 50.0)  # stored layout without the channel axis
    target[0, 0, :32, :32] = 3.0
    target[0, 0, :16, :32] = 6.0  # half the patch at 6, half at 3: mean 4.5
    mask = single_patch_mask()
    assert float(target_loss(DEPTH, pred, target, mask)) == pytest.approx(4.5)
    assert float(target_loss(DEPTH, pred, target, mask, "paper")) == pytest.approx(1.5)  # depth: / 3
    assert float(target_loss(HOG, pred, target, mask, "paper")) == pytest.approx(4.5)  # hog: factor 1
    unknown = info("foo", "foo", "dense", (T, S, S))
    assert float(target_loss(unknown, pred, target, mask, "paper")) == pytest.approx(4.5)
    assert float(target_loss(DEPTH, pred, target[:, :, None], mask)) == pytest.approx(4.5)  # with channel axis


def patch_pair() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Two masked patches with |error| 1 and 2 in every one of the D dims; everything else 100."""
    pred = torch.zeros(B, T, HH * WW, D)
    target = torch.full((B, T, HH * WW, D), 100.0)
    mask = torch.zeros(B, T, HH, WW, dtype=torch.bool)
    mask[0, 1, 0, 1] = mask[1, 2, 1, 0] = True
    target[0, 1, 1] = 1.0  # patch (0, 1) -> row 0 * 2 + 1
    target[1, 2, 2] = -2.0  # patch (1, 0) -> row 2
    return pred, target, mask


@pytest.mark.parametrize("target_info", [SIF, TVF, MASKFEAT, info("mmf", "mmf", "patch", (T, 4, D))],
                         ids=lambda i: i.ref)
def test_feature_loss_mean_and_paper(target_info):
    pred, target, mask = patch_pair()
    assert float(target_loss(target_info, pred, target, mask)) == pytest.approx(1.5)  # (16 + 32) / 32
    # paper: sum over D per masked patch (16 and 32), averaged over the 2 patches, / 3
    assert float(target_loss(target_info, pred, target, mask, "paper")) == pytest.approx(24.0 / 3)


def test_unknown_patch_target_paper_is_plain_mean():
    pred, target, mask = patch_pair()
    other = info("foo", "foo", "patch", (T, 4, D))
    assert float(target_loss(other, pred, target, mask, "paper")) == pytest.approx(1.5)


def test_vq_token_cross_entropy_on_masked_tokens():
    logits = torch.zeros(B, T, 4 * HH, 4 * WW, 4)
    logits[..., 1] = math.log(3.0)  # p = [1, 3, 1, 1] / 6
    target = torch.full((B, T, 4 * HH, 4 * WW), 2)  # unmasked tokens: -log(1/6)
    mask = torch.zeros(B, T, HH, WW, dtype=torch.bool)
    mask[0, 0, 0, 0] = mask[1, 2, 1, 1] = True
    target[0, 0, :4, :4] = 1  # -log(1/2) on the 16 tokens of the first masked patch
    target[1, 2, 4:, 4:] = 0  # -log(1/6) on the second
    vq4 = info("vq", "vq", "token", (T, 8, 8), loss="ce", vocab_size=4)
    expected = (math.log(2.0) + math.log(6.0)) / 2
    assert float(target_loss(vq4, logits, target, mask)) == pytest.approx(expected)
    assert float(target_loss(vq4, logits, target, mask, "paper")) == pytest.approx(expected)


def test_vq_v1_patch_cross_entropy_accepts_grid_layout():
    logits = torch.zeros(B, T, HH * WW, VOCAB)
    logits[..., 3] = 5.0
    target = torch.full((B, T, HH, WW), 3)
    mask = single_patch_mask()
    target[0, 0, 0, 0] = 0
    expected = -math.log(1.0 / (math.exp(5.0) + VOCAB - 1))
    assert float(target_loss(VQ1, logits, target, mask)) == pytest.approx(expected, rel=1e-5)


def flow_case() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    pred = torch.zeros(B, T - 1, 2, S, S)
    target = torch.full((B, T - 1, 2, S, S), 100.0)
    mask = torch.zeros(B, T, HH, WW, dtype=torch.bool)
    mask[0, 0, 0, 0] = True  # pair 0 (frames 0, 1) at patch (0, 0), from frame 0 only
    mask[0, 2, 1, 1] = True  # pair 1 (frames 1, 2) at patch (1, 1), from frame 2 only
    target[0, 0, :, :32, :32] = 1.0
    target[0, 1, :, 32:, 32:] = 3.0
    return pred, target, mask


def test_flow_union_mask_and_paper_factor():
    pred, target, mask = flow_case()
    assert float(target_loss(FLOW, pred, target, mask)) == pytest.approx(2.0)  # (1 + 3) / 2, equal areas
    assert float(target_loss(FLOW, pred, target, mask, "paper")) == pytest.approx(1.0)


def flow_drop_case() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
    """flow_case's masks with a target whose pair maxima are, by hand: batch 0 pair 0 -> 10,
    batch 0 pair 1 -> 50 (at an unmasked pixel), batch 1 -> 0."""
    pred, _, mask = flow_case()
    target = torch.zeros(B, T - 1, 2, S, S)
    target[0, 0, :, :32, :32] = 1.0
    target[0, 0, 0, 40, 40] = -10.0  # unmasked pixel: sets the pair maximum, adds no loss
    target[0, 1, :, 32:, 32:] = 3.0
    target[0, 1, 1, 0, 0] = 50.0
    stored = {"flow/max_magnitude": torch.tensor([[10.0, 50.0], [0.0, 0.0]])}  # the cache's Euclidean maxima
    return pred, target, mask, stored


def test_flow_drops_pairs_at_or_above_max_magnitude():
    pred, target, mask, extras = flow_drop_case()
    objective = MvmObjective([FLOW], HID)
    keep = objective.kept_pairs(FLOW, target, extras)
    assert torch.equal(keep, torch.tensor([[True, False], [True, True]]))
    assert float(target_loss(FLOW, pred, target, mask, keep_pairs=keep)) == pytest.approx(1.0)  # pair 1 gone
    assert float(target_loss(FLOW, pred, target, mask)) == pytest.approx(2.0)  # (1 + 3) / 2 with it
    x = features()
    # end to end: with the head's own predictions, dropping pair 1 must change the loss
    with_drop = objective.eval()(x, {"flow": target}, mask, extras)["mvm_flow"]
    without = MvmObjective([FLOW], HID, flow_max_magnitude=None)
    without.load_state_dict(objective.state_dict())
    no_drop = without.eval()(x, {"flow": target}, mask, extras)["mvm_flow"]
    no_extra = objective(x, {"flow": target}, mask)["mvm_flow"]  # no extra: not a target the rule applies to
    pred_full = objective.predict(x)["flow"]
    torch.testing.assert_close(with_drop, target_loss(FLOW, pred_full, target, mask, keep_pairs=keep))
    torch.testing.assert_close(no_drop, target_loss(FLOW, pred_full, target, mask))
    torch.testing.assert_close(no_extra, no_drop)
    assert abs(with_drop.item() - no_drop.item()) > 0.5  # about 2 vs 1: the pair with |error| 3 is gone


def test_flow_pair_rule_is_the_largest_component_not_the_euclidean_magnitude():
    """The official rule drops a pair when max(|u|, |v|) >= 50 anywhere in it; |(u, v)| is not used."""
    from mvm_targets.targets.flow import max_magnitude

    target = torch.zeros(1, 4, 2, S, S)
    target[0, 0, :, 5, 7] = 40.0  # u = v = 40: Euclidean 56.6 > 50, largest component 40 -> kept
    target[0, 1, 0, 9, 9], target[0, 1, 1, 9, 9] = 30.0, -45.0  # Euclidean 54.1, largest 45 -> kept
    target[0, 2, 1, 0, 0] = -50.0  # a single component at 50 -> dropped (the official keeps < 50)
    target[0, 3, 0, 3, 3], target[0, 3, 1, 60, 60] = 49.0, 49.9  # largest 49.9 (at different pixels) -> kept
    stored = torch.from_numpy(max_magnitude(target.numpy()))  # what a cache holds: the Euclidean maxima
    assert stored[0].tolist() == pytest.approx([40 * 2 ** 0.5, (30 ** 2 + 45 ** 2) ** 0.5, 50.0, 49.9])
    keep = MvmObjective([FLOW], HID).kept_pairs(FLOW, target, {"flow/max_magnitude": stored})
    assert keep.tolist() == [[True, True, False, True]]
    assert (stored < 50.0).tolist() == [[False, False, False, True]]  # the Euclidean rule would drop two more
    # the rule reads the batch's (possibly flipped) target: negating u changes nothing
    flipped = target.clone()
    flipped[:, :, 0] *= -1
    assert torch.equal(MvmObjective([FLOW], HID).kept_pairs(FLOW, flipped, {"flow/max_magnitude": stored}), keep)


@pytest.mark.parametrize("normalization", ["mean", "paper"])
@pytest.mark.parametrize("target_info", ALL, ids=lambda i: i.ref)
def test_nothing_masked_gives_exact_zero_with_graph(target_info, normalization):
    pred = head_output(target_info).requires_grad_(True)
    loss = target_loss(target_info, pred, random_target(target_info), torch.zeros(B, T, HH, WW, dtype=torch.bool),
                       normalization)
    assert loss.item() == 0.0 and loss.requires_grad
    loss.backward()
    assert pred.grad is not None and bool((pred.grad == 0).all())


def test_all_pairs_dropped_gives_exact_zero():
    pred, target, mask = flow_case()
    keep = torch.zeros(B, T - 1, dtype=torch.bool)
    assert target_loss(FLOW, pred.requires_grad_(True), target, mask, keep_pairs=keep).item() == 0.0
    with pytest.raises(ValueError, match=r"pair keep mask must be \(2, 2\), got \(2, 1\)"):
        target_loss(FLOW, pred, target, mask, keep_pairs=keep[:, :1])


# ---- the objective -----------------------------------------------------------------------------

def test_sif_and_tvf_get_separate_heads_and_losses():
    objective = MvmObjective([SIF, TVF], HID).eval()
    assert set(objective.heads) == {"sif", "tvf"}
    sif_params = {p.data_ptr() for p in objective.heads["sif"].parameters()}
    tvf_params = {p.data_ptr() for p in objective.heads["tvf"].parameters()}
    assert sif_params and tvf_params and not sif_params & tvf_params
    x = features()
    preds = objective.predict(x)
    assert not torch.allclose(preds["sif"], preds["tvf"])
    targets = {"sif": random_target(SIF, 3), "tvf": random_target(TVF, 4)}
    losses = objective(x, targets, some_mask())
    assert set(losses) == {"mvm_sif", "mvm_tvf"}
    assert losses["mvm_sif"].item() != losses["mvm_tvf"].item()
    losses["mvm_sif"].backward()
    assert all(p.grad is not None for p in objective.heads["sif"].parameters())
    assert all(p.grad is None for p in objective.heads["tvf"].parameters())


def test_objective_keys_follow_refs_and_sum_all_targets():
    objective = MvmObjective(ALL, HID).eval()
    targets = {i.key: random_target(i) for i in ALL}
    losses = objective(features(), targets, some_mask(), {"flow/max_magnitude": torch.zeros(B, T - 1)})
    assert set(losses) == {"mvm_pixel", "mvm_depth", "mvm_flow", "mvm_sif", "mvm_hog_maskfeat", "mvm_vq",
                           "mvm_vq_v1"}
    assert all(v.dim() == 0 and torch.isfinite(v) and v.item() > 0 for v in losses.values())
    preds = objective.predict(features())
    for target_info in ALL:
        torch.testing.assert_close(losses[f"mvm_{target_info.key}"],
                                   target_loss(target_info, preds[target_info.key], targets[target_info.key],
                                               some_mask()))


def test_shape_mismatch_names_target_and_shapes():
    objective = MvmObjective([SIF], HID)
    bad = torch.zeros(B, T, HH * WW, D - 1)
    with pytest.raises(ValueError, match=r"target 'sif' has shape \(2, 3, 4, 15\) but its head predicts "
                                         r"\(2, 3, 4, 16\)"):
        objective(features(), {"sif": bad}, some_mask())
    with pytest.raises(ValueError, match="target 'pixel' has shape"):
        MvmObjective([PIXEL], HID)(features(), {"pixel": torch.zeros(B, T, 3, 32, 32)}, some_mask())
    with pytest.raises(ValueError, match="'sif' .key 'sif'. is missing"):
        objective(features(), {"tvf": bad}, some_mask())
    with pytest.raises(ValueError, match="does not match features"):
        objective(features(), {"sif": bad}, torch.zeros(B, T, 3, 3, dtype=torch.bool))


def test_objective_validates_normalization_and_keys():
    with pytest.raises(ValueError, match="unknown MVM loss normalization 'median'"):
        MvmObjective([SIF], HID, normalization="median")
    with pytest.raises(ValueError, match="repeat a key"):
        MvmObjective([SIF, SIF], HID)
    with pytest.raises(ValueError, match="frames_needed=3"):
        MvmObjective([info("x", "x", "dense", (1, 2, S, S), frames=3)], HID)


# ---- VTM, MLM, retrieval -----------------------------------------------------------------------

def test_vtm_head_scores_shape():
    head = VtmHead(HID)
    assert head(torch.randn(B, 4, HID)).shape == (B, 4, 1)
    assert head(torch.randn(1, HID)).shape == (1, 1)
    assert [m.__class__.__name__ for m in head.mlp] == ["Dropout", "Linear", "ReLU", "Linear"]
    assert head.mlp[1].out_features == 2 * HID and head.mlp[3].out_features == 1


def test_mlm_loss_by_hand():
    logits = torch.zeros(2, 3, 4)
    logits[0, 1, 2] = math.log(5.0)  # p(2) = 5 / 8
    labels = torch.tensor([[-100, 2, -100], [0, -100, -100]])
    expected = (-math.log(5 / 8) + math.log(4.0)) / 2
    assert float(mlm_loss(logits, labels)) == pytest.approx(expected)
    nothing = mlm_loss(logits.requires_grad_(True), torch.full((2, 3), -100))
    assert nothing.item() == 0.0 and nothing.requires_grad


def test_vtm_loss_by_hand():
    scores = torch.tensor([[0.1, 0.0, 0.0, 0.0], [0.0, 0.05, 0.0, 0.0]])
    # / 0.05: row 0 = [2, 0, 0, 0], row 1 = [0, 1, 0, 0]; positive at index 0
    row0 = -2 + math.log(math.exp(2) + 3)
    row1 = math.log(math.exp(1) + 3)
    assert float(vtm_loss(scores)) == pytest.approx((row0 + row1) / 2, rel=1e-5)


def test_symmetric_contrastive_loss_by_hand():
    scores = torch.tensor([[0.1, 0.0], [0.05, 0.0]])  # / 0.05 -> [[2, 0], [1, 0]]
    rows = (-2 + math.log(math.exp(2) + 1) + math.log(math.exp(1) + 1)) / 2
    cols = (-2 + math.log(math.exp(2) + math.exp(1)) + math.log(2.0)) / 2
    assert float(symmetric_contrastive_loss(scores)) == pytest.approx((rows + cols) / 2, rel=1e-5)
    with pytest.raises(ValueError, match="square"):
        symmetric_contrastive_loss(torch.zeros(2, 3))
