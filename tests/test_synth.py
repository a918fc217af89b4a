"""The synthetic dataset generator: reproducible files, decodable videos, consistent labels, real motion."""

from __future__ import annotations

import csv
import json
from collections import defaultdict
from pathlib import Path

import av
import numpy as np
import pytest

from mvm_targets.synth import SynthSummary, build_synthetic_dataset
from mvm_targets.synth.build import _assign_splits
from mvm_targets.synth.scene import COLORS, DIRECTION_VECTORS
from mvm_targets.synth.text import MOTION_WORDS

SMALL = dict(clips=6, seed=3, num_frames=8, size=64, fps=8)


def _tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _decode(path: Path) -> np.ndarray:
    """All frames of an mp4, `(T, H, W, 3)` uint8 RGB."""
    with av.open(str(path)) as container:
        return np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, SynthSummary]:
    out = tmp_path_factory.mktemp("synth") / "ds"
    return out, build_synthetic_dataset(out, **SMALL)


@pytest.fixture(scope="module")
def truth(built) -> list[dict]:
    return _jsonl(built[0] / "ground_truth.jsonl")


def test_summary_reports_what_was_written(built):
    out, summary = built
    assert summary == SynthSummary(out_dir=out, clips=6, seed=3, files_written=summary.files_written,
                                   seconds=summary.seconds)
    assert summary.files_written == len(_tree(out)) == 6 + 7
    assert summary.seconds > 0


def test_same_seed_is_byte_identical_and_other_seed_differs(built, tmp_path):
    out, _ = built
    reference = _tree(out)
    again = tmp_path / "again"
    build_synthetic_dataset(again, **SMALL)
    assert _tree(again) == reference

    # Rebuilding in place over an identical previous build is allowed and changes nothing.
    build_synthetic_dataset(again, **SMALL)
    assert _tree(again) == reference

    other = tmp_path / "other"
    build_synthetic_dataset(other, **{**SMALL, "seed": 4})
    other_tree = _tree(other)
    assert other_tree.keys() == reference.keys()
    assert other_tree["captions.csv"] != reference["captions.csv"]
    assert all(other_tree[k] != reference[k] for k in reference if k.endswith(".mp4"))


def test_videos_decode_to_requested_geometry(built):
    out, _ = built
    videos = sorted((out / "videos").glob("*.mp4"))
    assert len(videos) == SMALL["clips"]
    for path in videos:
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            assert stream.codec_context.name == "h264"
            assert stream.codec_context.pix_fmt == "yuv420p"
            assert stream.average_rate == SMALL["fps"]
        frames = _decode(path)
        assert frames.shape == (SMALL["num_frames"], SMALL["size"], SMALL["size"], 3)
        assert frames.dtype == np.uint8


