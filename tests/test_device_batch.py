"""uint8 frames to the device, normalised there (violet_core.data.device_batch, docs/method.md §1).

- the device's normalisation is bit-identical to the float32 formula the dataset used to apply per item
  (the oracle: that formula written out here, in torch as it was and in numpy float32);
- a dataset item and batch carry uint8 frames and stored-dtype targets, and `to_device` of them equals the
  old CPU-normalised batch, field by field (`cpu_normalize=True`, the old path kept for comparison);
- `BatchStream` with worker processes yields the batches of the in-process stream, keeps its workers for
  the whole run, and continues exactly from a state taken while its loader had read ahead;
- the device's crop and flip of a batch are each item's numpy slices (the oracle), and batches whose
  frames are cropped and flipped on the device equal those the loader crops and flips, field by field;
- a tiny run (pretraining with pixel, hog and DIS flow targets, a retrieval finetune and its evaluation)
  logs the same numbers with the normalisation on the device as with the old per-item CPU path, the
  same again with the crop and flip on the device, and the numbers recorded from the trainer before
  the change.
"""

from __future__ import annotations

import functools
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from mvm_targets.extract import ExtractConfig, extract
from mvm_targets.store.reader import CacheReader
from mvm_targets.synth import build_synthetic_dataset
from mvm_targets.targets.registry import build_target
from mvm_targets.video.decode import SamplingConfig
from mvm_targets.video.inputs import discover_inputs
from violet_core.batching import BatchStream
from violet_core.data.device_augment import PENDING_CROP, crop_and_flip
from violet_core.data.device_batch import (AS_INPUT, DevicePrefetcher, normalize_batch, normalize_channels_first,
                                           normalize_video, to_device)
from violet_core.data.pretrain import PretrainDataset, collate_pretrain
from violet_core.data.tokenizer import build_tokenizer
from violet_core.distributed import Dist
from violet_core.target_info import read_target_infos
from tests.epoch_items import EpochIndexItems, collate_epoch_items

REFS = ["pixel", "hog", "flow:dis"]
CPU = torch.device("cpu")
REPO = Path(__file__).resolve().parents[1]
RUN_TIMEOUT_S = 240  # one tiny run on a loaded 2-core machine takes about 10 s, most of it imports


def old_formula_torch(frames: np.ndarray) -> torch.Tensor:
    """(T, S, S, 3) uint8 -> (T, 3, S, S) float32: the per-item normalisation the dataset applied before."""
    mean = torch.tensor((0.485, 0.456, 0.406), dtype=torch.float32).view(1, 3, 1, 1)
    std = torch.tensor((0.229, 0.224, 0.225), dtype=torch.float32).view(1, 3, 1, 1)
    video = torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2).to(torch.float32) / 255.0
    return ((video - mean) / std).contiguous()


def old_formula_numpy(frames: np.ndarray) -> np.ndarray:
    """The same in numpy float32 (each operation correctly rounded, as torch's): (T, 3, S, S)."""
    mean = np.array([0.485, 0.456, 0.406], np.float32)
    std = np.array([0.229, 0.224, 0.225], np.float32)
    return ((frames.astype(np.float32) / np.float32(255.0) - mean) / std).transpose(0, 3, 1, 2)


def every_value_frames(seed: int = 0) -> np.ndarray:
    """(4, 32, 32, 3) uint8 holding each of the 256 values in each channel, in shuffled places."""
    rng = np.random.default_rng(seed)
    flat = np.stack([rng.permutation(np.arange(4 * 32 * 32) % 256) for _ in range(3)], axis=-1)
    return flat.reshape(4, 32, 32, 3).astype(np.uint8)


# ---- the normalisation ---------------------------------------------------------------------------

def test_device_normalisation_is_bit_identical_to_the_old_cpu_formula():
    frames = every_value_frames()
    got = normalize_video(torch.from_numpy(frames))
    assert got.dtype == torch.float32 and got.shape == (4, 3, 32, 32) and got.is_contiguous()
    assert torch.equal(got, old_formula_torch(frames))
    assert np.array_equal(got.numpy(), old_formula_numpy(frames))
    # a whole batch (B, T, S, S, 3) at once: each clip as on its own
    batch = np.stack([frames, every_value_frames(1)])
    together = normalize_video(torch.from_numpy(batch))
    assert together.shape == (2, 4, 3, 32, 32)
    assert all(torch.equal(together[i], old_formula_torch(batch[i])) for i in range(2))
    # channels first (a target made of the frames): the same numbers
    channels_first = torch.from_numpy(np.ascontiguousarray(frames.transpose(0, 3, 1, 2)))
    assert torch.equal(normalize_channels_first(channels_first), old_formula_torch(frames))


