"""`mvm.source: online`: MVM targets computed in the training step from the augmented clip.

The cache is made by the `mvmtargets synth` and `mvmtargets extract` commands (run in this process).
Besides hog and pixel, a test-only target is registered here, as a third-party module would do it:
`ROWS`, the running mean of each frame's grey levels along its rows. It declares no flip rule, so its
cached form refuses flips (a running sum from the left is not the mirror of the one from the right),
which is what an online target must not do.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from typer.testing import CliRunner

from ablations.check import check_grid
from ablations.grid import expand
from ablations.prepare_plan import plan_cache
from ablations.report import load_runs
from ablations.report.protocol import build_card
from mvm_targets.cli import app as mvmtargets
from mvm_targets.store.reader import CacheReader
from mvm_targets.targets import registry
from mvm_targets.targets.spec import Grid, TargetSpec
from violet_core import train as train_module
from violet_core.config import ConfigError, ModelConfig, config_from_dict, load_config
from violet_core.data.augment import check_flips
from violet_core.data.device_batch import to_device
from violet_core.data.pretrain import PretrainDataset, collate_pretrain
from violet_core.data.tokenizer import build_tokenizer
from violet_core.masking import MaskSampler
from violet_core.model import Violet
from violet_core.objectives import PretrainObjective
from violet_core.online_targets import OnlineTargets, worker_fork_problem
from violet_core.target_info import read_target_infos

ROWS = "onlinetest_rows"
T, S = 4, 64  # cached clips: 4 frames of 64 px (a 2 x 2 patch grid)
IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], np.float32)


class RowsTarget:
    """Per frame, the running mean of the grey levels along each row, (T, 1, S, S) float16, and the
    frame's mean grey level as the extra "level" (T,) float32."""

    spec = TargetSpec(name=ROWS, variant="mean", version=1, grid=Grid.DENSE, dtype="float16", loss="l1",
                      clip_shape=lambda t, s: (t, 1, s, s))

    def compute(self, frames: np.ndarray) -> dict[str, np.ndarray]:
        grey = frames.astype(np.float32).mean(axis=-1)  # (B, T, S, S)
        running = np.cumsum(grey, axis=-1) / np.arange(1, grey.shape[-1] + 1, dtype=np.float32)
        return {"data": running[:, :, None].astype(np.float16), "level": grey.mean(axis=(-2, -1))}


@pytest.fixture(scope="module")
def rows_target():
    """Registered for this module only (other tests list the registry)."""
    registry.list_targets()
    registry.register_target(ROWS, ("mean",), in_all=False)(lambda variant: RowsTarget())
    registry.declared_spec.cache_clear()
    yield
    for table in (registry._FACTORIES, registry._VARIANTS, registry._DEFAULT_VARIANTS):
        table.pop(ROWS, None)
    registry._NOT_IN_ALL.discard(ROWS)
    registry.declared_spec.cache_clear()


