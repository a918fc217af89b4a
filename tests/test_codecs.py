"""Storage codecs (mvm_targets/store/codecs.py): the int8 bound, pooling and upsampling against torch,
ids and options, verify over the codec's datasets, and `estimate` with a codec.

Oracles are independent of the code under test: the quantisation bound from max|x| / 127 computed in
float64, pooling and bilinear upsampling from torch's `avg_pool2d` and `interpolate`.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from mvm_targets.extract import ExtractConfig, extract
from mvm_targets.store import schema
from mvm_targets.store.codecs import CODEC_NAMES, codec_named, pool2, upsample2
from mvm_targets.store.damage import DamagedShardError
from mvm_targets.store.layout import open_clip_cache
from mvm_targets.store.reader import CacheReader
from mvm_targets.store.verify import verify_cache
from mvm_targets.targets.build import TargetOptionError, build_targets
from mvm_targets.targets.spec import Grid, TargetSpec, with_codec
from mvm_targets.video.decode import SamplingConfig
from mvm_targets.video.inputs import discover_inputs
from tests.conftest import write_video
from tests.test_integrity import flip_chunk

REPO = Path(__file__).resolve().parents[1]
FLOAT16_STEP = 2.0 ** -10  # relative spacing of float16 values: the scale is rounded up by less than this


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", "from mvm_targets.cli import main; main()", *args], cwd=REPO,
                          capture_output=True, text=True, timeout=120)


def reference_scale(values: np.ndarray, vector_axes: int) -> np.ndarray:
    """max|x| / 127 per vector, in float64: the bound's scale, from the data alone."""
    axes = tuple(range(values.ndim - vector_axes, values.ndim))
    return np.abs(values.astype(np.float64)).max(axis=axes) / 127.0


@pytest.mark.parametrize("grid,shape,axes", [("patch", (4, 49, 96), 1), ("dense", (3, 2, 16, 16), 2),
                                             ("dense", (4, 16, 16), 2)])
def test_int8_stays_within_half_a_scale_of_every_value(grid, shape, axes):
    rng = np.random.default_rng(0)
    values = (rng.standard_normal(shape) * rng.uniform(1e-3, 50, shape[:-axes] + (1,) * axes)).astype(np.float16)
    values[0, 0] = 0  # an all-zero vector: scale 0, decoded zeros
    codec = codec_named("int8")
    stored, side = codec.encode(values, grid)
    assert stored.dtype == np.int8 and stored.shape == values.shape
    assert side["scale"].dtype == np.float16 and side["scale"].shape == shape[:-axes]
    scale = reference_scale(values, axes)
    stored_scale = side["scale"].astype(np.float64)
    assert np.all(stored_scale >= scale) and np.all(stored_scale <= scale * (1 + FLOAT16_STEP))
    decoded = codec.decode(stored, side, grid)
    assert decoded.dtype == np.float32 and decoded.shape == values.shape
    error = np.abs(decoded.astype(np.float64) - values.astype(np.float64))
    bound = (scale * (1 + FLOAT16_STEP) / 2).reshape(*scale.shape, *(1,) * axes)
    assert np.all(error <= bound + 1e-12)
    assert np.all(decoded[0, 0] == 0)
    assert np.abs(stored.astype(np.int16)).max() == 127  # the largest value of each vector uses the full range


def test_pooling_and_upsampling_are_torchs_average_pool_and_bilinear():
    values = np.random.default_rng(1).standard_normal((3, 2, 12, 10)).astype(np.float32)
    expected_pool = torch.nn.functional.avg_pool2d(torch.from_numpy(values).double(), 2).numpy()
    np.testing.assert_allclose(pool2(values), expected_pool, rtol=0, atol=1e-6)
    small = values[..., :6, :5]
    expected_up = torch.nn.functional.interpolate(torch.from_numpy(small).double(), scale_factor=2, mode="bilinear",
                                                  align_corners=False).numpy()
    np.testing.assert_allclose(upsample2(small), expected_up, rtol=0, atol=1e-6)
    upsampled_3d = upsample2(small[:, 0])  # (T, h, w) maps without a channel axis
    np.testing.assert_allclose(upsampled_3d, expected_up[:, 0], rtol=0, atol=1e-6)