def test_normalize_batch_converts_what_it_must_and_nothing_else():
    frames = every_value_frames()
    video = torch.from_numpy(np.stack([frames, frames[::-1].copy()]))  # (2, 4, 32, 32, 3)
    half = torch.tensor([[0.1, -2.5, 65504.0]], dtype=torch.float16).expand(2, 3)
    ids = torch.tensor([[3, 8191], [0, 7]], dtype=torch.int64)
    wide = torch.randn(2, 5)
    batch = {"video": video, "text_ids": ids.clone(), AS_INPUT: ["frames_again"],
             "targets": {"frames_again": video.permute(0, 1, 4, 2, 3).contiguous(), "half": half, "ids": ids,
                         "wide": wide},
             "extras": {"e": torch.ones(2, 3)}, "keys": ["a", "b"]}
    ready = normalize_batch(batch)
    assert torch.equal(ready["video"][1], old_formula_torch(frames[::-1]))
    assert torch.equal(ready["targets"]["frames_again"], ready["video"])
    assert ready["targets"]["frames_again"].data_ptr() != ready["video"].data_ptr()  # the video is masked in place
    assert ready["targets"]["half"].dtype == torch.float32
    assert ready["targets"]["half"].tolist() == [[float(np.float16(v)) for v in (0.1, -2.5, 65504.0)]] * 2
    assert ready["targets"]["ids"] is ids and ready["targets"]["wide"] is wide and ready["keys"] == ["a", "b"]
    assert AS_INPUT not in ready and batch["video"] is video  # a new dict; the input is left as it was
    again = normalize_batch(ready)  # normalised already: nothing changes
    assert again["video"] is ready["video"] and again["targets"]["frames_again"] is ready["targets"]["frames_again"]


def test_prefetcher_on_the_cpu_hands_the_batches_over_as_they_come():
    batches = [{"video": torch.full((1, 2), i)} for i in range(3)]
    got = list(DevicePrefetcher(iter(batches), CPU))
    assert [b["video"].tolist() for b in got] == [[[0, 0]], [[1, 1]], [[2, 2]]]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_prefetcher_on_cuda_copies_ahead_and_normalises_to_the_cpu_bits():
    frames = [every_value_frames(seed) for seed in range(4)]
    host = ({"video": torch.from_numpy(f[None]).pin_memory()} for f in frames)
    prefetcher = DevicePrefetcher(host, torch.device("cuda"))
    for f in frames:
        batch = next(prefetcher)
        assert batch["video"].is_cuda
        assert torch.equal(normalize_video(batch["video"]).cpu()[0], old_formula_torch(f))
    with pytest.raises(StopIteration):
        next(prefetcher)


# ---- the dataset's items and batches -------------------------------------------------------------

@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Path:
    """12 synthetic clips (8 training clips) with frames, hog and DIS flow cached at 4 frames of 64 px,
    by the functions behind `mvmtargets synth` and `mvmtargets extract`."""
    root = tmp_path_factory.mktemp("device_batch")
    build_synthetic_dataset(root / "data", clips=12, seed=0, num_frames=8, size=64, object_scale=2.0)
    extract(discover_inputs([root / "data" / "captions.csv"]), [build_target(ref) for ref in REFS],
            ExtractConfig(cache_root=root / "cache", dataset="synthetic", batch_size=8,
                          sampling=SamplingConfig(num_frames=4, size=64)))
    return root


def datasets(root: Path, **options) -> tuple[PretrainDataset, PretrainDataset]:
    """(uint8 items, the old CPU-normalised items) of the same clips and draws."""
    reader = CacheReader(root / "cache", "synthetic", REFS)
    tokenizer = build_tokenizer(None, [c for cs in reader.captions.values() for c in cs], vocab_size=200)
    make = functools.partial(PretrainDataset, reader, read_target_infos(reader, REFS), tokenizer, reader.keys,
                             3, 32, 16, hflip_prob=0.5, seed=4, **options)
    return make(), make(cpu_normalize=True)