@pytest.fixture(scope="module")
def workspace(rows_target, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("online")
    runner = CliRunner()
    for args in (["synth", str(root / "data"), "--clips", "8", "--seed", "3", "--frames", "6", "--size", "64"],
                 ["extract", str(root / "data" / "captions.csv"), "-t", "hog", "-t", ROWS, "--cache",
                  str(root / "cache"), "--dataset", "synthetic", "--frames", str(T), "--size", str(S),
                  "--batch-size", "8"]):
        result = runner.invoke(mvmtargets, args)
        assert result.exit_code == 0, (args[0], result.output, result.exception)
    return root


def tokenizer_for(reader: CacheReader):
    return build_tokenizer(None, [c for cs in reader.captions.values() for c in cs], vocab_size=300)


def online_dataset(workspace: Path, refs: list[str], size: int = S, **augmentation):
    """(dataset, OnlineTargets, tokenizer) of an online run at `size` px: the reader loads the frames only."""
    reader = CacheReader(workspace / "cache", "synthetic", [])
    tokenizer = tokenizer_for(reader)
    online = OnlineTargets(refs, {"device": "cpu"}, {}, T, S)
    dataset = PretrainDataset(reader, online.infos, tokenizer, reader.keys, T, size, max_text_len=16, seed=5,
                              **augmentation)
    return dataset, online, tokenizer


def cached_dataset(workspace: Path, refs: list[str], tokenizer, **augmentation) -> PretrainDataset:
    """The same clips as a cached run sees them."""
    reader = CacheReader(workspace / "cache", "synthetic", refs)
    return PretrainDataset(reader, read_target_infos(reader, refs), tokenizer, reader.keys, T, S, max_text_len=16,
                           seed=5, **augmentation)


# ---- (a) unaugmented: online and cached are the same targets and the same MVM loss -------------------

def test_online_and_cached_give_the_same_mvm_loss_on_an_unaugmented_batch(workspace, one_torch_thread):
    refs = ["hog", "pixel"]
    online_set, online, tokenizer = online_dataset(workspace, refs, hflip_prob=0.0, random_crop=False)
    cached = cached_dataset(workspace, refs, tokenizer, hflip_prob=0.0, random_crop=False)
    assert [i.spec for i in online.infos] == [i.spec for i in cached.infos]  # the same heads
    assert "frames" not in online_set[0] and online_set[0]["video"].shape == (T, S, S, 3)
    cpu = torch.device("cpu")
    cached_batch = to_device(collate_pretrain([cached[i] for i in range(4)]), cpu)
    filled = online.fill(collate_pretrain([online_set[i] for i in range(4)]))  # before normalisation
    assert filled["video"].dtype == torch.uint8 and filled["video"].shape == (4, T, S, S, 3)
    assert filled["targets_as_input"] == ["pixel"]
    online_batch = to_device(filled, cpu)

    # independent oracles on the raw cached frames: skimage-equal hog is what extraction stored, and
    # the pixel target is the frames normalised by the ImageNet statistics
    raw = np.stack([CacheReader(workspace / "cache", "synthetic", ["hog"])[k]["hog"] for k in cached_batch["keys"]])
    frames = filled["video"].numpy().astype(np.float32) / 255.0
    pixel = ((frames - IMAGENET_MEAN) / IMAGENET_STD).transpose(0, 1, 4, 2, 3)
    hog = online_batch["targets"]["hog"].numpy()
    assert hog.shape == (4, T, 1, S, S)
    np.testing.assert_allclose(hog[:, :, 0], raw.astype(np.float32), rtol=2 ** -10, atol=1e-6)
    np.testing.assert_allclose(online_batch["targets"]["pixel"].numpy(), pixel, rtol=1e-5, atol=1e-5)
    for ref in refs:
        np.testing.assert_allclose(online_batch["targets"][ref].numpy(), cached_batch["targets"][ref].numpy(),
                                   rtol=2 ** -10, atol=1e-6)

    torch.manual_seed(0)
    model = Violet(ModelConfig(hidden=32, layers=1, heads=2, intermediate=64, dropout=0.0),
                   tokenizer.vocab_size, 16, online.infos).eval()
    objective = PretrainObjective(model, MaskSampler(("rm",), 0.5, 0.15), tokenizer.mask_id)

    def losses(batch: dict) -> dict[str, float]:
        with torch.no_grad():
            out = objective(batch, torch.Generator().manual_seed(1), tokenizer.special_mask(batch["text_ids"]))
        return {name: float(value) for name, value in out.items()}

    from_cache, computed = losses(cached_batch), losses(online_batch)
    for key in ("mvm_hog", "mvm_pixel"):
        assert np.isfinite(from_cache[key]) and from_cache[key] > 0
        assert computed[key] == pytest.approx(from_cache[key], rel=2 ** -10), key


# ---- (b) flips: an online target needs no flip rule and is the target of the flipped clip ----------

def test_an_online_target_whose_cached_form_refuses_flips_is_computed_on_the_flipped_clip(workspace):
    reader = CacheReader(workspace / "cache", "synthetic", [ROWS])
    with pytest.raises(ConfigError, match=ROWS):  # the cached form cannot follow a flip
        PretrainDataset(reader, read_target_infos(reader, [ROWS]), tokenizer_for(reader), reader.keys, T, 32,
                        hflip_prob=1.0)
    # every clip flipped, and a random 32-px crop of the 64-px frames
    online_set, online, _ = online_dataset(workspace, [ROWS], size=32, hflip_prob=1.0)
    check_flips(online.infos, 1.0)  # no refusal
    items = [online_set[i] for i in range(len(online_set))]
    batch = online.fill(collate_pretrain(items))
    target = registry.build_target(ROWS)
    for index, item in enumerate(items):
        assert item["aug"]["flip"] == 1
        rows = slice(32 * item["aug"]["top"], 32 * (item["aug"]["top"] + 1))
        cols = slice(32 * item["aug"]["left"], 32 * (item["aug"]["left"] + 1))
        # the oracle: the dataset's draw applied to the cached frames by hand, then the target computed anew
        clip = reader[item["key"]]["frames"][:, rows, cols]
        expected = target.compute(np.ascontiguousarray(np.flip(clip, axis=2))[None])
        assert np.array_equal(batch["video"][index].numpy(), np.flip(clip, axis=2))
        assert np.array_equal(batch["targets"][ROWS][index].numpy(), expected["data"][0].astype(np.float32))
        assert np.array_equal(batch["extras"][f"{ROWS}/level"][index].numpy(), expected["level"][0])
        mirrored = target.compute(np.ascontiguousarray(clip)[None])["data"][0][..., ::-1]
        assert not np.array_equal(mirrored, expected["data"][0])  # the cached rule could not have given it


def test_workers_recomputing_flipped_cached_targets_beside_online_ones_are_refused(workspace):
    online = OnlineTargets([ROWS], {"device": "cpu"}, {}, T, S)
    hog = read_target_infos(CacheReader(workspace / "cache", "synthetic", ["hog"]), ["hog"])
    assert worker_fork_problem(hog + online.infos, 0.5, 0) is None
    assert worker_fork_problem(hog + online.infos, 0.0, 2) is None
    assert worker_fork_problem(hog, 0.5, 2) is None  # no online target: the main process runs no kernels
    problem = worker_fork_problem(hog + online.infos, 0.5, 2)
    assert "'hog'" in problem and "data.num_workers: 0" in problem and "\n" not in problem


# ---- (c) config ---------------------------------------------------------------------------------

@pytest.mark.parametrize("source, reason", [
    ("onlne", "'onlne' is not cached or online"),
    ({"pixel": "online"}, "'pixel' is not among mvm.targets ['hog']"),
    ({"hog": "live"}, "hog: 'live' is not cached or online"),
    (["cached"], "must be a string or a mapping"),
])
def test_bad_mvm_source_is_a_one_line_error(tmp_path, source, reason):
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump({"mvm": {"targets": ["hog"], "source": source}}))
    with pytest.raises(ConfigError) as error:
        load_config(path)
    message = str(error.value)
    assert "\n" not in message and "mvm.source" in message and reason in message and str(path) in message


