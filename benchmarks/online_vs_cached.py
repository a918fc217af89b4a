"""Training-step time with each MVM target cached against the same target online (`mvm.source`).

For each target, in the same process, on the same clips and with the same model settings (the tiny
preset, violet_core/configs/tiny.yaml, at its 4 frames of 64 x 64):
- `cached`: the item reads the stored target from the shard store and augments it with the frames;
- `online`: the item carries only the augmented frames, and `OnlineTargets.fill` computes the target
  per clip inside the step (violet_core/online_targets.py, docs/method.md §11).
A step is what the trainer's loop times with `data.num_workers: 0`: building the batch (items,
collate, the online targets) and one optimisation step (forward, backward, AdamW). The two sources
alternate step by step, so load on a shared machine affects both alike; the first `--warmup` steps
of each are not counted. The table gives the mean step time of each and their ratio online / cached.

    PYTHONPATH=. python benchmarks/online_vs_cached.py [--targets hog pixel flow:dis] [--steps 10]
        [--batch 8] [--out benchmarks/.data/results/online_vs_cached]

On a busy machine, set OMP_WAIT_POLICY=PASSIVE: spinning OpenMP threads (numba's kernels and
torch's) otherwise contend on few cores and step times vary several-fold between runs.
Writes `online_vs_cached.json` and `online_vs_cached.csv` under --out. Only weights-free targets by
default: a teacher's online cost depends on the device it runs on (bench_train_step.py times them).
"""

from __future__ import annotations

import argparse
import csv
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import DATA_DIR, machine, write_json  # noqa: E402

from mvm_targets.extract import ExtractConfig, extract  # noqa: E402
from mvm_targets.store.reader import CacheReader  # noqa: E402
from mvm_targets.synth import build_synthetic_dataset  # noqa: E402
from mvm_targets.targets.build import build_targets  # noqa: E402
from mvm_targets.targets.registry import derived_spec  # noqa: E402
from mvm_targets.video.decode import SamplingConfig  # noqa: E402
from mvm_targets.video.inputs import discover_inputs  # noqa: E402
from violet_core.config import RunConfig, load_config  # noqa: E402
from violet_core.data.device_batch import to_device  # noqa: E402
from violet_core.data.pretrain import PretrainDataset, collate_pretrain  # noqa: E402
from violet_core.data.tokenizer import build_tokenizer  # noqa: E402
from violet_core.loop import autocast  # noqa: E402
from violet_core.masking import MaskSampler  # noqa: E402
from violet_core.model import Violet  # noqa: E402
from violet_core.objectives import PretrainObjective  # noqa: E402
from violet_core.online_targets import OnlineTargets  # noqa: E402
from violet_core.optim import build_optimizer  # noqa: E402
from violet_core.target_info import read_target_infos  # noqa: E402

TINY = Path(__file__).resolve().parents[1] / "violet_core" / "configs" / "tiny.yaml"
DEFAULT_TARGETS = ("hog", "pixel", "flow:dis")


class Source:
    """One target read one way: its dataset, a freshly seeded model, optimizer and mask stream."""

    def __init__(self, config: RunConfig, reader: CacheReader, infos: list, tokenizer, online: OnlineTargets | None,
                 batch: int) -> None:
        data = config.data
        self.dataset = PretrainDataset(reader, infos, tokenizer, reader.keys, data.num_frames, data.size,
                                       data.max_text_len, data.hflip_prob, data.random_crop, seed=config.seed)
        torch.manual_seed(config.seed)  # both sources start from the same weights
        self.model = Violet(config.model, tokenizer.vocab_size, data.max_text_len, infos)
        sampler = MaskSampler(config.mask.strategies, config.mask.ratio, config.mask.text_ratio)
        self.objective = PretrainObjective(self.model, sampler, tokenizer.mask_id, config.pretrain.vtm_negatives,
                                           config.pretrain.temperature, config.mvm.weight)
        self.optimizer = build_optimizer(self.model, config.pretrain.optim)
        self.generator = torch.Generator().manual_seed(config.seed)
        self.online, self.batch, self.tokenizer = online, batch, tokenizer

    def step(self, index: int) -> float:
        """Seconds for batch `index`: items, collate, online targets, forward, backward, optimizer."""
        start = time.perf_counter()
        items = [self.dataset[(index * self.batch + i) % len(self.dataset)] for i in range(self.batch)]
        batch = collate_pretrain(items)
        if self.online is not None:
            batch = self.online.fill(batch)  # outside autocast, as the trainer does
        batch = to_device(batch, torch.device("cpu"))  # uint8 frames normalised as the trainer's stream does
        with autocast(torch.device("cpu"), "auto"):
            losses = self.objective(batch, self.generator, self.tokenizer.special_mask(batch["text_ids"]))
        self.optimizer.zero_grad(set_to_none=True)
        losses["loss"].backward()
        self.optimizer.step()
        return time.perf_counter() - start


