"""One run: pretrain VIOLET on cached frames and targets, then finetune and evaluate downstream.

    ablate train violet_core/configs/tiny.yaml                  # one process
    torchrun --nproc-per-node 2 -m violet_core.train CONFIG     # DDP (NCCL on GPUs, gloo on CPU)

Re-running the same command on the same run directory resumes: pretraining from the last
checkpoint (the loss curve continues exactly), downstream from the first unfinished task.
"""

from __future__ import annotations

import argparse
import logging
import os
import random
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel

from mvm_targets.errors import MvmTargetsError
from mvm_targets.store.reader import CacheReader
from mvm_targets.store.schema import code_version
from violet_core import distributed
from violet_core.batching import BatchStream
from violet_core.checkpoint import FORMAT as CHECKPOINT_FORMAT
from violet_core.checkpoint import CheckpointError, capture_rng, load_checkpoint, restore_rng
from violet_core.compiled import compile_model
from violet_core.config import ConfigError, RunConfig, load_config, parse_overrides, save_config
from violet_core.data.augment import check_flips
from violet_core.data.pretrain import PretrainDataset, cached_geometry, collate_pretrain, split_keys
from violet_core.data.tokenizer import TextTokenizer, build_tokenizer, load_tokenizer
from violet_core.downstream.tasks import DOWNSTREAM_RUNNERS, task_corpus
from violet_core.loop import LoopState, NonFiniteLossError, run_steps
from violet_core.masking import MaskSampler
from violet_core.model import Violet, load_pretrained_parts
from violet_core.objectives import PretrainObjective
from violet_core.online_targets import OnlineTargets, online_fill, sources, worker_fork_problem
from violet_core.optim import build_optimizer, build_schedule
from violet_core.provenance import software_versions
from violet_core.run_dir import RunDir
from violet_core.target_info import TargetInfo, read_target_infos
from violet_core.tracking import open_trackers

log = logging.getLogger("violet_core")


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


