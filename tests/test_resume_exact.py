"""A run killed with SIGKILL and rerun ends bit-identical to an uninterrupted run, and checkpoints load
without pickle.

The end-to-end cases run the trainer's CLI (`violet_core.train.main`, as `python -m violet_core.train
CONFIG --run-dir DIR` does) in separate processes on two tiny synthetic sets whose training splits (10 and
14 clips) leave a partial batch and put the checkpoints at different positions in the epoch. Each
process is forked from one helper process that imported the trainer once (an import costs ~5 s of
CPU, a whole tiny run ~2 s); the helper itself never runs a torch op, so every child starts from a
freshly imported state. A child is killed at an exact point with a real SIGKILL it sends itself from
a wrapped `RunDir.log` / `RunDir.save_checkpoint`, installed in the child only: the trainer has no
test hook. The model keeps dropout and drop-path on, so any draw from the global torch generator that
a resumed run makes differently (the DataLoader's base seed, for one) changes the losses.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import pickle
import random
import select
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from mvm_targets.extract import ExtractConfig, extract
from mvm_targets.synth import build_synthetic_dataset
from mvm_targets.targets.registry import build_target
from mvm_targets.video.decode import SamplingConfig
from mvm_targets.video.inputs import discover_inputs
from violet_core import train as train_module
from violet_core.batching import BatchStream
from violet_core.checkpoint import FORMAT, CheckpointError, capture_rng, load_checkpoint, restore_rng
from violet_core.distributed import Dist
from violet_core.loop import LoopState
from tests.epoch_items import EpochIndexItems, collate_epoch_items

REPO = Path(__file__).resolve().parents[1]
RUN_TIMEOUT_S = 240  # one trainer process on a loaded 2-core machine; a tiny run takes a few seconds

# The helper: reads one JSON request per line, forks a child that runs the trainer's CLI with an
# optional self-kill, answers with the child's exit code (-9 for SIGKILL).
FORK_SERVER = r"""
import json, os, signal, sys
from violet_core import train
from violet_core.run_dir import RunDir


def arm(kill):
    if kill is None:
        return
    if kill["after"] == "checkpoint":  # right after last.pt of that step is in place
        save = RunDir.save_checkpoint

        def save_then_die(self, path, state):
            save(self, path, state)
            if path.name == "last.pt" and state["step"] == kill["step"]:
                os.kill(os.getpid(), signal.SIGKILL)

        RunDir.save_checkpoint = save_then_die
        return
    log = RunDir.log

    def log_then_die(self, record):
        log(self, record)
        if (record.get("phase"), record.get("step"), record.get("split", "train")) == \
                (kill["phase"], kill["step"], kill["after"]):
            os.kill(os.getpid(), signal.SIGKILL)

    RunDir.log = log_then_die


