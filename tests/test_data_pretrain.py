"""violet_core.data: tokenizer, frame/target-consistent augmentations, the pretraining Dataset."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch

from mvm_targets.extract import ExtractConfig, extract
from mvm_targets.store.reader import CacheReader
from mvm_targets.synth import build_synthetic_dataset
from mvm_targets.targets import build_target
from mvm_targets.targets.flow import flip_flow_horizontal
from mvm_targets.video.decode import SamplingConfig
from mvm_targets.video.inputs import discover_inputs
from violet_core.config import ConfigError
from violet_core.data.augment import crop_clip, hflip_clip, random_grid_crop, target_augmentation, temporal_window
from violet_core.data.device_batch import to_device
from violet_core.data.pretrain import PretrainDataset, collate_pretrain, split_keys
from violet_core.data.tokenizer import build_tokenizer, load_tokenizer
from violet_core.target_info import TargetInfo, read_target_infos

REFS = ["pixel", "hog", "hog:maskfeat", "flow"]
T, S = 4, 64  # cached clips: 4 frames of 64 px, a 2 x 2 patch grid


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> dict:
    """A 4-clip synthetic set cached twice: as 4-frame videos (hog, maskfeat, DIS flow) and as images."""
    root = tmp_path_factory.mktemp("pretrain")
    build_synthetic_dataset(root / "ds", clips=4, seed=1, num_frames=8, size=64, fps=8)
    items = discover_inputs([root / "ds" / "captions.csv"])
    caches = (("synthetic", T, ("hog", "hog:maskfeat", "flow:dis")), ("images", 1, ("hog", "hog:maskfeat")))
    for dataset, frames, refs in caches:
        config = ExtractConfig(cache_root=root / "cache", dataset=dataset, batch_size=4,
                               sampling=SamplingConfig(num_frames=frames, size=S))
        extract(items, [build_target(r) for r in refs], config)
    reader = CacheReader(root / "cache", "synthetic", REFS)
    tokenizer = build_tokenizer(None, [c for cs in reader.captions.values() for c in cs], vocab_size=400)
    return {"root": root, "reader": reader, "infos": read_target_infos(reader, REFS), "tokenizer": tokenizer}


def dataset(store, **overrides) -> PretrainDataset:
    args = dict(num_frames=3, size=32, seed=7)
    args.update(overrides)
    return PretrainDataset(store["reader"], store["infos"], store["tokenizer"], store["reader"].keys, **args)


def info(ref: str, name: str, grid: str, shape: tuple) -> TargetInfo:
    return TargetInfo(ref=ref, name=name, variant="x", target_id=ref, grid=grid, loss="l1", clip_shape=shape)


# ---- tokenizer -------------------------------------------------------------------------------

def test_trained_tokenizer_is_deterministic_bert_layout_and_round_trips(store, tmp_path):
    tok = store["tokenizer"]
    captions = [c for cs in store["reader"].captions.values() for c in cs]
    assert build_tokenizer(None, captions, vocab_size=400).hf.get_vocab() == tok.hf.get_vocab()
    ids, mask = tok.encode(["A Blue triangle!", captions[0] + " " + captions[1]], max_len=8)
    assert ids.shape == mask.shape == (2, 8) and ids.dtype == mask.dtype == torch.int64
    assert [tok.decode_token(i) for i in ids[0, :5]] == ["[CLS]", "a", "blue", "triangle", "!"]
    assert ids[0, 5] == tok.sep_id and (ids[0, 6:] == tok.pad_id).all() and mask[0].tolist() == [1] * 6 + [0] * 2
    assert ids[1, 0] == tok.cls_id and ids[1, -1] == tok.sep_id and mask[1].all()  # truncated, [SEP] kept
    assert tok.special_mask(ids[0]).tolist() == [True] + [False] * 4 + [True] * 3
    assert tok.token_id("Blue") == tok.token_id("blue") == ids[0, 2] and tok.token_id("blue triangle") is None
    assert tok.token_id("zebra") is None and len({tok.pad_id, tok.cls_id, tok.sep_id, tok.mask_id}) == 4
    again = load_tokenizer(tok.save(tmp_path / "tok"))
    assert torch.equal(again.encode(captions, 32)[0], tok.encode(captions, 32)[0])


def test_local_bert_folder_loads_offline_and_a_missing_one_says_what_to_do(tmp_path):
    folder = tmp_path / "bert"
    folder.mkdir()
    (folder / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "red", "square"]))
    tok = build_tokenizer(folder, [], save_dir=tmp_path / "run")
    assert tok.encode(["A RED circle"], 6)[0].tolist() == [[2, 5, 6, 1, 3, 0]]
    assert load_tokenizer(tmp_path / "run").encode(["a red"], 4)[0].tolist() == [[2, 5, 6, 3]]
    with pytest.raises(FileNotFoundError, match=r"nowhere.*bert-base-uncased"):
        build_tokenizer(tmp_path / "nowhere", ["a caption"])


# ---- augment: flip ---------------------------------------------------------------------------

def test_approximate_flip_mirrors_patch_token_and_dense_grids_of_refusing_targets():
    frames = np.zeros((1, 64, 64, 3), np.uint8)
    patch = np.arange(4, dtype=np.float32).reshape(1, 4, 1) * np.ones((1, 1, 3), np.float32)  # patch index
    ids = np.arange(4).reshape(1, 2, 2)  # vq:v1-style ids on the patch grid
    token = np.arange(64).reshape(1, 8, 8)
    dense = np.arange(64 * 64, dtype=np.float32).reshape(1, 64, 64)
    infos = [info("sif", "sif", "patch", (1, 4, 3)), info("vq1", "vq", "patch", (1, 2, 2)),
             info("vq", "vq", "token", (1, 8, 8)), info("depth", "depth", "dense", (1, 64, 64))]
    clip = {"frames": frames, "sif": patch, "vq1": ids, "vq": token, "depth": dense}
    assert {target_augmentation(i).flip.value for i in infos} == {"refuse"}
    with pytest.raises(ConfigError, match="'sif'"):
        hflip_clip(clip, infos)
    out = hflip_clip(clip, infos, approximate_flips=True)
    assert out["sif"][0, :, 0].tolist() == [1, 0, 3, 2] and out["vq1"][0].tolist() == [[1, 0], [3, 2]]
    assert np.array_equal(out["vq"], token[..., ::-1]) and np.array_equal(out["depth"], dense[..., ::-1])


def test_flipped_flow_matches_dis_on_flipped_frames(store):
    clip = store["reader"][store["reader"].keys[0]]
    out = hflip_clip(clip, store["infos"])
    dis = build_target("flow:dis").compute(np.ascontiguousarray(out["frames"])[None])["data"][0].astype(np.float32)
    epe = lambda a: float(np.sqrt(((a.astype(np.float32) - dis) ** 2).sum(1)).mean())
    assert np.array_equal(out["flow"], flip_flow_horizontal(clip["flow"]))
    assert epe(out["flow"]) < 0.1 * epe(clip["flow"][..., ::-1])  # DIS is not exactly flip-equivariant
    assert np.array_equal(out["flow/max_magnitude"], clip["flow/max_magnitude"])


# ---- augment: crop and window ----------------------------------------------------------------

def test_grid_crop_slices_every_target_consistently(store):
    clip = store["reader"][store["reader"].keys[1]]
    out = crop_clip(clip, store["infos"], top_patch=1, left_patch=0, size_patches=1)
    assert np.array_equal(out["frames"], clip["frames"][:, 32:, :32])
    assert np.array_equal(out["pixel"], out["frames"].transpose(0, 3, 1, 2))
    assert np.array_equal(out["hog"], clip["hog"][:, 32:, :32]) and out["flow"].shape == (T - 1, 2, 32, 32)
    assert np.array_equal(out["hog:maskfeat"][:, 0], clip["hog:maskfeat"][:, 2])  # patch (1, 0) of 2 x 2
    largest = np.sqrt((out["flow"].astype(np.float32) ** 2).sum(1)).max((1, 2))
    np.testing.assert_allclose(out["flow/max_magnitude"], largest, rtol=1e-6)
    assert (out["flow/max_magnitude"] <= clip["flow/max_magnitude"] * (1 + 2 ** -10)).all()  # float16 rounding
    # Cells away from the crop border see the same pixels and gradients: recomputing agrees there.
    fresh = build_target("hog:maskfeat").compute(np.ascontiguousarray(out["frames"])[None])["data"][0]
    inner = lambda x: x.reshape(T, 4, 4, 27)[:, 1:-1, 1:-1]
    np.testing.assert_array_equal(inner(fresh), inner(out["hog:maskfeat"]))
    token = np.arange(64).reshape(1, 8, 8)
    cropped = crop_clip({"frames": clip["frames"][:1], "vq": token}, [info("vq", "vq", "token", (1, 8, 8))], 0, 1, 1)
    assert np.array_equal(cropped["vq"], token[:, :4, 4:])


def test_random_crop_validates_size_and_is_a_no_op_at_full_size(store):
    clip = store["reader"][store["reader"].keys[0]]
    rng = np.random.default_rng(0)
    assert random_grid_crop(clip, store["infos"], S, rng) is clip
    for bad in (48, 96, 0):
        with pytest.raises(ValueError, match="multiple of 32|larger than"):
            random_grid_crop(clip, store["infos"], bad, rng)
    assert {random_grid_crop(clip, store["infos"], 32, rng)["frames"][0, 0, 0].tobytes() for _ in range(30)} == {
        clip["frames"][0, y, x].tobytes() for y in (0, 32) for x in (0, 32)}


def test_temporal_window_keeps_pairs_inside_the_window(store):
    clip = store["reader"][store["reader"].keys[2]]
    out = temporal_window(clip, store["infos"], num_frames=2, start=1)
    assert np.array_equal(out["frames"], clip["frames"][1:3]) and np.array_equal(out["hog"], clip["hog"][1:3])
    assert np.array_equal(out["flow"], clip["flow"][1:2])
    assert np.array_equal(out["flow/max_magnitude"], clip["flow/max_magnitude"][1:2])
    assert np.array_equal(out["frame_indices"], clip["frame_indices"][1:3])
    with pytest.raises(ValueError, match="does not fit"):
        temporal_window(clip, store["infos"], num_frames=3, start=2)


# ---- dataset ---------------------------------------------------------------------------------

def test_collated_batch_shapes_dtypes_and_normalisation(store):
    ds = dataset(store)
    batch = collate_pretrain([ds[i] for i in range(len(ds))])
    # on the way to the device: uint8 frames, float16 targets as cached, the pixel target as frames
    assert batch["video"].shape == (4, 3, 32, 32, 3) and batch["video"].dtype == torch.uint8
    assert batch["text_ids"].shape == batch["text_mask"].shape == (4, 32) and batch["text_ids"].dtype == torch.int64
    shapes = {ref: (tuple(t.shape), t.dtype) for ref, t in batch["targets"].items()}
    assert shapes == {"pixel": ((4, 3, 3, 32, 32), torch.uint8), "hog": ((4, 3, 1, 32, 32), torch.float16),
                      "hog_maskfeat": ((4, 3, 1, 432), torch.float16), "flow": ((4, 2, 2, 32, 32), torch.float16)}
    assert batch["targets_as_input"] == ["pixel"]
    assert batch["extras"]["flow/max_magnitude"].shape == (4, 2) and batch["keys"] == ds.keys
    # on the device: what the step consumes
    ready = to_device(batch, torch.device("cpu"))
    assert ready["video"].shape == (4, 3, 3, 32, 32) and ready["video"].dtype == torch.float32
    shapes = {ref: (tuple(t.shape), t.dtype) for ref, t in ready["targets"].items()}
    assert shapes == {"pixel": ((4, 3, 3, 32, 32), torch.float32), "hog": ((4, 3, 1, 32, 32), torch.float32),
                      "hog_maskfeat": ((4, 3, 1, 432), torch.float32), "flow": ((4, 2, 2, 32, 32), torch.float32)}
    assert torch.equal(ready["targets"]["pixel"], ready["video"]) and "targets_as_input" not in ready
    # The video is the drawn window/crop/flip of the stored frames, ImageNet-normalised.
    item, aug = ds[1], ds[1]["aug"]
    raw = store["reader"][ds.keys[1]]["frames"][aug["start"]:aug["start"] + 3, 32 * aug["top"]:32 * aug["top"] + 32,
                                                 32 * aug["left"]:32 * aug["left"] + 32]
    raw = raw[:, :, ::-1] if aug["flip"] else raw
    assert np.array_equal(item["video"].numpy(), raw)
    mean, std = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])
    np.testing.assert_allclose(ready["video"][1].permute(0, 2, 3, 1).numpy(), (raw / 255.0 - mean) / std, atol=1e-5)
    caption = store["reader"].captions[ds.keys[1]][0]
    assert torch.equal(item["text_ids"], store["tokenizer"].encode([caption], 32)[0][0])


def test_flip_through_the_dataset_moves_video_and_targets_together(store):
    plain, flipped = dataset(store, hflip_prob=0.0)[2], dataset(store, hflip_prob=1.0)[2]
    assert {**plain["aug"], "flip": 1} == flipped["aug"]  # the other draws do not depend on the flip's
    assert torch.equal(flipped["video"], plain["video"].flip(-2))  # (T, S, S, 3): width is axis -2
    assert torch.equal(flipped["targets"]["pixel"], flipped["video"].permute(0, 3, 1, 2))
    flow0, flow1 = plain["targets"]["flow"], flipped["targets"]["flow"]
    assert torch.equal(flow1[:, 0], -flow0[:, 0].flip(-1)) and torch.equal(flow1[:, 1], flow0[:, 1].flip(-1))
    # HOG is recomputed on the flipped window (whole frame), then cropped where the item's crop lies
    aug = flipped["aug"]
    window = store["reader"][store["reader"].keys[2]]["frames"][aug["start"]:aug["start"] + 3, :, ::-1]
    rows, cols = slice(32 * aug["top"], 32 * aug["top"] + 32), slice(32 - 32 * aug["left"], 64 - 32 * aug["left"])
    for ref in ("hog:paper", "hog:maskfeat"):
        whole = build_target(ref).compute(np.ascontiguousarray(window)[None])["data"][0]
        if ref == "hog:paper":
            want = whole[:, rows, cols]
        else:  # patch (top, left) of the clip is patch (top, 1 - left) of its mirror
            want = whole.reshape(3, 2, 2, 432)[:, aug["top"], 1 - aug["left"]]
        stored = "hog" if ref == "hog:paper" else "hog_maskfeat"  # batch keys: the refs' file-safe spelling
        assert np.array_equal(flipped["targets"][stored].numpy().reshape(want.shape), want.astype(np.float32))


def test_items_depend_only_on_seed_epoch_and_index(store):
    ds = dataset(store)
    first = [ds[i] for i in (3, 0, 1, 2)]
    again = dataset(store)
    for index, item in zip((3, 0, 1, 2), first):
        other = again[index]
        assert item["aug"] == other["aug"] and torch.equal(item["video"], other["video"])
        assert all(torch.equal(item["targets"][r], other["targets"][r]) for r in item["targets"])
    draws = lambda d: [d[i]["aug"] for i in range(len(d))]
    ds.set_epoch(1)
    assert draws(ds) != draws(again) and draws(dataset(store, seed=8)) != draws(again)
    ds.set_epoch(0)
    assert draws(ds) == draws(again)


def test_images_skip_targets_that_need_a_video_with_a_note(store, caplog):
    reader = CacheReader(store["root"] / "cache", "images", ["hog", "hog:maskfeat"])
    with caplog.at_level(logging.INFO, logger="violet_core.data.pretrain"):
        ds = PretrainDataset(reader, store["infos"], store["tokenizer"], reader.keys, num_frames=1, size=32)
    assert ds.skipped_refs == ["flow"] and "flow" in caplog.text and "images" in caplog.text
    batch = collate_pretrain([ds[0], ds[1]])
    assert sorted(batch["targets"]) == ["hog", "hog_maskfeat", "pixel"] and batch["extras"] == {}
    assert batch["video"].shape == (2, 1, 32, 32, 3) and batch["targets"]["hog"].shape == (2, 1, 1, 32, 32)


def test_clear_errors_for_impossible_requests(store):
    with pytest.raises(ValueError, match=r"num_frames=5 .* 4 frames"):
        dataset(store, num_frames=5)
    with pytest.raises(ValueError, match=r"size=96 .*64 px"):
        dataset(store, size=96)
    with pytest.raises(ValueError, match="size=48"):
        dataset(store, size=48)
    reader, infos, tok = store["reader"], store["infos"], store["tokenizer"]
    with pytest.raises(ValueError, match=r"1 of 2 keys are not in the cache.*videos/nope"):
        PretrainDataset(reader, infos, tok, [reader.keys[0], "videos/nope"], num_frames=2, size=32)
    hog_only = CacheReader(store["root"] / "cache", "synthetic", ["hog"])
    with pytest.raises(ValueError, match=r"does not load the targets \['hog:maskfeat', 'flow'\]"):
        PretrainDataset(hog_only, infos, tok, hog_only.keys, num_frames=2, size=32)


def test_split_keys_reads_splits_json_and_skips_uncached_keys(store, tmp_path, caplog):
    keys = store["reader"].keys
    splits = json.loads((store["root"] / "ds" / "splits.json").read_text())
    assert split_keys(store["root"] / "ds", "train", keys) == splits["train"]
    (tmp_path / "splits.json").write_text(json.dumps({"train": [keys[1], "videos/gone", keys[0]], "val": []}))
    with caplog.at_level(logging.WARNING):
        assert split_keys(tmp_path, "train", keys) == [keys[1], keys[0]]
    assert "videos/gone" in caplog.text
    with pytest.raises(ValueError, match="no split 'test'"):
        split_keys(tmp_path, "test", keys)
    empty = tmp_path / "no_splits"
    assert split_keys(empty, "train", keys[::-1]) == sorted(keys) and split_keys(empty, "val", keys) == []


def test_collate_keeps_only_targets_every_item_has(store):
    ds = dataset(store)
    items = [ds[0], ds[1]]
    del items[1]["targets"]["flow"], items[1]["extras"]["flow/max_magnitude"]
    batch = collate_pretrain(items)
    assert "flow" not in batch["targets"] and batch["extras"] == {} and batch["targets"]["hog"].shape[0] == 2