def test_uint8_batches_on_the_device_equal_the_old_cpu_normalised_batches(workspace):
    uint8, old = datasets(workspace)
    indices = list(range(len(uint8)))
    assert {uint8[i]["aug"]["flip"] for i in indices} == {0, 1}  # both branches of the flip are in the batch
    item = uint8[0]
    assert item["video"].dtype == torch.uint8 and item["video"].shape == (3, 32, 32, 3)
    assert item["targets"]["pixel"].dtype == torch.uint8 and item["targets"]["hog"].dtype == torch.float16
    assert old[0]["video"].dtype == torch.float32 and old[0]["video"].element_size() == 4 * item["video"].element_size()
    batch = collate_pretrain([uint8[i] for i in indices])
    reference = collate_pretrain([old[i] for i in indices])
    assert batch[AS_INPUT] == ["pixel"] and reference[AS_INPUT] == []
    ready = to_device(batch, CPU)
    assert set(ready) == set(reference) - {AS_INPUT}
    for field in ("video", "text_ids", "text_mask"):
        assert ready[field].dtype == reference[field].dtype and torch.equal(ready[field], reference[field]), field
    for group in ("targets", "extras", "aug"):
        assert ready[group].keys() == reference[group].keys()
        for name, value in reference[group].items():
            assert ready[group][name].dtype == value.dtype and torch.equal(ready[group][name], value), (group, name)
    assert ready["keys"] == reference["keys"]
    # the pixel target is the frames, normalised with the same bits as the video
    assert torch.equal(ready["targets"]["pixel"], ready["video"])


def test_the_device_crop_and_flip_are_the_numpy_slices_of_each_items_draw():
    rng = np.random.default_rng(3)
    frames = rng.integers(0, 256, size=(5, 2, 128, 96, 3), dtype=np.uint8)
    top, left, flip = np.array([0, 1, 2, 0, 1]), np.array([0, 1, 0, 1, 0]), np.array([0, 1, 1, 0, 1])
    out = crop_and_flip(torch.from_numpy(frames), torch.from_numpy(top), torch.from_numpy(left),
                        torch.from_numpy(flip), 64)
    assert out.shape == (5, 2, 64, 64, 3) and out.dtype == torch.uint8
    for b in range(5):
        expected = frames[b, :, 32 * top[b]:32 * top[b] + 64, 32 * left[b]:32 * left[b] + 64]
        if flip[b]:
            expected = expected[:, :, ::-1]
        assert np.array_equal(out[b].numpy(), expected), b
    whole = crop_and_flip(torch.from_numpy(frames[:, :, :96]), torch.zeros(5), torch.zeros(5), torch.zeros(5), 96)
    assert np.array_equal(whole.numpy(), frames[:, :, :96])
    with pytest.raises(ValueError, match="multiple of 32"):
        crop_and_flip(torch.from_numpy(frames), torch.zeros(5), torch.zeros(5), torch.zeros(5), 48)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_the_crop_and_flip_on_cuda_are_the_numpy_slices():
    rng = np.random.default_rng(5)
    frames = rng.integers(0, 256, size=(4, 3, 96, 96, 3), dtype=np.uint8)
    top, left, flip = (torch.tensor(v) for v in ([0, 1, 0, 1], [1, 0, 0, 1], [1, 1, 0, 0]))
    out = crop_and_flip(torch.from_numpy(frames).cuda(), top.cuda(), left.cuda(), flip.cuda(), 64).cpu().numpy()
    for b in range(4):
        expected = frames[b, :, 32 * int(top[b]):32 * int(top[b]) + 64, 32 * int(left[b]):32 * int(left[b]) + 64]
        assert np.array_equal(out[b], expected[:, :, ::-1] if flip[b] else expected), b


def test_batches_cropped_and_flipped_on_the_device_equal_the_loaders(workspace):
    reader = CacheReader(workspace / "cache", "synthetic", REFS)
    tokenizer = build_tokenizer(None, [c for cs in reader.captions.values() for c in cs], vocab_size=200)
    make = functools.partial(PretrainDataset, reader, read_target_infos(reader, REFS), tokenizer, reader.keys,
                             3, 32, 16, hflip_prob=0.5, seed=4)
    loader_side, device_side = make(), make(device_augment=True)
    indices = list(range(len(loader_side)))
    items = [device_side[i] for i in indices]
    assert items[0]["video"].shape == (3, 64, 64, 3)  # the window at the cached size, not yet cropped
    draws = {(item["aug"]["top"], item["aug"]["left"], item["aug"]["flip"]) for item in items}
    assert {d[2] for d in draws} == {0, 1} and len({d[:2] for d in draws}) > 1  # crops and both flips
    batch = to_device(collate_pretrain(items), CPU)
    reference = to_device(collate_pretrain([loader_side[i] for i in indices]), CPU)
    assert PENDING_CROP not in batch and set(batch) == set(reference)
    assert torch.equal(batch["video"], reference["video"])
    for group in ("targets", "extras", "aug"):
        assert batch[group].keys() == reference[group].keys()
        for name, value in reference[group].items():
            assert torch.equal(batch[group][name], value), (group, name)
    with pytest.raises(ValueError, match="device_augment"):
        make(device_augment=True, cpu_normalize=True)