def test_bad_mvm_source_stops_the_trainer_in_one_line(tmp_path, capsys):
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump({"mvm": {"targets": ["hog"], "source": {"hog": "sometimes"}}}))
    assert train_module.main([str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "mvm.source" in err and "sometimes" in err


def test_source_per_target_and_the_grid_axis():
    config = config_from_dict({"mvm": {"targets": ["hog", "pixel"], "source": {"hog": "online"}}})
    assert config.mvm.online_targets == ("hog",) and config.mvm.cached_targets == ("pixel",)
    assert config_from_dict({"mvm": {"targets": ["hog"]}}).mvm.source == "cached"  # the default
    grid = expand({"base": {"mvm.targets": ["hog", "pixel"]}, "axes": {"mvm.source": ["cached", "online"]},
                   "cache": {"source": "data/captions.csv"}})
    assert [r.factors["mvm.source"] for r in grid.runs] == ["cached", "online"]
    assert [r.config["mvm"]["source"] for r in grid.runs] == ["cached", "online"]
    assert len({r.run_id for r in grid.runs}) == 2 and "mvm.source=online" in grid.runs[1].alias
    # hog and pixel are read from the cache by the cached run only: still one extraction of both
    assert plan_cache(grid)[0].refs == ("hog", "pixel")
    online_only = expand({"base": {"mvm.targets": ["hog", "pixel"], "mvm.source": {"hog": "online"}},
                          "cache": {"source": "data/captions.csv"}})
    assert plan_cache(online_only)[0].refs == ("pixel",)  # an online-only target is never extracted


def test_ablate_check_needs_no_cached_set_for_an_online_target(workspace):
    base = {"data.cache": str(workspace / "cache"), "data.dataset": "synthetic", "data.source": str(workspace / "data"),
            "data.num_frames": T, "data.size": S, "downstream.tasks": [], "mvm.targets": ["flow:dis"]}
    report = check_grid(expand({"base": base, "axes": {"mvm.source": ["cached", "online"]}}))
    assert list(report.cells) == ["mvm.source=cached"]  # flow:dis was never extracted: only its cached cell fails
    assert "no cached target 'flow:dis'" in report.cells["mvm.source=cached"][0]


# ---- (d) end to end, and what the run records --------------------------------------------------

def write_config(workspace: Path, name: str, mvm: dict) -> Path:
    config = {
        "name": name, "seed": 0, "out_dir": str(workspace / "runs"),
        "data": {"cache": str(workspace / "cache"), "dataset": "synthetic", "source": str(workspace / "data"),
                 "num_frames": T, "size": S, "max_text_len": 16, "hflip_prob": 0.5, "vocab_size": 300},
        "model": {"video_backbone": "tiny", "hidden": 32, "layers": 1, "heads": 2, "intermediate": 64},
        "mvm": mvm,
        "pretrain": {"optim": {"steps": 2, "batch_size": 4, "lr": 1e-3}, "log_every": 1, "checkpoint_every": 0},
        "downstream": {"tasks": []},
    }
    path = workspace / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def test_two_online_training_steps_end_to_end_and_the_recorded_sources(workspace, one_torch_thread):
    refs = ["hog", "pixel", ROWS]
    train_module.train(write_config(workspace, "online", {"targets": refs, "source": "online"}))
    run = workspace / "runs" / "online"
    steps = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    steps = [s for s in steps if s["phase"] == "pretrain"]
    assert [s["step"] for s in steps] == [1, 2]
    for key in ("mvm_hog", "mvm_pixel", f"mvm_{ROWS}"):
        assert all(np.isfinite(s[key]) and s[key] > 0 for s in steps), key
    final = json.loads((run / "final.json").read_text())
    assert [(t["ref"], t["source"]) for t in final["targets"]] == [(ref, "online") for ref in refs]
    assert yaml.safe_load((run / "config.yaml").read_text())["mvm"]["source"] == "online"

    # the same targets read from the cache, for the card: hog varies by source, the card says so
    train_module.train(write_config(workspace, "mixed", {"targets": ["hog", "pixel"], "source": {"hog": "online"}}))
    final = json.loads((workspace / "runs" / "mixed" / "final.json").read_text())
    assert {t["ref"]: t["source"] for t in final["targets"]} == {"hog": "online", "pixel": "cached"}
    card = build_card(load_runs([workspace / "runs" / "mixed"]), [], None)
    mvm = dict(card.settings)["MVM"]
    assert "source hog online, pixel cached" in mvm
    assert any(d.startswith("MVM targets read from the cache") and "pixel" in d for d in card.deviations)
