"""mvm_targets/cache_frames.py: clips handed over decoded are cached as extract caches videos, and read
back by CacheReader, read_target_infos and verify, with nothing decoded."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

from mvm_targets.cache_frames import GIVEN, cache_decoded_clips
from mvm_targets.errors import InputError
from mvm_targets.store.ledger import Ledger
from mvm_targets.store.reader import CacheReader
from mvm_targets.store.verify import verify_cache
from mvm_targets.synth.scene import COLORS
from mvm_targets.targets.registry import build_target
from mvm_targets.video.decode import DecodedClip
from violet_core.target_info import read_target_infos

T, S = 2, 64
REPO = Path(__file__).resolve().parents[1]


def clip(key: str, colour: str | None, seed: int, size: int = S, frames: int = T) -> DecodedClip:
    """Dull noise (no palette colour: every channel in 100..140) with, in `colour`, a 10 x 10 square in
    the second patch row of every frame."""
    rng = np.random.default_rng(seed)
    pixels = rng.integers(100, 141, size=(frames, size, size, 3), dtype=np.uint8)
    if colour is not None:
        pixels[:, 40:50, 5:15] = COLORS[colour]
    return DecodedClip(key=key, frames=pixels, frame_indices=np.arange(frames) * 3,
                       timestamps=np.arange(frames) * 0.125, source={"width": 320, "height": 240})


CLIPS = [clip("a", "red", 1), clip("b", "blue", 2), clip("c", None, 3)]
CAPTIONS = {"a": ["a red square"], "b": ["a blue square", "blue again"], "c": ["nothing"]}


def expected_palette(colour: str | None) -> np.ndarray:
    """The palette target by its definition: 1 for each colour present, at every patch of every frame."""
    row = np.array([name == colour for name in COLORS], dtype=np.float16)
    return np.broadcast_to(row, (T, (S // 32) ** 2, len(COLORS)))


@pytest.fixture
def cache(tmp_path: Path) -> Path:
    cache_decoded_clips(CLIPS, CAPTIONS, tmp_path, "given", targets=[build_target("palette")], clips_per_shard=2,
                        batch_size=2)
    return tmp_path


def test_clips_read_back_as_given_with_their_targets(cache: Path):
    reader = CacheReader(cache, "given", ["palette", "pixel"])
    assert reader.keys == ["a", "b", "c"]
    assert reader.clip_cache.root.name.startswith(f"frames-t{T}-s{S}-")
    for original in CLIPS:
        item = reader[original.key]
        np.testing.assert_array_equal(item["frames"], original.frames)
        np.testing.assert_array_equal(item["frame_indices"], original.frame_indices)
        np.testing.assert_array_equal(item["timestamps"], original.timestamps)
        assert item["captions"] == CAPTIONS[original.key]
        np.testing.assert_array_equal(item["pixel"], original.frames.transpose(0, 3, 1, 2))
    colours = {"a": "red", "b": "blue", "c": None}
    for key, colour in colours.items():
        data = reader[key]["palette"]
        assert data.dtype == np.float16
        np.testing.assert_array_equal(data, expected_palette(colour))
    palette, pixel = read_target_infos(reader, ["palette", "pixel"])
    assert (palette.grid, palette.clip_shape, palette.stored) == ("patch", (T, 4, len(COLORS)), True)
    assert (pixel.grid, pixel.clip_shape, pixel.stored) == ("dense", (T, 3, S, S), False)
    sampling = reader.attrs("frames")["sampling"]
    assert (sampling["num_frames"], sampling["size"], sampling["origin"]) == (T, S, GIVEN)


def test_the_store_accepts_what_was_written(cache: Path):
    report = verify_cache(cache, "given")
    assert report.ok, report.problems
    root = next((cache / "given").glob("frames-*"))
    frames = sorted((root / "frames").glob("shard-*.h5"))
    assert len(frames) == 2  # 3 clips at 2 per shard
    with h5py.File(frames[0], "r") as handle:
        assert [k.decode() for k in handle["keys"][:]] == ["a", "b"]
        assert handle["data"].compression == "lzf" and handle["data"].fletcher32
    latest = Ledger(root / "ledger.jsonl").latest()
    palette_id = build_target("palette").spec.target_id
    assert {(k, s) for (k, s), e in latest.items() if e.status == "done"} == \
        {(k, s) for k in "abc" for s in ("frames", palette_id)}


def test_a_rerun_adds_only_new_clips(cache: Path):
    cache_decoded_clips([*CLIPS, clip("d", "green", 4)], CAPTIONS | {"d": ["green"]}, cache, "given",
                        targets=[build_target("palette")], clips_per_shard=2)
    root = next((cache / "given").glob("frames-*"))
    shards = sorted((root / "frames").glob("shard-*.h5"))
    assert len(shards) == 3
    with h5py.File(shards[-1], "r") as handle:
        assert [k.decode() for k in handle["keys"][:]] == ["d"]
    reader = CacheReader(cache, "given", ["palette"])
    assert reader.keys == ["a", "b", "c", "d"]
    np.testing.assert_array_equal(reader["d"]["palette"][0, 0], [name == "green" for name in COLORS])


@pytest.mark.parametrize("clips, message", [
    ([], "no clips to cache"),
    ([CLIPS[0], clip("x", None, 5, size=96)], "'x': 2 frames of 96 px, but the first clip has 2 of 64 px"),
    ([clip("y", None, 6, size=48)], "'y': frames must be (T, S, S, 3) uint8 with S a multiple of 32"),
    ([DecodedClip("z", CLIPS[0].frames.astype(np.float32), np.arange(T), np.zeros(T))], "'z': frames must be"),
    ([DecodedClip("w", CLIPS[0].frames, np.arange(T + 1), np.zeros(T))], "'w': 3 frame indices and 2 timestamps"),
])
def test_bad_clips_are_one_line_errors(tmp_path: Path, clips, message):
    with pytest.raises(InputError) as error:
        cache_decoded_clips(clips, {}, tmp_path, "bad")
    assert message in str(error.value) and "\n" not in str(error.value)


def test_a_failing_target_names_the_clip(tmp_path: Path):
    class Failing:
        spec = build_target("palette").spec

        def compute(self, frames: np.ndarray) -> dict[str, np.ndarray]:
            raise RuntimeError("no palette today")

    with pytest.raises(InputError, match=r"clip 'a': .*no palette today"):
        cache_decoded_clips(CLIPS[:1], CAPTIONS, tmp_path, "bad", targets=[Failing()])


CHECK_IMPORTS = """
import sys
from pathlib import Path
import numpy as np
from mvm_targets.cache_frames import cache_decoded_clips
from mvm_targets.store.reader import CacheReader
from mvm_targets.video.decode import DecodedClip
from violet_core.target_info import read_target_infos

frames = np.full((2, 64, 64, 3), 7, dtype=np.uint8)
clips = [DecodedClip(k, frames, np.arange(2), np.zeros(2)) for k in "ab"]
cache_decoded_clips(clips, {"a": ["x"], "b": ["y"]}, Path(sys.argv[1]), "d")
reader = CacheReader(Path(sys.argv[1]), "d", ["pixel"])
read_target_infos(reader, ["pixel"])
assert reader["a"]["pixel"].shape == (2, 3, 64, 64)
print(sorted({m.split(".")[0] for m in sys.modules} & {"av", "cv2", "numba", "llvmlite", "skimage", "dall_e"}))
"""


def test_caching_and_reading_given_frames_imports_no_decoder(tmp_path: Path):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run([sys.executable, "-c", CHECK_IMPORTS, str(tmp_path)], capture_output=True, text=True,
                          env=env, cwd=REPO, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip() == "[]"
    with h5py.File(next(tmp_path.rglob("shard-*.h5")), "r") as handle:
        assert json.loads(handle.attrs["sampling"])["origin"] == GIVEN