class Run:
    """Everything one training run holds; `execute()` does pretraining then the downstream tasks."""

    def __init__(self, config: RunConfig, run_dir: Path) -> None:
        self.config = config
        self.dist = distributed.init_distributed(config.device if config.device != "auto" else
                                                 ("cuda" if torch.cuda.is_available() else "cpu"))
        self.device = distributed.resolve_device(config.device, self.dist.local_rank)
        self.dir = RunDir(run_dir, writer=self.dist.is_main)
        if self.dist.is_main:  # TensorBoard beside metrics.jsonl, a progress bar on a terminal
            steps = {"pretrain": config.pretrain.optim.steps,
                     **{task: config.downstream.optim.steps for task in config.downstream.tasks}}
            self.dir.tracker = open_trackers(self.dir.root, steps)
        if self.dist.is_main:
            save_config(config, self.dir.root / "config.yaml")
        seed_everything(config.seed)
        data = config.data
        # online targets are computed in the training step from the augmented clip (docs/method.md §11):
        # the cache needs only their frames
        self.reader = CacheReader(Path(data.cache), data.dataset, targets=list(config.mvm.cached_targets),
                                  frames_id=data.frames_id)
        self.online: OnlineTargets | None = None
        if config.mvm.online_targets:
            self.online = OnlineTargets.from_config(config.mvm, self.device, *cached_geometry(self.reader))
        by_ref = {info.ref: info for info in read_target_infos(self.reader, list(config.mvm.cached_targets))}
        by_ref.update({info.ref: info for info in (self.online.infos if self.online else [])})
        self.infos: list[TargetInfo] = [by_ref[ref] for ref in config.mvm.targets]  # config order: head order
        check_flips(self.infos, data.hflip_prob, data.approximate_flips)  # before any training
        problem = worker_fork_problem(self.infos, data.hflip_prob, data.num_workers)
        if problem:
            raise ConfigError(problem)
        if self.infos:
            log.info("MVM targets: %s", ", ".join(f"{ref} ({source})" for ref, source in sources(self.infos).items()))
        if self.online:
            log.info("online MVM targets: %s", self.online.describe())
        self.tokenizer = self._tokenizer()
        self.model = Violet(config.model, self.tokenizer.vocab_size, data.max_text_len, self.infos,
                            config.mvm.normalization, config.mvm.flow_max_magnitude,
                            attention_weights="am" in config.mask.strategies).to(self.device)
        self.loaded_parts = load_pretrained_parts(self.model, config.model)
        if config.model.compile:
            compile_model(self.model)  # in place: state dicts, checkpoints and DDP see the same module

    # --- set-up ----------------------------------------------------------------------------

    def _tokenizer(self) -> TextTokenizer:
        if self.dist.is_main and not (self.dir.tokenizer / "tokenizer.json").exists():
            corpus = [c for key in self.reader.keys for c in self.reader.captions.get(key, [])]
            corpus += task_corpus(Path(self.config.data.source))
            # saved aside, then renamed into place: a kill mid-save must not leave a half-written tokenizer
            staging = self.dir.tokenizer.with_name(f".tokenizer.tmp{os.getpid()}")
            build_tokenizer(self.config.data.tokenizer, corpus, self.config.data.vocab_size, save_dir=staging)
            shutil.rmtree(self.dir.tokenizer, ignore_errors=True)
            os.replace(staging, self.dir.tokenizer)
        distributed.barrier(self.dist)
        return load_tokenizer(self.dir.tokenizer)

    def _wrap(self, module: torch.nn.Module) -> torch.nn.Module:
        if not self.dist.enabled:
            return module
        # heads of targets a 1-frame batch cannot use stay idle; DDP must not wait for them
        return DistributedDataParallel(module, device_ids=[self.device.index] if self.device.type == "cuda" else None,
                                       find_unused_parameters=True)

    # --- phases ----------------------------------------------------------------------------

    def pretrain(self) -> dict[str, float]:
        config, optim = self.config, self.config.pretrain.optim
        if self.dir.pretrained.exists():
            self.model.load_state_dict(torch.load(self.dir.pretrained, map_location=self.device, weights_only=True))
            return (self.dir.read_json("pretrain.json") or {}).get("losses", {})
        keys = split_keys(Path(config.data.source), "train", self.reader.keys)
        dataset = PretrainDataset(self.reader, self.infos, self.tokenizer, keys, config.data.num_frames,
                                  config.data.size, config.data.max_text_len, config.data.hflip_prob,
                                  config.data.random_crop, seed=config.seed,
                                  approximate_flips=config.data.approximate_flips)
        sampler = MaskSampler(config.mask.strategies, config.mask.ratio, config.mask.text_ratio, config.mask.paper,
                              video_without_mvm=config.mask.video_without_mvm)
        objective = PretrainObjective(self.model, sampler, self.tokenizer.mask_id, config.pretrain.vtm_negatives,
                                      config.pretrain.temperature, config.mvm.weight)
        optimizer = build_optimizer(self.model, optim)  # first: it freezes the backbone that DDP must not sync
        schedule = build_schedule(optimizer, optim)
        trainable = self._wrap(objective)
        mask_rng = torch.Generator().manual_seed(config.seed * 7919 + self.dist.rank)
        batches = BatchStream(dataset, collate_pretrain, optim.batch_size, config.seed, self.dist, self.device,
                              config.data.num_workers, fill=online_fill(self.online))
        state = LoopState()
        if self.dir.checkpoint.exists():
            state = self._restore(optimizer, schedule, mask_rng, batches)
        # lines past the checkpoint (or every line, when killed before the first) are about to be written again
        self.dir.truncate_log("pretrain", state.step)

        def checkpoint() -> None:
            # each rank's RNGs and log window: ranks draw different masks and average their own losses
            loop = state.state_dict()
            ranks = distributed.all_gather_objects({"rng": capture_rng({"mask": mask_rng}), "window": loop["window"]},
                                                   self.dist)
            self.dir.save_checkpoint(self.dir.checkpoint, {
                "format": CHECKPOINT_FORMAT, "model": self.model.state_dict(), "optimizer": optimizer.state_dict(),
                "schedule": schedule.state_dict(), "step": loop["step"], "samples": loop["samples"],
                "data": batches.state_dict(), "ranks": ranks,
            })

        def compute(batch: dict) -> dict[str, torch.Tensor]:
            return trainable(batch, mask_rng, self.tokenizer.special_mask(batch["text_ids"]))

        self.model.train()
        losses = run_steps("pretrain", compute, list(self.model.parameters()), optimizer, schedule,
                           batches, state,
                           optim.steps, device=self.device, precision=config.precision, grad_clip=optim.grad_clip,
                           dist=self.dist, log=self.dir.log, log_every=config.pretrain.log_every,
                           checkpoint=checkpoint, checkpoint_every=config.pretrain.checkpoint_every)
        if self.dist.is_main:
            self.dir.write_json("pretrain.json", {"losses": losses, "steps": state.step})
            # written last and atomically: its presence is what marks pretraining as done
            self.dir.save_checkpoint(self.dir.pretrained, self.model.state_dict())
            self.dir.checkpoint.unlink(missing_ok=True)  # pretrained.pt supersedes it
        distributed.barrier(self.dist)
        return losses

    def _restore(self, optimizer: torch.optim.Optimizer, schedule: torch.optim.lr_scheduler.LRScheduler,
                 mask_rng: torch.Generator, batches: BatchStream) -> LoopState:
        """Load the checkpoint into the live objects. The RNGs go last: nothing may draw between their
        restore and the first resumed step, exactly as nothing did between the save and the next step."""
        saved = load_checkpoint(self.dir.checkpoint)
        try:
            self.model.load_state_dict(saved["model"])
            optimizer.load_state_dict(saved["optimizer"])
            schedule.load_state_dict(saved["schedule"])
            batches.load_state_dict(saved["data"])
        except (KeyError, RuntimeError, ValueError) as error:  # a checkpoint of another config or data
            reason = " ".join(str(error).split())[:300] or type(error).__name__
            raise CheckpointError(f"{self.dir.checkpoint}: does not fit this run: {reason}") from None
        mine = saved["ranks"][self.dist.rank]
        state = LoopState.from_state_dict({"step": saved["step"], "samples": saved["samples"],
                                           "window": mine["window"]}, self.device)
        restore_rng(mine["rng"], {"mask": mask_rng})
        log.info("resumed pretraining at step %d from %s", state.step, self.dir.checkpoint)
        return state

    def downstream(self) -> tuple[dict[str, float], dict[str, float]]:
        """Finetune a fresh copy of the pretrained weights per task, then evaluate it."""
        done = self.dir.read_json("downstream.json") or {"metrics": {}, "chance": {}, "tasks": []}
        pretrained = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
        for task in self.config.downstream.tasks:
            if task in done["tasks"]:
                continue
            # A task killed part-way starts over from the state an uninterrupted run gives it: the
            # pretrained weights, no gradients (stale ones would enter the clipping norm), reseeded RNGs
            # and its data order from the first batch; the lines it had logged are dropped.
            self.dir.truncate_log(task, -1)
            self.model.load_state_dict(pretrained)
            self.model.zero_grad(set_to_none=True)
            seed_everything(self.config.seed + 1)
            metrics, chance = DOWNSTREAM_RUNNERS[task](self)
            done["metrics"].update(metrics)
            done["chance"].update(chance)
            done["tasks"].append(task)
            # the eval line first: once downstream.json names the task, a rerun skips it
            self.dir.log({"phase": task, "step": self.config.downstream.optim.steps, "split": "eval", **metrics})
            self.dir.write_json("downstream.json", done)
        return done["metrics"], done["chance"]

    def execute(self) -> dict[str, Any]:
        started = time.time()
        losses = self.pretrain()
        metrics, chance = self.downstream()
        record = {
            "name": self.config.name, "seed": self.config.seed,
            "metrics": {**{f"pretrain/{k}": v for k, v in losses.items()}, **metrics},
            "chance": chance,
            "targets": [{"ref": i.ref, "target_id": i.target_id, "teacher_weights": i.teacher_weights,
                         "source": i.source} for i in self.infos],
            "code_version": code_version(), "software": software_versions(),
            "config_hash": config_digest(self.config),
            "steps": self.config.pretrain.optim.steps, "wall_s": round(time.time() - started, 2),
            "world_size": self.dist.world, "device": str(self.device), "loaded": self.loaded_parts,
        }
        self.dir.write_json("final.json", record)
        return record


