"""`ablate check`: every cell of a grid verified before anything trains.

1. A hand-built grid over a small cache, with one good cell and one bad cell per kind of problem
   (missing cache, frame-count mismatch, missing weights, unknown target); each reason asserted,
   through the API and the command line (`ablate check`, `ablate run --dry-run`).
2. The shipped `ablations/grids/paper_table1.yaml`, with every data and weights path it names
   filled by tiny stand-ins (random teachers, a tiny BERT folder saved with `save_pretrained`, a
   tiny Video Swin checkpoint in the official release layout, a synthetic dataset with DiDeMo- and
   TGIF-format task files): the check passes on all 27 runs, and one cell trains end to end with a
   tiny model, so a shipped grid cannot silently stop running.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import re
from pathlib import Path

import pytest
import torch
import yaml
from typer.testing import CliRunner

from ablations.check import check_grid_file
from ablations.cli import app
from ablations.grid import load_grid
from ablations.prepare import prepare_cache
from mvm_targets.backbones import build_video_swin
from mvm_targets.extract import ExtractConfig, extract
from mvm_targets.synth import build_synthetic_dataset
from mvm_targets.targets.registry import build_target
from mvm_targets.video.decode import SamplingConfig
from mvm_targets.video.inputs import discover_inputs
from tests.test_video_swin import official_checkpoint

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "violet_core" / "configs" / "tiny.yaml"
PAPER = REPO / "ablations" / "grids" / "paper_table1.yaml"
SIZE = 64


def write_yaml(path: Path, content: dict) -> Path:
    path.write_text(yaml.safe_dump(content, sort_keys=False))
    return path


# ----------------------------------------------------------------------------------------------
# 1. A hand-built grid: one good cell and one bad cell per kind of problem


@pytest.fixture(scope="module")
def small_cache(tmp_path_factory) -> Path:
    """<root>/data: 6 synthetic clips; <root>/cache/synthetic: their frames and hog at T=4, S=64."""
    root = tmp_path_factory.mktemp("check")
    build_synthetic_dataset(root / "data", clips=6, seed=1, num_frames=6, size=SIZE)
    config = ExtractConfig(cache_root=root / "cache", dataset="synthetic",
                           sampling=SamplingConfig(num_frames=4, size=SIZE))
    extract(discover_inputs([root / "data" / "captions.csv"]), [build_target("hog")], config)
    torch.save(official_checkpoint(build_video_swin("tiny", seed=0)), root / "swin_tiny.pth")
    return root


GOOD = {"target": "hog", "dataset": "synthetic", "ft_frames": 4, "backbone": "swin_tiny.pth"}
BAD = {"target": "depthh", "dataset": "absent", "ft_frames": 5, "backbone": "missing.pth"}
KEYS = {"target": "mvm.targets", "dataset": "data.dataset", "ft_frames": "downstream.num_frames",
        "backbone": "model.backbone_weights"}


def hand_built_grid(root: Path) -> Path:
    """The product of a good and a bad value per factor, minus every run with two bad values: the
    good cell and one cell per problem."""
    values = {"target": [[GOOD["target"]], [BAD["target"]]], "dataset": [GOOD["dataset"], BAD["dataset"]],
              "ft_frames": [GOOD["ft_frames"], BAD["ft_frames"]],
              "backbone": [str(root / GOOD["backbone"]), str(root / BAD["backbone"])]}
    bad_value = {"target": [BAD["target"]], "dataset": BAD["dataset"], "ft_frames": BAD["ft_frames"],
                 "backbone": str(root / BAD["backbone"])}
    names = list(values)
    exclude = [{KEYS[a]: bad_value[a], KEYS[b]: bad_value[b]} for i, a in enumerate(names) for b in names[i + 1:]]
    return write_yaml(root / "hand.yaml", {
        "name": "hand", "base_config": str(TINY),
        "base": {"data": {"cache": str(root / "cache"), "source": str(root / "data"), "size": SIZE}},
        "axes": {KEYS[name]: values[name] for name in names}, "exclude": exclude,
        "labels": {KEYS[name]: name for name in names}})


def cell(root: Path, **bad: object) -> str:
    """The cell's name as `ablate check` prints it: every factor good except those given."""
    chosen = {**GOOD, "backbone": str(root / GOOD["backbone"])}
    chosen.update({k: (str(root / v) if k == "backbone" else v) for k, v in bad.items()})
    return ",".join(f"{name}={chosen[name]}" for name in KEYS)


