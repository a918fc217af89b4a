"""Flips and crops are exact or refused: each target's declared behaviour, checked against the target
computed on the flipped or cropped frames (docs/method.md §6).

The training pipeline is driven through `PretrainDataset` on an in-memory cache (`MemoryReader`), so
frames can be hand-built patterns (uint8 noise, vertical bars, diagonal stripes); the expected
targets come from the targets' own `compute` on the transformed frames, from hand-derived
facts about the patterns, or from geometry.
"""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import yaml

from mvm_targets.extract import ExtractConfig, extract
from mvm_targets.synth import build_synthetic_dataset
from mvm_targets.targets import build_target
from mvm_targets.targets.hog import flip_maskfeat
from mvm_targets.targets.patch_grid import PatchClipShape
from mvm_targets.targets.sif import sif_augmentation
from mvm_targets.targets.spec import CropRule, FlipRule, Grid, TargetSpec, augmentation_for
from mvm_targets.video.decode import SamplingConfig
from mvm_targets.video.inputs import discover_inputs
from violet_core import train as train_module
from violet_core.config import ConfigError
from violet_core.data.augment import crop_clip, target_augmentation
from violet_core.data.device_batch import to_device
from violet_core.data.pretrain import PretrainDataset, collate_pretrain
from violet_core.data.tokenizer import build_tokenizer
from violet_core.target_info import read_target_infos

T, S = 2, 64  # cached clips: 2 frames of 64 px, a 2 x 2 patch grid
HOG_REFS = ("hog:paper", "hog:maskfeat")
MEAN, STD = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])


# ---- frames ---------------------------------------------------------------------------------------

def noise(seed: int = 0, size: int = S) -> np.ndarray:
    """(T, size, size, 3) uint8 noise."""
    return np.random.default_rng(seed).integers(0, 256, (T, size, size, 3), dtype=np.uint8)