def config_digest(config: RunConfig) -> str:
    import hashlib

    return hashlib.sha256(config.canonical_json().encode()).hexdigest()[:12]


def train(config_path: str | Path, run_dir: str | Path | None = None,
          overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """Run one config end to end; returns the final record (rank 0's view)."""
    config = load_config(config_path, overrides)
    run_path = Path(run_dir) if run_dir else Path(config.out_dir) / config.name
    run = Run(config, run_path)
    try:
        return run.execute()
    except NonFiniteLossError as error:
        run.dir.write_json("failure.json", {"class": "nan", "message": str(error), "step": error.step})
        raise
    finally:
        if run.dir.tracker is not None:
            run.dir.tracker.close()
        distributed.shutdown(run.dist)


def main(argv: list[str] | None = None) -> int:
    from mvm_targets.errors import report_error, take_debug_flag

    parser = argparse.ArgumentParser(prog="violet_core.train", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("config", help="run config YAML (e.g. violet_core/configs/tiny.yaml)")
    parser.add_argument("--run-dir", help="default: <out_dir>/<name> from the config")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="config override, value parsed as YAML; repeatable")
    parser.add_argument("--debug", action="store_true",
                        help="print the full traceback of an unexpected error (also MVM_DEBUG=1)")

    def usage_error(message: str) -> None:  # argparse's two-line usage message, as one line
        print(f"error: violet_core.train: {message} (see --help)", file=sys.stderr)
        sys.exit(2)

    parser.error = usage_error  # type: ignore[method-assign]
    args = parser.parse_args(take_debug_flag(list(sys.argv[1:] if argv is None else argv)))
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    try:
        record = train(args.config, args.run_dir, parse_overrides(args.overrides))
    except NonFiniteLossError as error:
        print(f"error: {error}", file=sys.stderr)
        return 3
    except Exception as error:  # noqa: BLE001 - one line, the traceback in <run dir>/error.log
        return report_error(error, "violet_core.train", existing_run_dir(args.config, args.run_dir, args.overrides))
    if int(__import__("os").environ.get("RANK", "0")) == 0:
        print(summary_line(record))
    return 0


def existing_run_dir(config_path: str | Path, run_dir: str | Path | None, overrides: list[str]) -> Path | None:
    """The run's folder when it exists (where an unexpected error's traceback goes), else None."""
    try:
        path = Path(run_dir) if run_dir else None
        if path is None:
            config = load_config(config_path, parse_overrides(overrides))
            path = Path(config.out_dir) / config.name
        return path if path.is_dir() else None
    except Exception:  # noqa: BLE001 - a config that does not load has no run folder
        return None


def summary_line(record: dict[str, Any]) -> str:
    shown = {k: v for k, v in record["metrics"].items() if not k.startswith("pretrain/") or k == "pretrain/loss"}
    return "done: " + ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in shown.items())


if __name__ == "__main__":
    sys.exit(main())