def test_each_bad_cell_gets_its_reason(small_cache):
    grid = hand_built_grid(small_cache)
    assert len(load_grid(grid).runs) == 5
    report = check_grid_file(grid)
    assert not report.ok and not report.problems
    assert cell(small_cache) not in report.cells  # the good cell
    reasons = {name: " | ".join(r) for name, r in report.cells.items()}
    assert len(reasons) == 4
    assert reasons[cell(small_cache, target="depthh")].startswith("mvm.targets: unknown target 'depthh'; known "
                                                                  "targets: pixel, hog")
    missing = reasons[cell(small_cache, dataset="absent")]
    assert missing.startswith("no cache section to extract from, and ") and "absent: no cached clips" in missing
    assert reasons[cell(small_cache, ft_frames=5)] == (
        f"downstream.num_frames=5 but the cache {small_cache / 'cache' / 'synthetic'}"
        f"/{SamplingConfig(num_frames=4, size=SIZE).frames_id} holds 4 frames per clip")
    assert reasons[cell(small_cache, backbone="missing.pth")] == (
        f"model.backbone_weights: no such file {small_cache / 'missing.pth'}")


def test_command_line_check_and_dry_run_print_one_line_per_bad_cell(small_cache, tmp_path, monkeypatch):
    grid = hand_built_grid(small_cache)
    monkeypatch.chdir(tmp_path)
    runner = CliRunner()
    for args in (["check", str(grid)], ["run", str(grid), "--dry-run"]):
        result = runner.invoke(app, args)
        assert result.exit_code == 2, result.output
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 4 and all(line.startswith(f"error: {grid}: cell ") for line in lines), result.stderr
        assert "would run" not in result.stdout
    assert list(tmp_path.iterdir()) == []  # nothing written, no runs/ folder
    # the good cell alone passes, with a summary line
    bad_values = {"target": [BAD["target"]], "dataset": BAD["dataset"], "ft_frames": BAD["ft_frames"],
                  "backbone": str(small_cache / BAD["backbone"])}
    raw = yaml.safe_load(grid.read_text())
    raw["exclude"] = [{KEYS[name]: value} for name, value in bad_values.items()]
    only_good = write_yaml(small_cache / "good.yaml", raw)
    result = runner.invoke(app, ["check", str(only_good)])
    assert result.exit_code == 0, result.stderr
    assert result.stdout.strip() == f"{only_good}: 1 cell(s), 1 run(s) checked: configs valid, targets known, " \
        "caches present or extracted by the cache section, frame counts consistent, weights and task files present"