def vertical_bars(seed: int = 0, size: int = S) -> np.ndarray:
    """(T, size, size, 3): bars 3 px wide, one random colour each, constant down every column.
    Every gradient is horizontal (no row-to-row difference): orientation 0 degrees exactly."""
    rng = np.random.default_rng(seed)
    colours = rng.integers(0, 256, (T, size // 3 + 1, 3), dtype=np.uint8)
    columns = np.repeat(colours, 3, axis=1)[:, :size]  # (T, size, 3)
    return np.ascontiguousarray(np.broadcast_to(columns[:, None], (T, size, size, 3)))


def diagonal_stripes(seed: int = 0, size: int = S) -> np.ndarray:
    """(T, size, size, 3): stripes along the anti-diagonal (value depends on row + column), period 7."""
    rng = np.random.default_rng(seed)
    levels = rng.integers(0, 256, (T, 7, 3), dtype=np.uint8)
    phase = (np.arange(size)[:, None] + np.arange(size)[None, :]) % 7
    return np.ascontiguousarray(levels[:, phase])


PATTERNS = {"noise": noise, "vertical_bars": vertical_bars, "diagonal_stripes": diagonal_stripes}


def mirrored(frames: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(frames[:, :, ::-1])


# ---- an in-memory cache ---------------------------------------------------------------------------

class MemoryReader:
    """What PretrainDataset reads from a CacheReader, for hand-built clips: keys, captions, the
    stamped specs (`attrs`) and clips in the stored layout, each target made by its own `compute`."""

    def __init__(self, clips: dict[str, np.ndarray], targets: dict, strip_declaration: bool = False) -> None:
        self.keys = sorted(clips)
        self.captions = {key: ["a clip of stripes"] for key in self.keys}
        self.target_refs = list(targets)
        num_frames, size = next(iter(clips.values())).shape[:2]
        self._attrs = {"frames": {"sampling": {"num_frames": num_frames, "size": size}}}
        for ref, target in targets.items():
            spec = json.loads(target.spec.to_json(num_frames, size))
            if strip_declaration:  # as written before targets declared their flip/crop behaviour
                spec = {k: v for k, v in spec.items() if k not in ("flip", "crop", "crop_margin_px")}
            self._attrs[ref] = {"target_spec": spec}
        self._clips = {}
        for key, frames in clips.items():
            clip = {"frames": frames, "captions": self.captions[key]}
            for ref, target in targets.items():
                out = target.compute(frames[None])
                clip[ref] = out.pop("data")[0]
                clip.update({f"{ref}/{name}": value[0] for name, value in out.items()})
            self._clips[key] = clip

    def attrs(self, ref: str = "frames") -> dict:
        return self._attrs[ref]

    def __getitem__(self, key: str) -> dict:
        return dict(self._clips[key])


def make_dataset(reader: MemoryReader, refs: list[str], **options) -> PretrainDataset:
    tokenizer = build_tokenizer(None, ["a clip of stripes"], vocab_size=50)
    args = dict(num_frames=T, size=S, hflip_prob=1.0, max_text_len=8, seed=3)
    args.update(options)
    return PretrainDataset(reader, read_target_infos(reader, refs), tokenizer, reader.keys, **args)


@pytest.fixture(scope="module")
def hog_reader() -> MemoryReader:
    clips = {name: make(seed=1) for name, make in PATTERNS.items()}
    return MemoryReader(clips, {ref: build_target(ref) for ref in HOG_REFS})


# ---- declarations ---------------------------------------------------------------------------------

def test_declarations_are_stamped_and_found_for_caches_without_them():
    refs = ("hog:paper", "hog:maskfeat", "flow:dis")
    stamped = {ref: json.loads(build_target(ref).spec.to_json(T, S)) for ref in refs}
    assert {ref: (s["flip"], s["crop"]) for ref, s in stamped.items()} == {
        "hog:paper": ("recompute", "border"), "hog:maskfeat": ("recompute", "border"), "flow:dis": ("exact", "context")}
    for spec in stamped.values():  # an old cache: the module still declares it, by the stored name
        old = {k: v for k, v in spec.items() if k not in ("flip", "crop", "crop_margin_px")}
        assert augmentation_for(old).record() == augmentation_for(spec).record()
    for name in ("sif", "tvf", "mmf", "vq", "depth"):
        assert augmentation_for({"name": name, "variant": "any", "params": {}}).flip is FlipRule.REFUSE
    assert augmentation_for({"name": "pixel", "variant": "rgb"}).crop is CropRule.EXACT
    # a target no module declares is never flipped silently, even if its stored spec claims so
    unknown = augmentation_for({"name": "undeclared", "variant": "x", "flip": "exact", "crop": "exact"})
    assert unknown.flip is FlipRule.REFUSE and unknown.crop is CropRule.EXACT


# ---- HOG: recomputed, never mirrored --------------------------------------------------------------

@pytest.mark.parametrize("pattern", list(PATTERNS))
def test_flipped_hog_is_the_hog_of_the_flipped_frames(hog_reader, pattern):
    frames = hog_reader[pattern]["frames"]
    item = make_dataset(hog_reader, list(HOG_REFS))[hog_reader.keys.index(pattern)]
    assert item["aug"]["flip"] == 1
    for ref in HOG_REFS:
        # float16, what a cache of the flipped clips would hold
        want = build_target(ref).compute(mirrored(frames)[None])["data"][0]
        key = ref.replace(":", "_")  # the batch spells a reference by its file-safe key
        assert np.array_equal(item["targets"][key].numpy().reshape(want.shape), want.astype(np.float32)), ref


@pytest.mark.parametrize("pattern", list(PATTERNS))
def test_flipped_and_cropped_hog_is_the_crop_of_the_hog_of_the_flipped_frames(pattern):
    frames = PATTERNS[pattern](seed=2, size=96)  # 3 x 3 patches, cropped to 1 x 1 and 2 x 2
    reader = MemoryReader({"clip": frames}, {ref: build_target(ref) for ref in HOG_REFS})
    for size in (32, 64):
        ds = make_dataset(reader, list(HOG_REFS), size=size)
        for seed in range(3):
            ds.seed = seed
            item = ds[0]
            top, left, n = item["aug"]["top"], item["aug"]["left"], size // 32
            # the item shows columns [left, left + n) of the clip, mirrored: in the mirrored frame those
            # are patch columns [3 - left - n, 3 - left)
            rows, cols = slice(32 * top, 32 * (top + n)), slice(32 * (3 - left - n), 32 * (3 - left))
            assert np.array_equal(item["video"].numpy(), mirrored(frames)[:, rows, cols])  # uint8 (T, S, S, 3)
            paper = build_target("hog:paper").compute(mirrored(frames)[None])["data"][0][:, rows, cols]
            assert np.array_equal(item["targets"]["hog_paper"][:, 0].numpy(), paper.astype(np.float32))
            maskfeat = build_target("hog:maskfeat").compute(mirrored(frames)[None])["data"][0].reshape(T, 3, 3, -1)
            maskfeat = maskfeat[:, top:top + n, 3 - left - n:3 - left].reshape(T, n * n, -1)
            assert np.array_equal(item["targets"]["hog_maskfeat"].numpy(), maskfeat.astype(np.float32))


def test_naive_mirror_of_hog_is_wrong_for_vertical_bars(hog_reader):
    """Vertical bars have only 0-degree gradients. skimage's bins are half-open, [0, 20) degrees is
    bin 0, and a flip maps 0 degrees to 180 = 0 (mod 180): bin 0 again. Mirroring the stored
    histograms (bin i -> 8 - i) puts all of that mass in bin 8 instead: every non-zero value wrong."""
    frames = hog_reader["vertical_bars"]["frames"]
    maskfeat = build_target("hog:maskfeat")
    stored = hog_reader["vertical_bars"]["hog:maskfeat"].astype(np.float32)
    truth = maskfeat.compute(mirrored(frames)[None])["data"][0].astype(np.float32)
    bins = lambda x: x.reshape(T, 4, 16, 3, 9)  # (T, patch, cell, channel, bin)
    assert bins(stored)[..., 0].sum() > 0 and not bins(stored)[..., 1:].any()  # the hand-derived fact
    assert bins(truth)[..., 0].sum() > 0 and not bins(truth)[..., 1:].any()  # ... holds after the flip too
    naive = flip_maskfeat(stored, S)
    assert not bins(naive)[..., :8].any() and bins(naive)[..., 8].sum() > 0
    assert np.abs(naive - truth).sum() == pytest.approx(np.abs(naive).sum() + np.abs(truth).sum())  # 100 % wrong
    # the rendering: bin 0's segment, from (1, 4) to (6, 3) in every 8-px cell, is not its own mirror
    # image, so every drawn pixel of the mirrored rendering is where the true one has nothing
    paper = build_target("hog:paper")
    want = paper.compute(mirrored(frames)[None])["data"][0].astype(np.float32)
    naive_image = hog_reader["vertical_bars"]["hog:paper"][..., ::-1].astype(np.float32)
    assert np.abs(naive_image - want).sum() == pytest.approx(np.abs(naive_image).sum() + np.abs(want).sum())


def test_hog_of_an_old_cache_is_still_recomputed():
    frames = vertical_bars(seed=4)
    reader = MemoryReader({"clip": frames}, {"hog:maskfeat": build_target("hog:maskfeat")}, strip_declaration=True)
    assert "flip" not in reader.attrs("hog:maskfeat")["target_spec"]
    item = make_dataset(reader, ["hog:maskfeat"])[0]
    want = build_target("hog:maskfeat").compute(mirrored(frames)[None])["data"][0]
    assert np.array_equal(item["targets"]["hog_maskfeat"].numpy(), want.astype(np.float32))


# ---- pixel and flow: exact transforms -------------------------------------------------------------

def normalise(frames: np.ndarray) -> np.ndarray:
    """(T, S, S, 3) uint8 -> (T, 3, S, S) float32, ImageNet statistics (the dataset's formula)."""
    return ((frames.astype(np.float32) / np.float32(255.0) - MEAN.astype(np.float32)) / STD.astype(np.float32)
            ).transpose(0, 3, 1, 2)


def test_flipped_pixel_target_is_the_pixel_target_of_the_flipped_frames(hog_reader):
    pixel = build_target("pixel")
    frames = noise(seed=5)
    mirror = augmentation_for({"name": "pixel", "variant": "rgb"}).mirror
    data, extras = mirror(pixel.compute(frames[None])["data"][0], {})
    assert np.array_equal(data, pixel.compute(mirrored(frames)[None])["data"][0]) and extras == {}
    item = make_dataset(hog_reader, ["pixel"])[0]
    want = normalise(mirrored(hog_reader[hog_reader.keys[0]]["frames"]))
    ready = to_device(collate_pretrain([item]), torch.device("cpu"))  # normalised where training does it
    np.testing.assert_allclose(ready["targets"]["pixel"][0].numpy(), want, atol=1e-6)


def test_flow_flip_transform_is_the_motion_of_the_mirrored_pair():
    """Hand-built flow: pixel (x, y) moves to (x + u, y + v). In the mirrored pair the same point
    starts at (S-1-x, y) and ends at (S-1-x-u, y+v); its flow there is the end minus the start."""
    rng = np.random.default_rng(6)
    flow = rng.normal(0, 3, (T - 1, 2, 16, 16)).astype(np.float16)
    want = np.empty_like(flow)
    ys, xs = np.mgrid[0:16, 0:16]
    for p in range(T - 1):
        u, v = flow[p, 0], flow[p, 1]
        start_x, end_x, end_y = 15 - xs, 15 - (xs + u), ys + v
        want[p, 0, ys, start_x] = end_x - start_x
        want[p, 1, ys, start_x] = end_y - ys
    magnitude = {"max_magnitude": np.array([7.5], np.float32)}
    data, extras = augmentation_for({"name": "flow", "variant": "dis"}).mirror(flow, magnitude)
    assert np.array_equal(data, want) and extras == magnitude  # |flow| does not change under a mirror


def translating_texture(dx: int, dy: int, size: int = S) -> np.ndarray:
    """(2, size, size, 3): a smooth random texture, then the same texture moved by (dx, dy) px."""
    rng = np.random.default_rng(7)
    texture = cv2.resize(rng.random((size // 4 + 8, size // 4 + 8, 3)), (size + 32, size + 32),
                         interpolation=cv2.INTER_CUBIC)
    texture = np.clip(texture * 255, 0, 255).astype(np.uint8)
    return np.stack([texture[16:16 + size, 16:16 + size], texture[16 - dy:16 - dy + size, 16 - dx:16 - dx + size]])


def test_flipped_dis_flow_matches_dis_on_the_flipped_frames():
    """DIS is not exactly flip-equivariant, so the mirrored flow is compared with DIS run on the
    mirrored pair within a tolerance. On a smooth texture moved by (3, 1) px, DIS recovers the true
    motion to < 0.01 px mean end-point error (checked here) both ways round, so the two estimates can
    differ by at most ~0.02 px; a mirror without the sign change of u is off by 2|u| = 6 px. An 8-px
    margin is left out: texture entering the frame there has no defined motion."""
    frames = translating_texture(3, 1)
    reader = MemoryReader({"clip": frames}, {"flow:dis": build_target("flow:dis")})
    item = make_dataset(reader, ["flow:dis"])[0]
    recomputed = build_target("flow:dis").compute(mirrored(frames)[None])["data"][0].astype(np.float32)
    inner = (Ellipsis, slice(8, -8), slice(8, -8))
    epe = lambda a, b: float(np.sqrt(((a - b) ** 2).sum(-3))[inner].mean())
    truth = np.broadcast_to(np.array([3.0, 1.0], np.float32)[None, :, None, None], recomputed.shape)
    assert epe(reader["clip"]["flow:dis"].astype(np.float32), truth) < 0.01
    assert epe(recomputed, truth * np.array([-1, 1], np.float32)[:, None, None]) < 0.01
    flipped = item["targets"]["flow_dis"].numpy()
    assert epe(flipped, recomputed) < 0.02
    assert epe(reader["clip"]["flow:dis"][..., ::-1].astype(np.float32), recomputed) > 5.0


# ---- refusing targets -----------------------------------------------------------------------------

class NoiseFeatures:
    """A feature target's spec (the sif teacher's declaration) filled with seeded noise: the trainer
    only sees the stored spec and the arrays."""

    def __init__(self) -> None:
        self.spec = TargetSpec(name="sif", variant="swin-b-in22k", version=1, grid=Grid.PATCH, dtype="float16",
                               loss="l1", clip_shape=PatchClipShape(8), params={"model": "noise"},
                               augmentation=sif_augmentation("swin-b-in22k", {}))

    def compute(self, frames: np.ndarray) -> dict[str, np.ndarray]:
        rng = np.random.default_rng(int(frames.sum()) % 2**32)
        shape = (frames.shape[0], *self.spec.clip_shape(*frames.shape[1:3]))
        return {"data": rng.standard_normal(shape).astype(np.float16)}


def test_refusing_target_stops_a_flipping_dataset_unless_approximate(hog_reader):
    frames = noise(seed=8)
    for strip in (False, True):  # a cache with the declaration stamped, and one written before
        reader = MemoryReader({"clip": frames}, {"sif": NoiseFeatures()}, strip_declaration=strip)
        with pytest.raises(ConfigError) as error:
            make_dataset(reader, ["sif"], hflip_prob=0.5)
        message = str(error.value)
        assert "\n" not in message and "'sif'" in message and "data.approximate_flips: true" in message
        assert "data.hflip_prob: 0" in message
    assert make_dataset(reader, ["sif"], hflip_prob=0.0)[0]["aug"]["flip"] == 0
    item = make_dataset(reader, ["sif"], approximate_flips=True)[0]
    stored = reader["clip"]["sif"].astype(np.float32).reshape(T, 2, 2, 8)
    assert item["aug"]["flip"] == 1
    assert np.array_equal(item["targets"]["sif"].numpy(), stored[:, :, ::-1].reshape(T, 4, 8))  # mirrored patches


@pytest.fixture(scope="module")
def feature_cache(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("flipcache")
    build_synthetic_dataset(root / "data", clips=8, seed=2, num_frames=4, size=S, fps=4)
    config = ExtractConfig(cache_root=root / "cache", dataset="synthetic", batch_size=8,
                           sampling=SamplingConfig(num_frames=T, size=S))
    extract(discover_inputs([root / "data" / "captions.csv"]), [NoiseFeatures()], config)
    return root


def write_config(root: Path, name: str, **data) -> Path:
    config = {
        "name": name, "seed": 0, "out_dir": str(root / "runs"),
        "data": {"cache": str(root / "cache"), "dataset": "synthetic", "source": str(root / "data"),
                 "num_frames": T, "size": S, "max_text_len": 12, "hflip_prob": 0.5, "vocab_size": 200, **data},
        "model": {"video_backbone": "tiny", "hidden": 32, "layers": 1, "heads": 2, "intermediate": 64},
        "mvm": {"targets": ["sif"]},
        "pretrain": {"optim": {"steps": 1, "batch_size": 4, "lr": 1e-3}, "log_every": 1, "checkpoint_every": 0},
        "downstream": {"tasks": []},
    }
    path = root / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def test_a_run_flipping_a_refusing_target_stops_in_one_line(feature_cache, capsys):
    code = train_module.main([str(write_config(feature_cache, "refused"))])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1
    assert "'sif'" in err and "data.approximate_flips: true" in err
    assert not (feature_cache / "runs" / "refused" / "metrics.jsonl").exists()  # stopped before training


def test_a_run_with_approximate_flips_trains_and_records_it(feature_cache, one_torch_thread):
    path = write_config(feature_cache, "approximate", approximate_flips=True)
    train_module.train(path)
    run = feature_cache / "runs" / "approximate"
    steps = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert any(np.isfinite(s.get("mvm_sif", np.nan)) for s in steps)
    assert yaml.safe_load((run / "config.yaml").read_text())["data"]["approximate_flips"] is True


# ---- crops ----------------------------------------------------------------------------------------

def inner_edge_band(size: int, top: int, left: int, n: int, margin: int) -> np.ndarray:
    """(n*32, n*32) bool: pixels of the crop within `margin` px of a crop edge inside the frame."""
    side = size // 32
    band = np.zeros((n * 32, n * 32), bool)
    if top > 0:
        band[:margin] = True
    if top + n < side:
        band[-margin:] = True
    if left > 0:
        band[:, :margin] = True
    if left + n < side:
        band[:, -margin:] = True
    return band


@pytest.mark.parametrize("pattern", list(PATTERNS))
def test_grid_crop_of_pixel_and_hog_is_the_target_of_the_cropped_frames(pattern):
    """Pixel: equal for every grid-aligned crop. HOG ("border"): equal except in the cells along a crop
    edge that lies inside the frame, where the stored gradient looked past the edge and the cropped
    frame's is 0 (skimage's rule at an image edge); on noise those cells do differ."""
    size = 96
    frames = PATTERNS[pattern](seed=9, size=size)
    targets = {ref: build_target(ref) for ref in ("pixel", *HOG_REFS)}
    reader = MemoryReader({"clip": frames}, targets)
    infos = read_target_infos(reader, list(targets))
    assert {i.ref: target_augmentation(i).crop for i in infos} == {
        "pixel": CropRule.EXACT, "hog:paper": CropRule.BORDER, "hog:maskfeat": CropRule.BORDER}
    margin = target_augmentation(infos[1]).crop_margin_px
    assert margin == 8  # one HOG cell
    for n in (1, 2):
        for top in range(4 - n):
            for left in range(4 - n):
                out = crop_clip(reader["clip"], infos, top, left, n)
                cropped = np.ascontiguousarray(out["frames"])[None]
                assert np.array_equal(out["pixel"], targets["pixel"].compute(cropped)["data"][0])
                band = inner_edge_band(size, top, left, n, margin)
                paper = targets["hog:paper"].compute(cropped)["data"][0]
                assert np.array_equal(out["hog:paper"][:, ~band], paper[:, ~band])
                cells = lambda x: x.reshape(T, n, n, 4, 4, 27).transpose(0, 1, 3, 2, 4, 5).reshape(T, 4 * n, 4 * n, 27)
                maskfeat = cells(targets["hog:maskfeat"].compute(cropped)["data"][0])
                cell_band = band[::8, ::8]
                assert np.array_equal(cells(out["hog:maskfeat"])[:, ~cell_band], maskfeat[:, ~cell_band])
                if pattern == "noise" and band.any():  # the band is needed: those cells differ
                    assert not np.array_equal(cells(out["hog:maskfeat"])[:, cell_band], maskfeat[:, cell_band])
                    assert not np.array_equal(out["hog:paper"][:, band], paper[:, band])
