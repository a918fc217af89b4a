"""One run: pretrain VIOLET on cached frames and targets, then finetune and evaluate downstream.

    ablate train violet_core/configs/tiny.yaml                  # one process
    torchrun --nproc-per-node 2 -m violet_core.train CONFIG     # DDP (NCCL on GPUs, gloo on CPU)

Re-running the same command on the same run directory resumes: pretraining from the last
checkpoint (the loss curve continues exactly), downstream from the first unfinished task.

Top to bottom: `Run` sets up what every phase shares (processes, run folder, cache, MVM targets,
tokenizer, model, and the engine that runs steps, logs and checkpoints: violet_core.loop.Engine);
`Run.execute` pretrains (violet_core.pretrain), runs each downstream task on a fresh copy of the
pretrained weights (`downstream`, violet_core.downstream.tasks) and writes final.json. Each phase
gets the pieces it uses as arguments.
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import os
import random
import shutil
import sys
import time
from pathlib import Path
from typing import Any, Collection

import numpy as np
import torch

from mvm_targets.store.reader import CacheReader
from mvm_targets.store.schema import code_version
from violet_core import distributed
from violet_core.compiled import compile_model
from violet_core.config import ConfigError, RunConfig, load_config, save_config
from violet_core.config_parsing import parse_overrides
from violet_core.data.augment import check_flips
from violet_core.data.pretrain import cached_geometry
from violet_core.data.tokenizer import TextTokenizer, build_tokenizer, load_tokenizer
from violet_core.downstream.tasks import DOWNSTREAM_RUNNERS, finetuner, task_corpus
from violet_core.loop import Engine, NonFiniteLossError
from violet_core.model import Violet, load_pretrained_parts
from violet_core.online_targets import OnlineTargets, sources, worker_fork_problem
from violet_core.pretrain import pretrain
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
    """What one run sets up once, in this order (it fixes the draws from the global RNGs): processes,
    run folder, seeds, cache, MVM targets, tokenizer, model, engine. `execute()` runs the phases."""

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
                                  frames_id=data.frames_id, options=config.mvm.options)
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
        self.engine = Engine(self.dist, self.device, config.precision, self.dir, config.pretrain.log_every,
                             config.seed, data.num_workers)

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

    def execute(self) -> dict[str, Any]:
        started = time.time()
        losses = pretrain(self.model, self.infos, self.tokenizer, self.reader, self.online, self.config, self.engine)
        metrics, chance = downstream(self.model, self.tokenizer, self.config, self.reader.keys, self.engine)
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


def downstream(model: Violet, tokenizer: TextTokenizer, config: RunConfig, keys: Collection[str],
               engine: Engine) -> tuple[dict[str, float], dict[str, float]]:
    """Finetune a fresh copy of the pretrained weights per task, then evaluate it; (metrics, chance)."""
    run_dir = engine.run_dir
    done = run_dir.read_json("downstream.json") or {"metrics": {}, "chance": {}, "tasks": []}
    pretrained = {k: v.detach().clone() for k, v in model.state_dict().items()}
    finetune = finetuner(engine, model, config.downstream.optim)
    for task in config.downstream.tasks:
        if task in done["tasks"]:
            continue
        # A task killed part-way starts over from the state an uninterrupted run gives it: the
        # pretrained weights, no gradients (stale ones would enter the clipping norm), reseeded RNGs
        # and its data order from the first batch; the lines it had logged are dropped.
        run_dir.truncate_log(task, -1)
        model.load_state_dict(pretrained)
        model.zero_grad(set_to_none=True)
        seed_everything(config.seed + 1)
        metrics, chance = DOWNSTREAM_RUNNERS[task](model, tokenizer, config, keys, finetune, engine.device)
        done["metrics"].update(metrics)
        done["chance"].update(chance)
        done["tasks"].append(task)
        # the eval line first: once downstream.json names the task, a rerun skips it
        run_dir.log({"phase": task, "step": config.downstream.optim.steps, "split": "eval", **metrics})
        run_dir.write_json("downstream.json", done)
    return done["metrics"], done["chance"]


def config_digest(config: RunConfig) -> str:
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
    if int(os.environ.get("RANK", "0")) == 0:
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
