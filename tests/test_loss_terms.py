"""Declared loss terms and the cosine loss (docs/method.md §2): a patch target whose feature axis is split
into slices (`loss_terms`, e.g. one per teacher layer) gets one loss per slice, each counted once in the
training loss and logged as `mvm_<key>/<i>` next to the target's total `mvm_<key>`.

Expected values come from numpy in float64, written out here from the definitions.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from mvm_targets.store import schema
from mvm_targets.store.layout import ClipCache
from mvm_targets.store.ledger import Ledger, LedgerEntry
from mvm_targets.store.reader import CacheReader
from mvm_targets.store.shard_set import ClipRecord
from mvm_targets.targets.spec import Grid, StoredSpec, TargetSpec
from violet_core.heads import build_head
from violet_core.losses import target_loss, target_terms, total_loss
from violet_core.mvm import MvmObjective
from violet_core.target_info import TargetInfo, read_target_infos

pytestmark = pytest.mark.usefixtures("one_torch_thread")

B, T, N = 2, 2, 4  # 2 clips of 2 frames on a 2 x 2 patch grid (S = 64)
WIDTHS = (2, 3)  # two terms over a 5-wide feature axis
D = sum(WIDTHS)
FACTOR = 0.5  # a declared paper scaling ("sum", 0.5) to check that each term is scaled like a whole target


def info(loss: str, loss_terms: tuple[int, ...] | None = WIDTHS, paper: dict | None = None) -> TargetInfo:
    return TargetInfo(ref="layers:x", name="layers", variant="x", target_id="layers-x-00000000", grid="patch",
                      loss=loss, clip_shape=(T, N, D), loss_terms=None if loss_terms is None else list(loss_terms),
                      paper_scaling=paper)


def case() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """prediction and target (B, T, N, D) float64, mask (B, T, 2, 2) bool with 3 masked patches."""
    rng = np.random.default_rng(3)
    prediction, target = rng.standard_normal((2, B, T, N, D))
    mask = np.zeros((B, T, 2, 2), bool)
    mask[0, 0, 0, 1] = mask[0, 1, 1, 1] = mask[1, 0, 0, 0] = True
    return prediction, target, mask


def oracle(prediction: np.ndarray, target: np.ndarray, mask: np.ndarray, loss: str, reduction: str) -> list[float]:
    """Per slice: the masked L1/L2 mean over positions x widths ("mean") or the per-position sum over the
    slice averaged over positions ("sum"); cosine: the mean of 1 - cos over masked positions either way."""
    where = mask.reshape(B, T, N)
    starts = np.cumsum((0,) + WIDTHS)
    out = []
    for start, stop in zip(starts[:-1], starts[1:]):
        p, t = prediction[..., start:stop][where], target[..., start:stop][where]  # (masked, width)
        if loss == "cosine":
            cos = (p * t).sum(-1) / (np.sqrt((p * p).sum(-1)) * np.sqrt((t * t).sum(-1)))
            out.append(float(np.mean(1 - cos)))
            continue
        err = np.abs(p - t) if loss == "l1" else (p - t) ** 2
        out.append(float(err.mean() if reduction == "mean" else err.sum(-1).mean()))
    return out


def tensors(*arrays: np.ndarray) -> list[torch.Tensor]:
    return [torch.from_numpy(a.astype(np.float32)) if a.dtype != bool else torch.from_numpy(a) for a in arrays]


@pytest.mark.parametrize("loss", ["l2", "l1", "cosine"])
def test_each_slice_is_its_own_term_equal_to_the_oracle(loss):
    prediction, target, mask = case()
    p, t, m = tensors(prediction, target, mask)
    terms = target_terms(info(loss), p, t, m)
    assert len(terms) == len(WIDTHS)
    want = oracle(prediction, target, mask, loss, "mean")
    np.testing.assert_allclose([float(x) for x in terms], want, rtol=1e-5)
    assert float(target_loss(info(loss), p, t, m)) == pytest.approx(sum(want), rel=1e-5)

    paper = info(loss, paper={"reduction": "sum", "factor": FACTOR, "note": "test"})
    scaled = [FACTOR * x for x in oracle(prediction, target, mask, loss, "sum")]
    np.testing.assert_allclose([float(x) for x in target_terms(paper, p, t, m, "paper")], scaled, rtol=1e-5)


def test_without_terms_the_vector_is_one_term_and_cosine_spans_it():
    prediction, target, mask = case()
    p, t, m = tensors(prediction, target, mask)
    where = mask.reshape(B, T, N)
    whole = ((prediction - target) ** 2)[where].mean()
    assert [float(x) for x in target_terms(info("l2", None), p, t, m)] == pytest.approx([whole], rel=1e-5)
    a, b = prediction[where], target[where]
    cos = (a * b).sum(-1) / np.linalg.norm(a, axis=-1) / np.linalg.norm(b, axis=-1)
    assert float(target_loss(info("cosine", None), p, t, m)) == pytest.approx(np.mean(1 - cos), rel=1e-5)
    assert float(target_loss(info("cosine", None), p, t, torch.zeros_like(m))) == 0.0  # nothing masked


def test_cosine_terms_stay_fp32_under_bf16_autocast():
    prediction, target, mask = case()
    p, t, m = tensors(prediction, target, mask)
    plain = target_terms(info("cosine"), p, t, m)
    with torch.autocast(device_type="cpu", dtype=torch.bfloat16):
        under = target_terms(info("cosine"), p, t.half(), m)  # a float16 cache is widened, never narrowed
    assert all(x.dtype == torch.float32 for x in under)
    np.testing.assert_allclose([float(x) for x in under], [float(x) for x in plain], rtol=1e-3)


def test_the_terms_are_summed_into_the_total_once():
    torch.manual_seed(0)
    target_info = info("l2")
    objective = MvmObjective([target_info], hidden=8)
    prediction, target, mask = case()
    _, t, m = tensors(prediction, target, mask)
    p = torch.from_numpy(prediction.astype(np.float32)).requires_grad_(True)
    losses = objective.losses({target_info.key: p}, {target_info.key: t}, m)
    assert set(losses) == {"mvm_layers_x", "mvm_layers_x/0", "mvm_layers_x/1"}
    want = oracle(prediction, target, mask, "l2", "mean")
    assert [float(losses[f"mvm_layers_x/{i}"]) for i in range(2)] == pytest.approx(want, rel=1e-5)
    assert float(losses["mvm_layers_x"].detach()) == pytest.approx(sum(want), rel=1e-5)
    assert not losses["mvm_layers_x/0"].requires_grad and losses["mvm_layers_x"].requires_grad

    mlm = torch.tensor(2.0)
    total = total_loss({"mlm": mlm, **losses})
    assert float(total.detach()) == pytest.approx(2.0 + sum(want), rel=1e-6)
    total.backward()
    # d/dp of sum_i mean_i (p - t)^2 is 2 (p - t) / (masked positions x width_i) at masked entries
    where = mask.reshape(B, T, N)[..., None]
    counts = np.concatenate([np.full(w, where.sum() * w) for w in WIDTHS])
    grad = np.where(where, 2 * (prediction - target) / counts, 0.0)
    np.testing.assert_allclose(p.grad.numpy(), grad, rtol=1e-5, atol=1e-7)


def test_spec_validation_and_the_id_is_unchanged():
    def spec(**changes) -> TargetSpec:
        fields = dict(name="layers", variant="x", version=1, grid=Grid.PATCH, dtype="float16", loss="cosine",
                      clip_shape=lambda t, s: (t, (s // 32) ** 2, D), loss_terms=WIDTHS)
        return TargetSpec(**{**fields, **changes})

    assert spec().target_id == spec(loss_terms=None, loss="l2").target_id  # a declaration, not a value
    assert spec(loss_terms=[2, 3]).loss_terms == WIDTHS
    with pytest.raises(ValueError, match="sum to 4, not the feature width 5"):
        spec(loss_terms=(1, 3)).record(T, 64, default_variant=True)
    with pytest.raises(ValueError, match="positive widths"):
        spec(loss_terms=(5, 0))
    with pytest.raises(ValueError, match="cosine loss needs a float patch-grid target"):
        spec(grid=Grid.DENSE, loss_terms=None)
    with pytest.raises(ValueError, match="loss_terms need a float patch-grid target"):
        spec(loss="ce", dtype="uint16")
    with pytest.raises(ValueError, match="loss must be one of"):
        spec(loss="huber")
    record = spec().record(T, 64, default_variant=True)
    with pytest.raises(ValueError, match="sum to 6"):
        StoredSpec.from_record({**record, "loss_terms": [3, 3]})
    with pytest.raises(ValueError, match="needs the patch grid"):
        build_head(TargetInfo(ref="d", name="d", variant="x", grid="dense", loss="cosine", clip_shape=(T, 3, 64, 64)),
                   hidden=8)


def write_set(cache: ClipCache, spec: TargetSpec, record: dict) -> None:
    """One clip's frames and one target set whose shards carry `record` as their spec."""
    frames = ClipRecord(key="a", data=np.zeros((T, 64, 64, 3), np.uint8), frame_indices=np.arange(T),
                        timestamps=np.arange(T) / 10, source={"path": "a.mp4"})
    cache.frames.commit([frames], {"target_spec": schema.frames_spec_json(T, 64), "dataset": "toy"}, None)
    data = dataclasses.replace(frames, data=np.ones((T, N, D), np.float16))
    result = cache.target_set(spec.target_id).commit([data], {"target_spec": json.dumps(record), "dataset": "toy"},
                                                     None)
    Ledger(cache.ledger_path).append([LedgerEntry("a", "frames", "done"),
                                      LedgerEntry("a", spec.target_id, "done", shard=result.shard.name)])


