"""Pretraining data loader throughput (clips/s) on the demo synthetic cache, and lzf against
uncompressed frame shards.

1. Loader: `PretrainDataset` + `collate_pretrain` at batch 8 with the tiny preset's data settings
   (violet_core/configs/tiny.yaml: 4 frames of 64 px unless --frames / --size say otherwise, no flip),
   the demo's targets (pixel, hog, flow:dis), read
   - in-process: a plain loop, `collate([dataset[i] ...])`, no DataLoader;
   - through a DataLoader with 0, 1 and 2 worker processes (persistent workers, as `BatchStream`);
   each with the items the trainer uses now (uint8 frames, float16 targets as cached; the device
   normalises), with the old items (`cpu_normalize`: float32 video and targets, normalised per item
   in the loader) and with the items whose frames the device crops and flips (`device_augment`, as
   `data.augment_on: device`: the window's frames at the cached size). --crop trains on a crop smaller
   than the cached frames and --hflip sets the flip probability, so that the crop and flip cost
   something (the tiny preset crops nothing and never flips). A row is the median of --repeats passes of --batches batches after one
   warm-up batch; it also gives the bytes of one collated batch (what crosses the worker pipes and the
   host-to-device copy) and the CPU time `normalize_batch` and `apply_pending_crop` take on a uint8
   batch (the work that moves to the device). This process runs one torch thread (--threads), as each worker does.
2. Frame shards: the cached frames of every clip, written with h5py twice the way the store writes them
   (one chunk per clip, Fletcher-32), once lzf-compressed and once not, then read back clip by clip as
   `CacheReader` does. Two contents: the synthetic clips as cached (flat shapes: lzf compresses them
   well) and the same clips with uniform noise added (lzf cannot compress it; real video lies in
   between). The files are read right after they are written, so from the page cache: the time is
   HDF5 and decompression, not the disk.

    PYTHONPATH=. python benchmarks/bench_loader.py [--frames T --size S] [--crop C] [--hflip P] [--cache DIR]
        [--clips 64] [--batches 16] [--out benchmarks/.data/results/bench_loader.json]

The cache is made with `mvmtargets synth` and `mvmtargets extract` under --cache when it is absent, in
a child process: a DataLoader worker forked from a process that has run the extraction's OpenMP
kernels would abort. For the same reason the worker rows run before the in-process ones.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import h5py
import numpy as np
import torch
from torch.utils.data import DataLoader

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import DATA_DIR, machine, write_json  # noqa: E402

from mvm_targets.store.reader import CacheReader  # noqa: E402
from violet_core.config import load_config  # noqa: E402
from violet_core.data.device_augment import apply_pending_crop  # noqa: E402
from violet_core.data.device_batch import normalize_batch  # noqa: E402
from violet_core.data.pretrain import PretrainDataset, collate_pretrain  # noqa: E402
from violet_core.data.tokenizer import build_tokenizer  # noqa: E402
from violet_core.target_info import read_target_infos  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "violet_core" / "configs" / "tiny.yaml"
TARGETS = ("pixel", "hog", "flow:dis")
DATASET = "demo"


def ensure_cache(root: Path, clips: int, frames: int, size: int) -> None:
    """The demo's synthetic set and its cache under `root`, made by the CLI in child processes if absent."""
    if (root / "cache" / DATASET).is_dir():
        return
    extract = ["extract", str(root / "data" / "captions.csv"), "--cache", str(root / "cache"), "--dataset", DATASET,
               "--frames", str(frames), "--size", str(size)]
    for target in TARGETS:
        if target != "pixel":  # pixel is derived from the frames, never stored
            extract += ["-t", target]
    for command in (["synth", str(root / "data"), "--clips", str(clips), "--object-scale", "2"], extract):
        subprocess.run([sys.executable, "-m", "mvm_targets.cli", *command], check=True, cwd=REPO,
                       stdout=subprocess.DEVNULL)


def nbytes(value) -> int:
    if isinstance(value, torch.Tensor):
        return value.numel() * value.element_size()
    if isinstance(value, dict):
        return sum(nbytes(v) for v in value.values())
    return 0