def build_cache(root: Path, refs: list[str], config: RunConfig, clips: int) -> None:
    """Synthetic clips with the stored targets of `refs` at the tiny preset's T and S."""
    build_synthetic_dataset(root / "data", clips=clips, seed=0, num_frames=8, size=max(config.data.size, 64), fps=8)
    stored = [ref for ref in refs if derived_spec(ref) is None]
    extract(discover_inputs([root / "data" / "captions.csv"]), build_targets(stored),
            ExtractConfig(cache_root=root / "cache", dataset="synthetic", batch_size=8,
                          sampling=SamplingConfig(num_frames=config.data.num_frames, size=config.data.size)))


def measure(config: RunConfig, root: Path, ref: str, tokenizer, steps: int, warmup: int, batch: int) -> dict:
    cached_reader = CacheReader(root / "cache", "synthetic", [ref])
    frames_reader = CacheReader(root / "cache", "synthetic", [])
    online = OnlineTargets([ref], {"device": "cpu"}, {}, config.data.num_frames, config.data.size)
    sources = {"cached": Source(config, cached_reader, read_target_infos(cached_reader, [ref]), tokenizer, None,
                                batch),
               "online": Source(config, frames_reader, online.infos, tokenizer, online, batch)}
    times: dict[str, list[float]] = {name: [] for name in sources}
    for index in range(warmup + steps):
        for name, source in sources.items():  # alternating: a busy moment slows both
            seconds = source.step(index)
            if index >= warmup:
                times[name].append(seconds)
    cached, online_s = statistics.mean(times["cached"]), statistics.mean(times["online"])
    row = {"target": ref, "cached_s": cached, "online_s": online_s, "ratio": online_s / cached, "steps": steps}
    for name, values in times.items():
        row[f"{name}_median_s"] = statistics.median(values)
        row[f"{name}_sd"] = statistics.stdev(values) if len(values) > 1 else 0.0
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--targets", nargs="+", default=list(DEFAULT_TARGETS))
    parser.add_argument("--steps", type=int, default=8, help="timed steps per source and target")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps per source first")
    parser.add_argument("--batch", type=int, default=8, help="clips per step (the tiny preset's batch)")
    parser.add_argument("--clips", type=int, default=16)
    parser.add_argument("--out", type=Path, default=DATA_DIR / "results" / "online_vs_cached")
    args = parser.parse_args()
    config = load_config(TINY)
    load_before = os.getloadavg()[0]
    print(f"load average {load_before:.2f}; tiny preset ({config.data.num_frames} frames of {config.data.size} px, "
          f"hflip {config.data.hflip_prob}), batch {args.batch}, {args.steps} steps after {args.warmup}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads", flush=True)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        build_cache(root, args.targets, config, args.clips)
        frames = CacheReader(root / "cache", "synthetic", [])
        tokenizer = build_tokenizer(None, [c for cs in frames.captions.values() for c in cs], vocab_size=500)
        print(f"{'target':<12}{'cached s':>10}{'online s':>10}{'online/cached':>15}", flush=True)
        for ref in args.targets:
            row = measure(config, root, ref, tokenizer, args.steps, args.warmup, args.batch)
            rows.append(row)
            print(f"{ref:<12}{row['cached_s']:>10.3f}{row['online_s']:>10.3f}{row['ratio']:>15.2f}", flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    write_json(str(args.out / "online_vs_cached.json"),
               {"preset": "tiny", "frames": config.data.num_frames, "size": config.data.size, "batch": args.batch,
                "device": "cpu", "threads": torch.get_num_threads(), "torch": torch.__version__,
                "load_before": load_before, "load_after": os.getloadavg()[0], "rows": rows})
    with open(args.out / "online_vs_cached.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    print(f"wrote {args.out / 'online_vs_cached.json'} and .csv ({machine()['cpu']})")


if __name__ == "__main__":
    main()