def test_the_stream_crops_and_flips_before_online_targets_see_the_clip(workspace):
    reader = CacheReader(workspace / "cache", "synthetic", REFS)
    tokenizer = build_tokenizer(None, [c for cs in reader.captions.values() for c in cs], vocab_size=200)
    make = functools.partial(PretrainDataset, reader, read_target_infos(reader, REFS), tokenizer, reader.keys,
                             3, 32, 16, hflip_prob=0.5, seed=4)
    seen: dict[str, list[torch.Tensor]] = {"loader": [], "device": []}

    def recorder(place: str):
        def fill(batch: dict) -> dict:  # what an online target is given: the uint8 clip as trained on
            seen[place].append(batch["video"].clone())
            return batch
        return fill

    for place, dataset in (("loader", make()), ("device", make(device_augment=True))):
        stream = BatchStream(dataset, collate_pretrain, 4, seed=1, dist=Dist(), device=CPU, fill=recorder(place))
        for _ in range(4):
            next(stream)
    assert all(v.dtype == torch.uint8 and v.shape == (4, 3, 32, 32, 3) for v in seen["device"])
    assert all(torch.equal(a, b) for a, b in zip(seen["loader"], seen["device"]))


# ---- the stream ----------------------------------------------------------------------------------

def _stream(workers: int) -> BatchStream:
    return BatchStream(EpochIndexItems(11), collate_epoch_items, 3, seed=5, dist=Dist(), device=CPU, num_workers=workers)


@pytest.mark.parametrize("workers", [1, 2])
def test_worker_stream_equals_the_in_process_one_and_keeps_its_workers(workers):
    in_process = _stream(0)
    expected = [next(in_process)["video"].tolist() for _ in range(10)]  # 3 batches an epoch: 4 epochs
    stream = _stream(workers)
    batches = [next(stream) for _ in range(10)]
    assert [b["video"].tolist() for b in batches] == expected
    pids = {pid for b in batches for pid in b["pids"]}
    assert os.getpid() not in pids and len(pids) <= workers  # forked once, not once an epoch


@pytest.mark.parametrize("split_at", [1, 3, 5])
def test_worker_stream_resumes_at_its_position_not_where_its_loader_read_to(split_at):
    in_process = _stream(0)
    expected = [next(in_process)["video"].tolist() for _ in range(9)]
    first = _stream(2)
    head = [next(first)["video"].tolist() for _ in range(split_at)]  # the workers have read further
    buffer = io.BytesIO()
    torch.save(first.state_dict(), buffer)
    buffer.seek(0)
    second = _stream(2)
    second.load_state_dict(torch.load(buffer, weights_only=True))
    assert head + [next(second)["video"].tolist() for _ in range(9 - split_at)] == expected
    # a state loaded into a stream that is running: it goes back, with the same workers
    first.load_state_dict(torch.load(io.BytesIO(buffer.getvalue()), weights_only=True))
    assert [next(first)["video"].tolist() for _ in range(9 - split_at)] == expected[split_at:]


# ---- a tiny run: the same numbers ----------------------------------------------------------------

# metrics.jsonl of the run below (a subset of its fields), written by the trainer before the normalisation
# moved to the device (the dataset normalised each item's video and pixel target to float32), on a 2-vCPU
# Intel Xeon virtual machine, torch 2.13.0+cpu, one torch thread.
RECORDED = [
    {"phase": "pretrain", "step": 1, "loss": 11.287030220031738, "mlm": 5.337928771972656, "vtm": 4.047306537628174,
     "mvm_pixel": 0.873826265335083, "mvm_hog": 0.4753555655479431, "mvm_flow_dis": 0.5526143908500671,
     "grad_norm": 74.80159759521484},
    {"phase": "pretrain", "step": 2, "loss": 10.49787425994873, "mlm": 5.354824542999268, "vtm": 3.261139392852783,
     "mvm_pixel": 0.8181176781654358, "mvm_hog": 0.48695898056030273, "mvm_flow_dis": 0.5768328905105591,
     "grad_norm": 70.21373748779297},
    {"phase": "pretrain", "step": 3, "loss": 9.115503311157227, "mlm": 5.428345680236816, "vtm": 1.6660616397857666,
     "mvm_pixel": 0.8865736126899719, "mvm_hog": 0.45062100887298584, "mvm_flow_dis": 0.6839013695716858,
     "grad_norm": 56.01206588745117},
    {"phase": "pretrain", "step": 4, "loss": 9.110980033874512, "mlm": 5.280438423156738, "vtm": 1.98614501953125,
     "mvm_pixel": 0.7817991375923157, "mvm_hog": 0.42641472816467285, "mvm_flow_dis": 0.636182427406311,
     "grad_norm": 59.17661666870117},
    {"phase": "pretrain", "step": 5, "loss": 9.553091049194336, "mlm": 5.165335655212402, "vtm": 2.6508541107177734,
     "mvm_pixel": 0.7379803657531738, "mvm_hog": 0.41601574420928955, "mvm_flow_dis": 0.5829043388366699,
     "grad_norm": 53.820777893066406},
    {"phase": "retrieval", "step": 1, "loss": 2.9194560050964355, "grad_norm": 67.66813659667969},
    {"phase": "retrieval", "step": 2, "loss": 2.121645927429199, "grad_norm": 50.5262336730957},
    {"phase": "retrieval", "step": 2, "split": "eval", "retrieval/R@1": 50.0, "retrieval/MnR": 1.5},
]