# item kinds: what the trainer uses now, the old float32 items, frames cropped and flipped on the device
KINDS = {"uint8": {}, "float32": {"cpu_normalize": True}, "uint8-dev": {"device_augment": True}}


class Loaders:
    """The kinds of item (KINDS) over the same clips and draws."""

    def __init__(self, root: Path, batch: int, frames: int, size: int, hflip: float) -> None:
        data = load_config(TINY).data
        self.batch = batch
        reader = CacheReader(root / "cache", DATASET, list(TARGETS))
        self.reader = reader
        tokenizer = build_tokenizer(None, [c for cs in reader.captions.values() for c in cs], vocab_size=500)
        self.sets = {
            path: PretrainDataset(reader, read_target_infos(reader, list(TARGETS)), tokenizer, reader.keys,
                                  frames, size, data.max_text_len, hflip, data.random_crop, seed=0, **options)
            for path, options in KINDS.items()}

    def batches(self, path: str, workers: int | None):
        """Endless batches of one kind: `workers` None is the plain in-process loop."""
        dataset = self.sets[path]
        order = list(range(len(dataset) // self.batch * self.batch))
        groups = [order[i:i + self.batch] for i in range(0, len(order), self.batch)]
        if workers is None:
            while True:
                for group in groups:
                    yield collate_pretrain([dataset[i] for i in group])
        loader = DataLoader(dataset, batch_sampler=_Cycle(groups), collate_fn=collate_pretrain, num_workers=workers,
                            persistent_workers=workers > 0)
        yield from loader


class _Cycle:
    def __init__(self, groups: list[list[int]]) -> None:
        self.groups = groups

    def __iter__(self):
        while True:
            yield from self.groups


def time_loader(loaders: Loaders, path: str, workers: int | None, batches: int, repeats: int) -> dict:
    stream = loaders.batches(path, workers)
    first = next(stream)  # warm-up: worker start, shard files opened
    rates = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(batches):
            next(stream)
        rates.append(batches * loaders.batch / (time.perf_counter() - start))
    stream.close()  # shuts the workers down
    label = "in-process" if workers is None else f"DataLoader, {workers} workers"
    return {"loader": label, "workers": workers, "items": path, "clips_per_s": statistics.median(rates),
            "clips_per_s_all": rates, "batch_mb": nbytes(first) / 2**20}


def time_on_device_work(loaders: Loaders, path: str, work, repeats: int = 20) -> float:
    """Median CPU seconds of `work` on one batch of `path` items (what the device does per step)."""
    dataset = loaders.sets[path]
    batch = collate_pretrain([dataset[i] for i in range(loaders.batch)])
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        work(batch)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def time_shards(reader: CacheReader, noise: bool, repeats: int) -> list[dict]:
    """Read every clip's frames from an lzf and an uncompressed copy written as the store writes them."""
    clips = np.stack([reader[key]["frames"] for key in reader.keys])  # (N, T, S, S, 3) uint8
    if noise:
        rng = np.random.default_rng(0)
        clips = np.clip(clips.astype(np.int16) + rng.integers(-40, 41, clips.shape), 0, 255).astype(np.uint8)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for compression in ("lzf", None):
            path = Path(tmp) / f"frames-{compression or 'none'}.h5"
            with h5py.File(path, "w") as handle:
                handle.create_dataset("data", data=clips, chunks=(1, *clips.shape[1:]), compression=compression,
                                      fletcher32=True)
            rates = []
            with h5py.File(path, "r") as handle:
                for _ in range(repeats):
                    start = time.perf_counter()
                    for row in range(len(clips)):
                        handle["data"][row]
                    rates.append(len(clips) / (time.perf_counter() - start))
            rate = statistics.median(rates)
            rows.append({"content": "synthetic + noise" if noise else "synthetic", "compression": compression or "none",
                         "clips": len(clips), "file_mb": path.stat().st_size / 2**20,
                         "raw_mb": clips.nbytes / 2**20, "clips_per_s": rate,
                         "mb_per_s": rate * clips[0].nbytes / 2**20, "clips_per_s_all": rates})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cache", type=Path, default=None,
                        help="folder with data/ and cache/ of the demo set, made there when absent "
                             "(default: benchmarks/.data/loader/t{frames}-s{size})")
    parser.add_argument("--frames", type=int, default=None, help="frames per clip (default: the tiny preset's)")
    parser.add_argument("--size", type=int, default=None, help="cached frame size in px (default: the tiny preset's)")
    parser.add_argument("--crop", type=int, default=None, help="training crop in px (default: --size, no crop)")
    parser.add_argument("--hflip", type=float, default=None, help="flip probability (default: the tiny preset's)")
    parser.add_argument("--clips", type=int, default=64, help="clips to synthesise when the cache is made")
    parser.add_argument("--batch", type=int, default=8, help="clips per batch")
    parser.add_argument("--batches", type=int, default=16, help="timed batches per pass")
    parser.add_argument("--repeats", type=int, default=3, help="timed passes per row (the median is reported)")
    parser.add_argument("--out", type=Path, default=DATA_DIR / "results" / "bench_loader.json")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads of this process (DataLoader workers run one each)")
    args = parser.parse_args()
    # one thread, as in a worker: on a busy 2-core machine spinning OpenMP threads stall every small op
    torch.set_num_threads(args.threads)
    config = load_config(TINY)
    frames, size = args.frames or config.data.num_frames, args.size or config.data.size
    cache = args.cache or DATA_DIR / "loader" / f"t{frames}-s{size}"
    ensure_cache(cache, args.clips, frames, size)
    crop = args.crop or size
    hflip = config.data.hflip_prob if args.hflip is None else args.hflip
    loaders = Loaders(cache, args.batch, frames, crop, hflip)
    load_before = os.getloadavg()[0]
    print(f"load average {load_before:.2f}; {len(loaders.reader.keys)} clips of {frames} frames at "
          f"{size} px, crop {crop} px, targets {', '.join(TARGETS)}, hflip {hflip}, batch {args.batch}; "
          f"torch {torch.__version__}, h5py {h5py.__version__}, {torch.get_num_threads()} threads", flush=True)

    rows = []
    print(f"{'loader':<26}{'items':<9}{'clips/s':>10}{'MB/batch':>10}", flush=True)
    for workers in (2, 1, 0, None):  # workers first: nothing has run OpenMP kernels in this process yet
        for path in KINDS:
            row = time_loader(loaders, path, workers, args.batches, args.repeats)
            rows.append(row)
            print(f"{row['loader']:<26}{path:<9}{row['clips_per_s']:>10.0f}{row['batch_mb']:>10.3f}", flush=True)
    normalise_s = time_on_device_work(loaders, "uint8", normalize_batch)
    print(f"normalize_batch of one uint8 batch on this CPU: {normalise_s * 1e3:.2f} ms", flush=True)
    augment_s = time_on_device_work(loaders, "uint8-dev", apply_pending_crop)
    print(f"apply_pending_crop of one batch on this CPU: {augment_s * 1e3:.2f} ms", flush=True)

    shards = time_shards(loaders.reader, False, args.repeats) + time_shards(loaders.reader, True, args.repeats)
    print(f"{'frames content':<20}{'shard':<7}{'MB file':>9}{'MB raw':>9}{'clips/s':>10}{'MB/s':>9}", flush=True)
    for row in shards:
        print(f"{row['content']:<20}{row['compression']:<7}{row['file_mb']:>9.2f}{row['raw_mb']:>9.2f}"
              f"{row['clips_per_s']:>10.0f}{row['mb_per_s']:>9.0f}", flush=True)
    write_json(str(args.out), {
        "frames": frames, "size": size, "crop": crop, "hflip_prob": hflip,
        "targets": list(TARGETS), "batch": args.batch, "batches": args.batches, "repeats": args.repeats,
        "clips": len(loaders.reader.keys), "torch": torch.__version__, "h5py": h5py.__version__,
        "numpy": np.__version__, "threads": torch.get_num_threads(), "load_before": load_before,
        "load_after": os.getloadavg()[0], "loader": rows, "normalize_batch_cpu_s": normalise_s,
        "apply_pending_crop_cpu_s": augment_s, "shards": shards})
    print(f"wrote {args.out} ({machine()['cpu']})")


if __name__ == "__main__":
    main()