def test_half_codecs_store_quarter_maps_and_decode_to_the_full_shape():
    values = np.random.default_rng(2).uniform(-3, 3, (3, 2, 16, 16)).astype(np.float16)
    oracle = torch.nn.functional.interpolate(torch.nn.functional.avg_pool2d(torch.from_numpy(values).double(), 2),
                                             scale_factor=2, mode="bilinear", align_corners=False).numpy()
    half = codec_named("fp16-half")
    stored, side = half.encode(values, "dense")
    assert stored.dtype == np.float16 and stored.shape == (3, 2, 8, 8) and side == {}
    assert half.stored_shape("dense", values.shape) == (3, 2, 8, 8)
    decoded = half.decode(stored, side, "dense")
    assert decoded.shape == values.shape
    np.testing.assert_allclose(decoded, oracle, rtol=0, atol=2e-3)  # the pooled map rounded to float16
    quarter = codec_named("int8-half")
    stored, side = quarter.encode(values, "dense")
    assert stored.dtype == np.int8 and side["scale"].shape == (3, 2)
    # bilinear weights are non-negative and sum to 1, so the error stays within half the pooled map's scale
    scale = reference_scale(torch.nn.functional.avg_pool2d(torch.from_numpy(values).double(), 2).numpy(), 2)
    error = np.abs(quarter.decode(stored, side, "dense") - oracle)
    assert np.all(error <= (scale * (1 + FLOAT16_STEP) / 2)[..., None, None] + 1e-9)


def test_the_default_codec_keeps_every_id_and_another_makes_a_new_one():
    (plain,) = build_targets(["hog"])
    (default,) = build_targets(["hog"], options={"hog": {"codec": "fp16"}})
    (coded,) = build_targets(["hog"], options={"hog": {"codec": "int8"}})
    (flow,) = build_targets(["flow:dis"], options={"optical_flow": {"codec": "int8-half", "preset": "fast"}})
    assert default.spec.target_id == plain.spec.target_id and "codec" not in default.spec.params
    assert coded.spec.target_id != plain.spec.target_id and coded.spec.params["codec"] == "int8"
    assert coded.spec.target_id.startswith("hog-paper-")
    assert flow.spec.params["codec"] == "int8-half" and flow.spec.params["preset"] == "fast"
    stored = coded.spec.stored_spec(4, 64)
    assert stored.codec == "int8" and stored.clip_shape == (4, 64, 64) and stored.dtype == "float16"
    assert plain.spec.stored_spec(4, 64).codec == "fp16"
    assert with_codec(coded.spec, "fp16").target_id == plain.spec.target_id  # back to the default