for line in sys.stdin:
    request = json.loads(line)
    pid = os.fork()
    if pid == 0:
        out = os.open(request["output"], os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        os.dup2(out, 1)
        os.dup2(out, 2)
        arm(request["kill"])
        code = train.main(request["argv"])
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    _, status = os.waitpid(pid, 0)
    print(json.dumps({"code": os.waitstatus_to_exitcode(status)}), flush=True)
"""


class Trainer:
    """Runs the trainer CLI in a fresh forked process; `kill` = (after, phase, step) makes it SIGKILL
    itself after the log line (after "train" or "eval") or the last.pt save (after "checkpoint") of `step`."""

    def __init__(self, scratch: Path) -> None:
        self.scratch = scratch
        env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
        self.process = subprocess.Popen([sys.executable, "-c", FORK_SERVER], stdin=subprocess.PIPE,
                                        stdout=subprocess.PIPE, text=True, cwd=REPO, env=env,
                                        start_new_session=True)
        self.calls = 0

    def __call__(self, config: Path, run_dir: Path, kill: tuple[str, str, int] | None = None) -> int:
        self.calls += 1
        output = self.scratch / f"trainer_{self.calls}.log"
        request = {"argv": [str(config), "--run-dir", str(run_dir)], "output": str(output),
                   "kill": None if kill is None else dict(zip(("after", "phase", "step"), kill))}
        self.process.stdin.write(json.dumps(request) + "\n")
        self.process.stdin.flush()
        ready, _, _ = select.select([self.process.stdout], [], [], RUN_TIMEOUT_S)
        if not ready:
            self.close()
            pytest.fail(f"trainer run {self.calls} did not finish in {RUN_TIMEOUT_S} s; see {output}")
        answer = self.process.stdout.readline()
        if not answer:
            pytest.fail(f"the fork server died; see {output}")
        code = json.loads(answer)["code"]
        if code not in (0, -signal.SIGKILL):
            pytest.fail(f"trainer exited with {code}: {output.read_text()[-2000:]}")
        return code

    def close(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait()


@pytest.fixture(scope="session")
def trainer(tmp_path_factory):
    server = Trainer(tmp_path_factory.mktemp("trainer_logs"))
    yield server
    server.close()


@pytest.fixture(scope="session")
def resume_sets(tmp_path_factory) -> dict[int, Path]:
    """Two synthetic sets (14 and 20 clips: 10 and 14 training clips) with frames cached at 64 px,
    built by the functions behind `mvmtargets synth` and `mvmtargets extract`."""
    roots = {}
    for clips in (14, 20):
        root = tmp_path_factory.mktemp(f"resume_{clips}")
        build_synthetic_dataset(root / "data", clips=clips, seed=0, num_frames=8, size=64, object_scale=2.0)
        config = ExtractConfig(cache_root=root / "cache", dataset="synthetic", batch_size=8,
                               sampling=SamplingConfig(num_frames=4, size=64))
        extract(discover_inputs([root / "data" / "captions.csv"]), [build_target("pixel")], config)
        roots[clips] = root
    return roots


def write_config(root: Path, targets: list[str]) -> Path:
    """Tiny model, 12 pretraining steps (batch 4, checkpoint every 5, log every 2: a checkpoint falls
    inside a log window) and 3 steps of each downstream task. Dropout and drop-path stay on."""
    config = {
        "name": "resume", "seed": 0, "device": "cpu", "out_dir": str(root / "runs"),
        "data": {"cache": str(root / "cache"), "dataset": "synthetic", "source": str(root / "data"),
                 "num_frames": 4, "size": 32, "max_text_len": 32, "hflip_prob": 0.5, "vocab_size": 200},
        "model": {"video_backbone": "tiny", "hidden": 32, "layers": 1, "heads": 2, "intermediate": 64},
        "mask": {"strategies": ["rm", "bm"]},
        "mvm": {"targets": targets},
        "pretrain": {"optim": {"steps": 12, "batch_size": 4, "lr": 1e-3}, "log_every": 2, "checkpoint_every": 5},
        "downstream": {"tasks": ["retrieval", "qa_mc", "qa_oe"], "eval_batch_size": 8,
                       "optim": {"steps": 3, "batch_size": 4, "lr": 1e-3}},
    }
    path = root / f"resume_{'_'.join(targets) or 'none'}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def logged(run: Path) -> list[dict]:
    """metrics.jsonl without its wall-clock field."""
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in line.items() if k != "step_s"} for line in lines]


def final(run: Path) -> dict:
    """final.json without its timing field and the commit (which moves if someone commits between runs)."""
    record = json.loads((run / "final.json").read_text())
    record.pop("wall_s")
    record.pop("code_version")
    return record


# (clips, MVM targets, kills in order). 10 training clips make 2 batches of 4 per epoch, 14 make 3, so
# the step-5 and step-10 checkpoints fall at the end of an epoch or inside one depending on the set.
PLANS = {
    "10_train_clips": (14, [], [
        ("train", "pretrain", 4),        # before the first checkpoint: restarts from scratch
        ("checkpoint", "pretrain", 5),   # right after a checkpoint taken mid-epoch (epoch 2, batch 1 of 2)
        ("train", "pretrain", 12),       # mid-interval, last step: back to step 10 (an epoch boundary)
        ("train", "qa_mc", 2),           # during the second downstream task
    ]),
    "14_train_clips": (20, ["pixel"], [
        ("train", "pretrain", 2),        # before the first checkpoint
        ("train", "pretrain", 8),        # mid-interval: back to step 5 (the end of epoch 1)
        ("checkpoint", "pretrain", 10),  # right after a checkpoint taken mid-epoch (epoch 3, batch 1 of 3)
        ("eval", "retrieval", 3),        # after a task's eval line, before it is recorded as done
        ("train", "qa_oe", 2),           # during the last downstream task
    ]),
}


@pytest.mark.parametrize("plan", list(PLANS))
def test_killed_and_resumed_run_equals_the_uninterrupted_one(plan, resume_sets, trainer):
    clips, targets, kills = PLANS[plan]
    root = resume_sets[clips]
    config = write_config(root, targets)
    whole, resumed = root / "runs" / f"whole_{plan}", root / "runs" / f"resumed_{plan}"
    assert trainer(config, whole) == 0
    expected = logged(whole)
    assert [(r["phase"], r["step"]) for r in expected if r["phase"] == "pretrain"] == [
        ("pretrain", s) for s in (2, 4, 6, 8, 10, 12)]

    for after, phase, step in kills:
        assert trainer(config, resumed, kill=(after, phase, step)) == -signal.SIGKILL, (after, phase, step)
        assert not (resumed / "final.json").exists()
        if after == "checkpoint":
            saved = torch.load(resumed / "checkpoints" / "last.pt", weights_only=True)
            assert saved["format"] == FORMAT and saved["step"] == step
    assert trainer(config, resumed) == 0

    assert logged(resumed) == expected
    assert final(resumed) == final(whole)
    mine = torch.load(resumed / "checkpoints" / "pretrained.pt", weights_only=True)
    reference = torch.load(whole / "checkpoints" / "pretrained.pt", weights_only=True)
    assert mine.keys() == reference.keys() and all(torch.equal(mine[k], reference[k]) for k in mine)


def test_old_checkpoint_is_refused_in_one_line(resume_sets, tmp_path, capsys, one_torch_thread):
    config = write_config(resume_sets[14], [])
    run = tmp_path / "old"
    (run / "checkpoints").mkdir(parents=True)
    # what the trainer wrote before: no format, RNG states as before, here with an object only pickle loads
    torch.save({"model": {}, "step": 5, "samples": 20, "extra": argparse.Namespace(seed=0)},
               run / "checkpoints" / "last.pt")
    assert train_module.main([str(config), "--run-dir", str(run)]) == 2
    error = capsys.readouterr().err.strip()
    assert error.count("\n") == 0 and "last.pt" in error
    assert "predates the safe format" in error and "delete it" in error


# --- the pieces, in process ------------------------------------------------------------------------


def _stream(size: int, batch_size: int = 3) -> BatchStream:
    return BatchStream(EpochIndexItems(size), collate_epoch_items, batch_size, seed=5, dist=Dist(), device=torch.device("cpu"))


def _take(stream: BatchStream, count: int) -> list[list[list[int]]]:
    return [next(stream)["video"].tolist() for _ in range(count)]


@pytest.mark.parametrize("split_at", [0, 1, 3, 4, 7])
def test_batch_stream_state_continues_the_same_batches(split_at):
    # 11 items, batches of 3: 3 batches per epoch, 2 items dropped; split_at 3 and 6 are epoch ends
    expected = _take(_stream(11), 10)
    first = _stream(11)
    head = _take(first, split_at)
    buffer = io.BytesIO()
    torch.save(first.state_dict(), buffer)
    buffer.seek(0)
    second = _stream(11)
    second.load_state_dict(torch.load(buffer, weights_only=True))
    assert head + _take(second, 10 - split_at) == expected
    for epoch in range(3):  # every epoch: 9 distinct indices, items built for that epoch
        rows = [row for batch in expected[3 * epoch:3 * epoch + 3] for row in batch]
        assert len({index for index, _ in rows}) == 9 and {e for _, e in rows} == {epoch}


def test_batch_stream_leaves_the_global_generators_alone():
    torch.manual_seed(1)
    before = torch.get_rng_state()
    stream = _stream(7, batch_size=2)
    _take(stream, 8)  # three epochs: a new DataLoader iterator per epoch
    stream.load_state_dict(stream.state_dict())
    _take(stream, 2)
    assert torch.equal(torch.get_rng_state(), before)


def test_batch_stream_refuses_a_state_for_other_data():
    state = _stream(11).state_dict()
    with pytest.raises(ValueError, match="11 training items, batch size 3"):
        _stream(12).load_state_dict(state)


def test_captured_generators_replay_the_same_draws():
    mask = torch.Generator().manual_seed(3)
    random.seed(1)
    np.random.seed(2)
    torch.manual_seed(4)
    buffer = io.BytesIO()
    torch.save(capture_rng({"mask": mask}), buffer)  # plain data: loads without pickle below

    def draws() -> list:
        return [random.random(), random.gauss(0, 1), np.random.rand(3).tolist(), np.random.randn(),
                torch.rand(3).tolist(), torch.rand(2, generator=mask).tolist()]

    first = draws()
    buffer.seek(0)
    restore_rng(torch.load(buffer, weights_only=True), {"mask": mask})
    assert draws() == first


def test_loop_state_keeps_the_log_window_exactly():
    values = torch.tensor([1.1, 2.3, 0.7], dtype=torch.float32)
    state = LoopState(step=7, samples=28, window={"loss": list(values.unbind())})
    buffer = io.BytesIO()
    torch.save(state.state_dict(), buffer)
    buffer.seek(0)
    back = LoopState.from_state_dict(torch.load(buffer, weights_only=True), torch.device("cpu"))
    assert (back.step, back.samples) == (7, 28)
    assert torch.equal(torch.stack(back.window["loss"]).mean(), values.mean())


def test_load_checkpoint_refuses_pickle_and_old_formats(tmp_path):
    needs_pickle = tmp_path / "pickled.pt"
    torch.save({"format": FORMAT, "extra": argparse.Namespace(a=1)}, needs_pickle)
    with pytest.raises(CheckpointError, match="predates the safe format") as caught:
        load_checkpoint(needs_pickle)
    assert "\n" not in str(caught.value)
    with pytest.raises(pickle.UnpicklingError):  # the oracle: torch's own safe loader refuses it
        torch.load(needs_pickle, weights_only=True)

    older = tmp_path / "older.pt"
    torch.save({"model": {}, "step": 3}, older)
    with pytest.raises(CheckpointError, match="format 1, this code resumes format"):
        load_checkpoint(older)

    current = tmp_path / "current.pt"
    torch.save({"format": FORMAT, "step": 3}, current)
    assert load_checkpoint(current)["step"] == 3