def test_label_files_are_consistent(built, truth):
    out, _ = built
    keys = [f"videos/clip_{i:05d}" for i in range(SMALL["clips"])]
    assert all((out / f"{k}.mp4").is_file() for k in keys)

    manifest = json.loads((out / "dataset.json").read_text())
    assert manifest == {"name": "synthetic", "generator_version": 1, **{k: SMALL[k] for k in
                        ("seed", "clips", "num_frames", "size", "fps")}}

    with open(out / "captions.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["path"] for r in rows] == [f"{k}.mp4" for k in keys]
    assert all(r["caption"] and r["caption"] == t["caption"] for r, t in zip(rows, truth))

    splits = json.loads((out / "splits.json").read_text())
    assert set(splits) == {"train", "val", "test"}
    assert all(splits[name] for name in splits), "every split must be non-empty"
    members = [k for name in splits for k in splits[name]]
    assert sorted(members) == keys, "splits must be disjoint and cover every clip"
    split_of = {k: name for name in splits for k in splits[name]}
    assert all(r["split"] == split_of[r["path"][:-4]] for r in rows)

    retrieval = json.loads((out / "retrieval.json").read_text())
    assert retrieval["split"] == "test" and retrieval["videos"] == splits["test"]
    assert len(retrieval["captions"]) == len(retrieval["caption_to_video"]) >= 1
    caption_of = {r["path"][:-4]: r["caption"] for r in rows}
    for text, idx in zip(retrieval["captions"], retrieval["caption_to_video"]):
        assert 0 <= idx < len(retrieval["videos"]) and caption_of[retrieval["videos"][idx]] == text

    mc = _jsonl(out / "qa_mc.jsonl")
    assert len(mc) == sum(len(t["objects"]) for t in truth)
    for item in mc:
        assert item["key"] in split_of and item["split"] == split_of[item["key"]]
        assert len(item["options"]) == len(set(item["options"])) == 5
        assert 0 <= item["answer"] < 5
        # The correct option is the phrase the caption uses for that object.
        assert item["options"][item["answer"]] in caption_of[item["key"]]

    oe = _jsonl(out / "qa_oe.jsonl")
    assert oe
    for item in oe:
        assert item["key"] in split_of and item["split"] == split_of[item["key"]]
        assert item["answer"].isalpha() and item["answer"] == item["answer"].lower()


def test_opposite_direction_is_always_a_distractor(built, truth):
    objects = {(t["key"], f"{o['color']} {o['shape']}"): o for t in truth for o in t["objects"]}
    opposite = {"left": "right", "right": "left", "up": "down", "down": "up"}
    checked = 0
    for item in _jsonl(built[0] / "qa_mc.jsonl"):
        obj = objects[(item["key"], item["question"][len("what does the "):-len(" do?")])]
        if obj["action"] == "move":
            assert f"moves {opposite[obj['direction']]} {obj['speed']}" in item["options"]
            checked += 1
    assert checked


def test_motion_twins_differ_only_in_motion(built, truth):
    out, _ = built
    twins = defaultdict(list)
    for t in truth:
        if t["twin_group"] is not None:
            twins[t["twin_group"]].append(t)
    assert twins, "a build must contain motion twins"
    for a, b in twins.values():
        words_a, words_b = a["caption"].split(), b["caption"].split()
        assert len(words_a) == len(words_b) and words_a != words_b
        assert all(x in MOTION_WORDS and y in MOTION_WORDS for x, y in zip(words_a, words_b) if x != y)
        assert a["background"] == b["background"]
        assert [(o["color"], o["shape"], o["start"]) for o in a["objects"]] == \
               [(o["color"], o["shape"], o["start"]) for o in b["objects"]]

        va = _decode(out / f"{a['key']}.mp4").astype(np.int16)
        vb = _decode(out / f"{b['key']}.mp4").astype(np.int16)
        first, last = np.abs(va[0] - vb[0]), np.abs(va[-1] - vb[-1])
        assert first.max() <= 2, "twins must start from the same picture"
        assert (last.max(-1) > 40).sum() >= 10, "twins must look different once they have moved"


def _centroid(frame: np.ndarray, rgb: tuple[int, int, int]) -> np.ndarray:
    mask = np.linalg.norm(frame.astype(np.float32) - np.asarray(rgb, np.float32), axis=-1) < 60
    assert mask.sum() >= 10, "object colour not found in the decoded frame"
    ys, xs = np.nonzero(mask)
    return np.array([xs.mean(), ys.mean()])


def test_rendered_motion_matches_caption_and_ground_truth(built, truth):
    out, _ = built
    movers = 0
    for t in truth:
        video = None
        for obj in t["objects"]:
            if obj["action"] != "move":
                continue
            movers += 1
            assert f"{obj['color']} {obj['shape']} moves {obj['direction']}" in t["caption"]
            direction = np.array(DIRECTION_VECTORS[obj["direction"]])
            states = obj["states"]
            travel = np.array([states[-1]["x"] - states[0]["x"], states[-1]["y"] - states[0]["y"]])
            assert travel @ direction > 0 and abs(travel[0] * direction[1] - travel[1] * direction[0]) < 1e-6

            video = _decode(out / f"{t['key']}.mp4") if video is None else video
            seen = _centroid(video[-1], COLORS[obj["color"]]) - _centroid(video[0], COLORS[obj["color"]])
            along = seen @ direction
            across = abs(seen[0] * direction[1] - seen[1] * direction[0])
            assert along > 0.6 * (travel @ direction), (t["key"], obj["direction"], seen, travel)
            assert across < 1.5
    assert movers


@pytest.mark.parametrize("kwargs, message", [
    (dict(clips=0), "clips must be >= 1"),
    (dict(size=63), "size must be even"),
    (dict(size=30), "size must be even and >= 32"),
    (dict(num_frames=1), "num_frames must be >= 2"),
    (dict(object_scale=5.0), "object_scale must be in"),
])
def test_bad_arguments_are_rejected(tmp_path, kwargs, message):
    with pytest.raises(ValueError, match=message):
        build_synthetic_dataset(tmp_path / "out", **{**SMALL, **kwargs})
    assert not (tmp_path / "out").exists(), "nothing is written for bad arguments"


def test_refuses_foreign_or_different_non_empty_dir(built, tmp_path):
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="is not empty and is not a synthetic dataset built with the same"):
        build_synthetic_dataset(foreign, **SMALL)
    assert (foreign / "notes.txt").read_text() == "mine"

    with pytest.raises(ValueError, match="not empty"):
        build_synthetic_dataset(built[0], **{**SMALL, "seed": 99})


def test_object_scale_scales_radii_and_is_recorded(built, truth, tmp_path):
    default = json.loads((built[0] / "dataset.json").read_text())
    assert "object_scale" not in default  # datasets built before the option keep their manifest
    out = tmp_path / "large"
    build_synthetic_dataset(out, **SMALL, object_scale=2.0)
    assert json.loads((out / "dataset.json").read_text())["object_scale"] == 2.0
    radii = [o["radius"] / SMALL["size"] for clip in _jsonl(out / "ground_truth.jsonl") for o in clip["objects"]]
    assert radii and all(0.16 - 1e-3 <= r <= 0.22 + 1e-3 for r in radii)
    assert all(0.08 - 1e-3 <= o["radius"] / SMALL["size"] <= 0.11 + 1e-3 for clip in truth for o in clip["objects"])
    with pytest.raises(ValueError, match="not empty"):  # a different scale is a different dataset
        build_synthetic_dataset(out, **SMALL)


@pytest.mark.parametrize("clips", range(1, 120))
def test_splits_are_70_15_15_and_non_empty(clips):
    rng = np.random.default_rng(clips)
    groups, i = [], 0
    while i < clips:  # mostly pairs, the hardest case for exact counts
        size = 2 if i + 1 < clips and rng.uniform() < 0.7 else 1
        groups.append(list(range(i, i + size)))
        i += size
    split = _assign_splits(groups, clips, rng)
    counts = {name: split.count(name) for name in ("train", "val", "test")}
    assert sum(counts.values()) == clips
    if clips >= 3:
        assert min(counts.values()) >= 1
        assert abs(counts["test"] - 0.15 * clips) <= 1 and abs(counts["val"] - 0.15 * clips) <= 1