def test_codecs_that_do_not_fit_are_one_line_errors_naming_the_target():
    with pytest.raises(TargetOptionError, match=r"^target 'hog': unknown codec 'int4'; known codecs: "
                       + ", ".join(CODEC_NAMES) + "$"):
        build_targets(["hog"], options={"hog": {"codec": "int4"}})
    with pytest.raises(TargetOptionError, match="'pixel:rgb': codec 'int8' needs a stored target"):
        build_targets(["pixel"], options={"pixel": {"codec": "int8"}})
    with pytest.raises(TargetOptionError, match="'hog:maskfeat': codec 'fp16-half' pools dense maps, not the patch"):
        build_targets(["hog:maskfeat"], options={"hog": {"codec": "fp16-half"}})
    ids = TargetSpec(name="ids", variant="test", version=1, grid=Grid.TOKEN, dtype="uint16", loss="ce",
                     clip_shape=lambda t, s: (t, s // 8, s // 8))
    with pytest.raises(ValueError, match="'ids:test': codec 'int8' needs float values, not uint16"):
        with_codec(ids, "int8")
    assert with_codec(ids, "fp16") == ids  # the default fits every target
    done = cli("estimate", str(REPO / "no-such-folder"), "-t", "hog", "-o", "hog.codec=int9")
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2 and len(lines) == 1 and "unknown codec 'int9'" in lines[0], done.stderr


@pytest.fixture(scope="module")
def int8_cache(tmp_path_factory) -> tuple[Path, list]:
    """Three small videos with hog (int8) and flow (int8-half): each set two shards (2 clips + 1 clip)."""
    root = tmp_path_factory.mktemp("codec-store")
    for i in range(3):
        write_video(root / "videos" / f"v{i}.mp4", num_frames=10 + i)
    targets = build_targets(["hog", "flow:dis"], options={"hog": {"codec": "int8"}, "flow": {"codec": "int8-half"}})
    config = ExtractConfig(cache_root=root / "cache", dataset="toy", sampling=SamplingConfig(num_frames=4, size=64),
                           batch_size=2, clips_per_shard=2)
    summary = extract(discover_inputs([root / "videos"]), targets, config)
    assert summary.done == 3 and not summary.failures
    return root / "cache", targets


def test_codec_datasets_are_chunked_per_clip_checksummed_and_verify_clean(int8_cache):
    cache, (hog, flow) = int8_cache
    clip_cache = open_clip_cache(cache, "toy")
    for target, data_shape, scale_shape in ((hog, (4, 64, 64), (4,)), (flow, (3, 2, 32, 32), (3, 2))):
        shards = clip_cache.target_set(target.spec.target_id).shards()
        assert len(shards) == 2
        with h5py.File(shards[0], "r") as handle:
            data, scale = handle[schema.DATA], handle[f"{schema.CODEC_GROUP}/scale"]
            assert data.dtype == np.int8 and data.shape == (2, *data_shape) and data.chunks == (1, *data_shape)
            assert scale.dtype == np.float16 and scale.shape == (2, *scale_shape)
            assert scale.chunks == (1, *scale_shape) and data.fletcher32 and scale.fletcher32
    report = verify_cache(cache)
    assert report.ok, report.problems
    reader = CacheReader(cache, "toy", targets=["hog", "flow"])
    clip = reader[0]
    assert clip["hog"].shape == (4, 64, 64) and clip["flow"].shape == (3, 2, 64, 64)
    assert clip["hog"].dtype == np.float32 and "flow/max_magnitude" in clip
    assert not any(name.startswith(("hog/", "flow/scale")) for name in clip)  # scales are not extras
    assert reader.spec("hog").codec == "int8" and reader.spec("hog").clip_shape == (4, 64, 64)


@pytest.mark.parametrize("dataset", [schema.DATA, f"{schema.CODEC_GROUP}/scale"])
def test_a_corrupted_int8_chunk_is_named_by_verify_and_by_the_reader(int8_cache, tmp_path, dataset):
    source, (hog, _) = int8_cache
    cache = tmp_path / "cache"
    shutil.copytree(source, cache)
    shard_set = open_clip_cache(cache, "toy").target_set(hog.spec.target_id)
    shard = shard_set.shards()[0]
    key = shard_set.keys_by_shard()[shard.name][1]
    flip_chunk(shard, dataset, 1)
    report = verify_cache(cache)
    line = f"{shard}: {dataset} row 1 ('{key}') fails its checksum"
    assert any(problem.startswith(line) for problem in report.problems), report.problems
    assert [f.kind for f in report.findings] == ["damaged"] and report.findings[0].path == shard
    reader = CacheReader(cache, "toy", targets=["hog"])
    with pytest.raises(DamagedShardError, match=re.escape(f"{shard}: damaged shard (cannot read {dataset} of clip "
                                                          f"'{key}'")):
        reader[key]


def test_verify_reports_a_codec_shard_whose_scales_are_missing(int8_cache, tmp_path):
    source, (hog, _) = int8_cache
    cache = tmp_path / "cache"
    shutil.copytree(source, cache)
    shard = open_clip_cache(cache, "toy").target_set(hog.spec.target_id).shards()[0]
    with h5py.File(shard, "r+") as handle:
        del handle[f"{schema.CODEC_GROUP}/scale"]
    report = verify_cache(cache)
    assert f"{shard}: codec 'int8' needs /codec/scale, which is missing" in report.problems


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("estimate-codec") / "synthetic"
    done = cli("synth", str(out), "--clips", "12", "--frames", "8", "--size", "64")
    assert done.returncode == 0, done.stderr
    return out


def test_estimate_with_a_codec_agrees_with_the_bytes_extract_writes(synthetic, tmp_path):
    common = ["-t", "hog", "-t", "flow:dis", "-o", "hog.codec=int8", "-o", "flow.codec=int8-half", "--frames", "4",
              "--size", "64", "--clips-per-shard", "4"]
    estimated = cli("estimate", str(synthetic), *common, "--sample", "4")
    assert estimated.returncode == 0, estimated.stderr
    total = re.search(r"total: \S+ \S+ per clip, (\S+ \S+) for 12 clips", estimated.stdout)
    assert total, estimated.stdout
    plain = cli("estimate", str(synthetic), "-t", "hog", "--frames", "4", "--size", "64", "--clips-per-shard", "4",
                "--sample", "4")
    assert plain.returncode == 0, plain.stderr
    cache = tmp_path / "cache"
    extracted = cli("extract", str(synthetic), *common, "--cache", str(cache), "--dataset", "toy")
    assert extracted.returncode == 0, extracted.stderr
    written = sum(p.stat().st_size for p in cache.rglob("shard-*.h5"))
    assert abs(parse_bytes(total.group(1)) - written) <= 0.10 * written, (total.group(1), written)
    hog_ids = re.findall(r"^\s+(hog-paper-\w+)\s+(\S+ \S+) per clip", estimated.stdout + plain.stdout, re.M)
    assert len({i for i, _ in hog_ids}) == 2  # the int8 set and the default one have different ids
    int8_id = next(t.spec.target_id for t in build_targets(["hog"], options={"hog": {"codec": "int8"}}))
    sizes = {i: parse_bytes(size) for i, size in hog_ids}
    assert sizes[int8_id] < min(size for i, size in sizes.items() if i != int8_id)


def parse_bytes(text: str) -> float:
    number, unit = text.split()
    return float(number) * {"B": 1, "KB": 1e3, "MB": 1e6, "GB": 1e9, "TB": 1e12}[unit]