def test_teacher_weights_are_required_unless_the_grid_asks_for_random_ones(small_cache, tmp_path, monkeypatch):
    monkeypatch.setenv("MVM_WEIGHTS", str(tmp_path / "no_weights"))
    grid = write_yaml(tmp_path / "teachers.yaml", {
        "name": "teachers", "base_config": str(TINY),
        "base": {"data": {"cache": str(tmp_path / "cache"), "source": str(small_cache / "data"), "size": SIZE}},
        "cache": {"source": str(small_cache / "data" / "captions.csv"), "num_frames": 4, "size": SIZE},
        "axes": {"mvm.targets": [["hog"], ["depth"], ["vq"]]}})
    report = check_grid_file(grid)
    assert sorted(report.cells) == ["mvm.targets=depth", "mvm.targets=vq"]
    depth = tmp_path / "no_weights" / "huggingface" / "Intel" / "dpt-large"
    assert report.cells["mvm.targets=depth"][0].startswith(f"depth:dpt-large needs teacher weights {depth} (from ")
    # vq reads either its converted safetensors or the original pickle
    dalle = tmp_path / "no_weights" / "dall-e"
    assert f"{dalle / 'encoder.pkl'} or {dalle / 'encoder.safetensors'}" in report.cells["mvm.targets=vq"][0]
    assert check_grid_file(grid, {"cache.weights": "random"}).ok
    (dalle).mkdir(parents=True)
    (dalle / "encoder.safetensors").write_bytes(b"stand-in: only its presence is checked")
    assert sorted(check_grid_file(grid).cells) == ["mvm.targets=depth"]


def test_cache_section_settings_and_frame_counts_are_checked(small_cache, tmp_path):
    base = {"name": "s", "base_config": str(TINY),
            "base": {"data": {"cache": str(tmp_path / "cache"), "source": str(small_cache / "data"), "size": SIZE}},
            "cache": {"source": str(small_cache / "data" / "captions.csv"), "num_frames": 3, "size": SIZE},
            "axes": {"mvm.targets": [["hog"]]}}
    report = check_grid_file(write_yaml(tmp_path / "s.yaml", base))
    assert report.cells == {"mvm.targets=hog": [
        "data.num_frames=4 but the cache section extracts 3 frames per clip",
        "data.num_frames (finetuning)=4 but the cache section extracts 3 frames per clip"]}
    for key, value, reason in (("workers", -1, "cache.workers must be an integer >= 0, got -1"),
                               ("clips_per_shard", 0, "cache.clips_per_shard must be an integer >= 1, got 0"),
                               ("size", 100, "cache.size must be a positive multiple of 32")):
        report = check_grid_file(write_yaml(tmp_path / "s.yaml", {**base, "cache": {**base["cache"], key: value}}))
        assert len(report.problems) == 1 and report.problems[0].startswith(reason), report.problems


# ----------------------------------------------------------------------------------------------
# 2. The shipped paper_table1 grid, with tiny stand-ins at every path it names

TINY_MODEL = {"model.video_backbone": "tiny", "model.hidden": 32, "model.layers": 1, "model.heads": 2,
              "model.intermediate": 64, "data.size": SIZE, "cache.size": SIZE}
SHORT = {"pretrain.optim.steps": 2, "pretrain.optim.batch_size": 2, "pretrain.log_every": 1,
         "pretrain.checkpoint_every": 0, "downstream.optim.steps": 1, "downstream.optim.batch_size": 2,
         "downstream.eval_batch_size": 4}