@pytest.mark.parametrize("declared", [True, False])
def test_loss_terms_round_trip_through_a_shard(tmp_path, declared):
    spec = TargetSpec(name="layers", variant="x", version=1, grid=Grid.PATCH, dtype="float16", loss="l2",
                      clip_shape=lambda t, s: (t, (s // 32) ** 2, D), params={"layers": [-1, -2]},
                      loss_terms=WIDTHS if declared else None)
    record = spec.record(T, 64, default_variant=True)
    assert ("loss_terms" in record) == declared  # an undeclared spec keeps the record it always had
    cache = ClipCache(tmp_path / "cache" / "toy" / "frames-t2-s64-test")
    write_set(cache, spec, record)
    stored = cache.stored_spec(cache.target_set(spec.target_id), declarations=False)
    assert stored.loss_terms == (WIDTHS if declared else None) and stored == spec.stored_spec(T, 64)
    reader = CacheReader(tmp_path / "cache", "toy", ["layers:x"])
    (read,) = read_target_infos(reader, ["layers:x"])
    assert read.loss_terms == (WIDTHS if declared else None)
    p, t, m = tensors(*case())
    losses = MvmObjective([read], hidden=8).losses({read.key: p}, {read.key: t}, m)
    assert sorted(losses) == (["mvm_layers_x", "mvm_layers_x/0", "mvm_layers_x/1"] if declared else ["mvm_layers_x"])


def test_a_layered_feature_target_trains_with_one_logged_term_per_layer(tmp_path):
    """Two training steps on a 2-layer feature target of a tiny random ViT, with the cosine loss."""
    from mvm_targets.extract import ExtractConfig, extract
    from mvm_targets.synth import build_synthetic_dataset
    from mvm_targets.targets import build_target
    from mvm_targets.video.decode import SamplingConfig
    from mvm_targets.video.inputs import discover_inputs
    from violet_core import train as train_module
    import yaml

    build_synthetic_dataset(tmp_path / "data", clips=8, seed=3, num_frames=4, size=64, fps=4)
    target = build_target("feat:timm", model="test_vit.r160_in1k", weights="random", input_size=64,
                          layers="-1,-2", loss="cosine", precision="fp32")
    extract(discover_inputs([tmp_path / "data" / "captions.csv"]), [target],
            ExtractConfig(cache_root=tmp_path / "cache", dataset="synthetic", batch_size=8,
                          sampling=SamplingConfig(num_frames=4, size=64)))
    config = {
        "name": "layers", "seed": 0, "out_dir": str(tmp_path / "runs"),
        "data": {"cache": str(tmp_path / "cache"), "dataset": "synthetic", "source": str(tmp_path / "data"),
                 "num_frames": 4, "size": 64, "max_text_len": 20, "hflip_prob": 0.0, "vocab_size": 300},
        "model": {"video_backbone": "tiny", "hidden": 32, "layers": 1, "heads": 2, "intermediate": 64},
        "pretrain": {"optim": {"steps": 2, "batch_size": 4, "lr": 1e-3}, "log_every": 1, "checkpoint_every": 0},
        "downstream": {"tasks": [], "optim": {"steps": 1, "batch_size": 4}},
        "mvm": {"targets": ["feat:timm"]},
    }
    path = tmp_path / "layers.yaml"
    path.write_text(yaml.safe_dump(config))
    train_module.train(path)
    lines = [json.loads(line) for line in (tmp_path / "runs" / "layers" / "metrics.jsonl").read_text().splitlines()]
    steps = [line for line in lines if line["phase"] == "pretrain"]
    assert [s["step"] for s in steps] == [1, 2]
    for step in steps:
        assert sorted(n for n in step if n.startswith("mvm_")) == ["mvm_feat_timm", "mvm_feat_timm/0",
                                                                   "mvm_feat_timm/1"]  # one term per layer
        parts = [step["mvm_feat_timm/0"], step["mvm_feat_timm/1"]]
        assert all(0 < part < 2 for part in parts)  # 1 - cos lies in [0, 2]
        assert step["mvm_feat_timm"] == pytest.approx(sum(parts), rel=1e-5)
        assert step["loss"] == pytest.approx(step["mlm"] + step["vtm"] + step["mvm_feat_timm"], rel=1e-5)
    final = json.loads((tmp_path / "runs" / "layers" / "final.json").read_text())
    assert {"pretrain/mvm_feat_timm", "pretrain/mvm_feat_timm/0", "pretrain/mvm_feat_timm/1"} <= set(final["metrics"])