def run_config(root: Path, augment_on: str = "loader") -> Path:
    """5 pretraining steps (8 training clips, batch 4: 2 batches an epoch, so 3 epochs) with a random
    3-frame window, 32-px crop of 64 and flip; one worker process, so that hog, recomputed on flipped
    clips, runs outside the training process (its OpenMP layer changes the trainer's thread count)."""
    config = {
        "name": "curve", "seed": 0, "device": "cpu", "out_dir": str(root / "runs"),
        "data": {"cache": str(root / "cache"), "dataset": "synthetic", "source": str(root / "data"),
                 "num_frames": 3, "size": 32, "max_text_len": 16, "hflip_prob": 0.5, "vocab_size": 200,
                 "num_workers": 1, "augment_on": augment_on},
        "model": {"video_backbone": "tiny", "hidden": 32, "layers": 1, "heads": 2, "intermediate": 64},
        "mask": {"strategies": ["rm", "bm"]},
        "mvm": {"targets": REFS},
        "pretrain": {"optim": {"steps": 5, "batch_size": 4, "lr": 1e-3}, "log_every": 1, "checkpoint_every": 0},
        "downstream": {"tasks": ["retrieval"], "eval_batch_size": 4,
                       "optim": {"steps": 2, "batch_size": 4, "lr": 1e-3}},
    }
    path = root / f"curve-{augment_on}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def logged(run: Path) -> list[dict]:
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in line.items() if k != "step_s"} for line in lines]


# One run in a fresh process: this one has run the extraction's OpenMP kernels, and a DataLoader worker
# forked from it would abort. "cpu" trains on the old CPU-normalised items; "augment" crops and flips
# the frames on the device (data.augment_on: device).
RUN = """
import functools, sys, torch
from violet_core import train
from violet_core.data.pretrain import PretrainDataset
torch.set_num_threads(1)
if sys.argv[3] == "cpu":
    train.PretrainDataset = functools.partial(PretrainDataset, cpu_normalize=True)
train.train(sys.argv[1], sys.argv[2])
"""


def test_a_tiny_run_logs_the_numbers_of_the_cpu_normalised_path_with_either_augmentation_place(workspace):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    for path in ("device", "cpu", "augment"):
        config = run_config(workspace, "device" if path == "augment" else "loader")
        done = subprocess.run([sys.executable, "-c", RUN, str(config), str(workspace / "runs" / path), path],
                              cwd=REPO, env=env, capture_output=True, text=True, timeout=RUN_TIMEOUT_S)
        assert done.returncode == 0, done.stderr[-3000:]
    on_device, on_cpu = logged(workspace / "runs" / "device"), logged(workspace / "runs" / "cpu")
    assert on_device == on_cpu  # bit for bit: every loss, gradient norm and metric
    # the same data with the crop and flip on the device: the same loss curve, bit for bit
    assert logged(workspace / "runs" / "augment") == on_device
    assert len(on_device) == len(RECORDED)
    for line, recorded in zip(on_device, RECORDED):
        for name, value in recorded.items():
            if isinstance(value, str):
                assert line[name] == value, (line, name)
                continue
            if name.startswith("retrieval/"):  # ranks of 2 videos: a rounding difference could swap them
                continue
            # recorded on one machine: another CPU (AVX2 against AVX-512 kernels) sums float32 in another
            # order, and five steps amplify that; a changed input pipeline moves these by far more than 1e-3
            assert line[name] == pytest.approx(value, rel=1e-3), (line, name)