def paper_stand_ins(work: Path) -> None:
    """Everything paper_table1.yaml names, relative to the working directory `work`, in miniature."""
    source = work / "data" / "webvid"
    build_synthetic_dataset(source, clips=8, seed=2, num_frames=6, size=SIZE)
    splits = json.loads((source / "splits.json").read_text())
    captions: dict[str, list[str]] = {}
    with (source / "captions.csv").open() as handle:
        for row in csv.DictReader(handle):
            captions.setdefault(row["path"], []).append(row["caption"])
    # DiDeMo (LocalizingMoments layout: one entry per sentence) and TGIF-QA FrameQA tables, over the
    # synthetic clips; `downstream.key_format: "{noext}"` maps their ids to the cache keys
    for split, name in (("train", "train_data.json"), ("test", "test_data.json")):
        entries = [{"video": f"{key}.mp4", "description": text} for key in splits[split]
                   for text in captions[f"{key}.mp4"]]
        (work / "data" / "didemo").mkdir(parents=True, exist_ok=True)
        (work / "data" / "didemo" / name).write_text(json.dumps(entries))
    qa = [json.loads(line) for line in (source / "qa_oe.jsonl").read_text().splitlines()]
    (work / "data" / "tgif").mkdir(parents=True, exist_ok=True)
    for split, name in (("train", "Train_frameqa_question.csv"), ("test", "Test_frameqa_question.csv")):
        rows = ["gif_name\tquestion\tanswer"] + [f"{q['key']}\t{q['question']}\t{q['answer']}" for q in qa
                                                 if q["split"] == split]
        (work / "data" / "tgif" / name).write_text("\n".join(rows) + "\n")
    # a tiny BERT folder: its vocabulary covers the texts, its weights are random
    words = sorted({w for texts in captions.values() for t in texts for w in re.findall(r"[a-z]+", t.lower())}
                   | {w for q in qa for w in re.findall(r"[a-z]+", f"{q['question']} {q['answer']}".lower())})
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "?", ",", "."] + words
    bert = work / "weights" / "bert-base-uncased"
    bert.mkdir(parents=True)
    (bert / "vocab.txt").write_text("\n".join(vocab) + "\n")
    from transformers import BertConfig, BertForMaskedLM

    torch.manual_seed(0)
    BertForMaskedLM(BertConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                               intermediate_size=64)).save_pretrained(bert)
    # a tiny Video Swin in the official release layout, under the release's file name
    torch.save(official_checkpoint(build_video_swin("tiny", seed=0)),
               work / "weights" / "swin_base_patch244_window877_kinetics600_22k.pth")


@pytest.fixture(scope="module")
def paper_work(tmp_path_factory) -> Path:
    work = tmp_path_factory.mktemp("paper")
    paper_stand_ins(work)
    return work


def test_paper_table1_checks_with_stand_ins_and_one_cell_trains(paper_work, monkeypatch, one_torch_thread):
    monkeypatch.chdir(paper_work)  # the grid's paths are relative to the working directory
    monkeypatch.setenv("MVM_WEIGHTS", str(paper_work / "no_teacher_weights"))
    # without teacher weights, exactly the six teacher cells are refused, each saying what it needs
    report = check_grid_file(PAPER, TINY_MODEL)
    assert sorted(report.cells) == sorted(f"target={t}" for t in ("depth", "flow:raft", "vq", "sif", "tvf", "mmf"))
    assert all(len(r) == 1 and "needs teacher weights" in r[0] for r in report.cells.values()), report.cells
    # with random teachers every run of the shipped grid is ready
    overrides = {**TINY_MODEL, "cache.weights": "random"}
    report = check_grid_file(PAPER, overrides)
    assert report.ok, report.error_lines()
    assert (report.cell_count, report.run_count) == (9, 27)
    result = CliRunner().invoke(app, ["check", str(PAPER), *[f"--set={k}={v}" for k, v in overrides.items()]])
    assert result.exit_code == 0 and "9 cell(s), 27 run(s) checked" in result.stdout, result.output

    # one cell (pixel, seed 0) extracted and trained for a few steps, downstream on both task files
    grid = load_grid(PAPER, {**overrides, **SHORT})
    spec = next(r for r in grid.runs if r.alias == "target=pixel,seed=0")
    assert (spec.config["data"]["num_frames"], spec.config["downstream"]["num_frames"]) == (4, 5)
    prepare_cache(dataclasses.replace(grid, runs=[spec]), say=lambda line: None)
    from violet_core.train import train

    config_path = write_yaml(paper_work / "pixel.yaml", spec.config)
    record = train(config_path, paper_work / "runs" / spec.run_id)
    metrics = record["metrics"]
    assert record["steps"] == 2 and "pretrain/mvm_pixel" in metrics
    assert {"retrieval/R@1", "retrieval/AveR", "qa_oe/acc"} <= set(metrics)
    assert any("BERT from weights/bert-base-uncased" in part for part in record["loaded"])
    assert any("video backbone from weights/swin_base" in part for part in record["loaded"])
