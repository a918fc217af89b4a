"""The protocol card: the settings a grid ran with, and where they depart from the paper's.

The card describes the base cell (the baseline cell when there is one, else the first cell): its
runs' resolved config.yaml, the teachers recorded in the grid's final.json files, and the axes
the grid varies. Deviations are computed from those configs against `PAPER`, never written by hand.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import PurePath
from typing import Any

import pandas as pd

from ablations.grid import format_value
from ablations.report.flags import counted
from ablations.report.load import cell_name, cell_of, config_value, natural, parse_json, render_factor

# The paper's protocol as its official code (tsujuifu/pytorch_empirical-mvm) runs it; keys are this
# project's config keys, or a name of our own where no single key holds the setting.
PAPER: dict[str, Any] = {
    # model.py, visbackbone/video_swin.py: the video encoder is Video Swin-B (embed 128, depths 2-2-18-2)
    "model.video_backbone": "swin-b",
    # _args/args_pretrain.json vis_backbone_init "3d", kinetics 600: the video encoder starts from the
    # Kinetics-600 / ImageNet-22K Video Swin-B release (swin_base_patch244_window877_kinetics600_22k.pth)
    "model.backbone_weights": "swin_base_patch244_window877_kinetics600_22k.pth",
    # the trainer's optimiser groups: vis_backbone_lr_mul 1, so the video encoder trains at the full lr
    "optim.backbone_lr_mult": 1.0,
    # model.py: the fusion encoder is bert-base-uncased's (12 layers, 768 wide, 12 heads), loaded from BERT,
    # and the text goes through BERT's embeddings; the tokenizer is bert-base-uncased's WordPiece
    "model.text_weights": "bert-base-uncased",
    "data.tokenizer": "bert-base-uncased",
    "model.hidden": 768,
    "model.layers": 12,
    "model.heads": 12,
    # _args/args_pretrain.json size_frame 4; the finetuning configs (_args/_best/*.json) use 5
    "data.num_frames": 4,
    "downstream.num_frames": 5,
    # size_img 224 and size_txt 32 (pretraining)
    "data.size": 224,
    "data.max_text_len": 32,
    # _args/args_pretrain.json pretrain_masks ["rm", "bm"], one drawn per sample
    "mask.strategies": ("rm", "bm"),
    # the final model's video ratio: checkpoint ckpt_pretrain_..._rm-bm_0.3_ep10.pt and the author's reply
    # on the VIOLET repository (the released masking() keeps its default p_mask 0.15)
    "mask.ratio": 0.3,
    # masking(): text tokens are masked with p_mask 0.15
    "mask.text_ratio": 0.15,
    # masking(): video cells are chosen only when "mvm" is among pretrain_tasks, so the no-MVM
    # baseline trains on clean video
    "mask.video_without_mvm": False,
    # calc_mvm_loss(): each target's own scaling (/3 for pixel and features, /2 for flow, ...)
    "mvm.normalization": "paper",
    # the total loss is MLM + VTM + MVM, every weight 1
    "mvm.weight": 1.0,
    # VIOLET_Pretrain.forward(): O = min(B, 4) texts per video, the positive and 3 in-batch negatives
    "pretrain.vtm_negatives": 3,
    # args temp 0.05: VTM logits in pretraining, NormSoftmaxLoss in retrieval finetuning
    "pretrain.temperature": 0.05,
    "downstream.temperature": 0.05,
    # _args/args_pretrain.json lr 5e-5; the finetuning configs use 2e-5
    "pretrain.optim.lr": 5e-5,
    "downstream.optim.lr": 2e-5,
    # size_batch 20 per GPU, 8 GPUs in the README's pretraining command
    "pretrain.batch": 160,
    # the trainer's AdamW: betas (0.9, 0.98), decay 1e-3; WarmupLinearLR warms up over 10 %; clip 1.0
    "optim.betas": (0.9, 0.98),
    "optim.weight_decay": 1e-3,
    "optim.warmup_ratio": 0.1,
    "optim.grad_clip": 1.0,
    # dataset.py img_rand_crop: resize, random crop, normalise; nothing in training flips a frame
    "data.hflip_prob": 0.0,
    "data.approximate_flips": False,
    # the teachers are pretrained networks (DPT-Large, RAFT-Large, DALL-E, Swin-B, Video Swin-B)
    "teacher_weights": "pretrained",
    # "All variants are pre-trained on WebVid for 5 epochs" (quoted by the authors' repository issues)
    "pretrain.length": "5 epochs of WebVid-2.5M",
}
RELEASED_P_MASK = 0.15  # mask.paper reproduces the released masking(): p_mask 0.15 for video and text


@dataclass(frozen=True)
class ProtocolCard:
    """What the grid ran with (`settings`: name -> value as run), what varies (`axes`), and the
    settings that differ from the paper (`deviations`) or agree with it (`matches`)."""

    base: str
    settings: list[tuple[str, str]]
    axes: list[tuple[str, str]]
    deviations: list[str]
    matches: list[str]
    note: str = ""  # why the card is partial (no config.yaml in the base cell's runs)


def build_card(df: pd.DataFrame, rows: Sequence[str], baseline: Mapping[str, Any] | None) -> ProtocolCard:
    """The card for the runs of `df` (a `load_runs` frame), described from its base cell."""
    labels = df.attrs.get("labels", {})
    runs = df.drop_duplicates("run_id")
    records = runs.to_dict("records")
    cells = sorted({cell_of(r, rows) for r in records}, key=lambda c: tuple(natural(v) for v in c))
    base = {k: render_factor(v) for k, v in (baseline or {}).items()}
    chosen = [c for c in cells if all(c[rows.index(k)] == v for k, v in base.items() if k in rows)] or cells
    members = [r for r in records if chosen and cell_of(r, rows) == chosen[0]]
    name = cell_name(dict(zip(rows, chosen[0])), labels) if chosen else "(no runs)"
    base_text = f"{name} ({'baseline' if base else 'first cell'}, {len(members)} run{'s' * (len(members) != 1)})"
    axes = [(labels.get(r, r), ", ".join(format_value(v) for v in sorted({c[i] for c in cells}, key=natural)))
            for i, r in enumerate(rows)]
    seeds = sorted({r["seed"] for r in records if r["seed"] is not None and r["seed"] == r["seed"]})
    axes.append(("seed", ", ".join(str(s) for s in seeds) or "not recorded"))
    configs = [c for c in (parse_json(r["config"]) for r in members) if c]
    done = [r for r in records if r["state"] == "done"]
    if not configs:
        return ProtocolCard(base_text, [], axes, [], [], note="no config.yaml in the base cell's runs: "
                                                               "settings and deviations unknown")
    return ProtocolCard(base_text, _settings(configs, members, done), axes, *_compare(configs, members, done))


def _values(configs: Sequence[Mapping[str, Any]], key: str, default: Any = None) -> list[Any]:
    """The distinct values of `key` across the base cell's configs (several when a factor is pooled)."""
    seen: dict[str, Any] = {}
    for config in configs:
        value = config_value(config, key, default)
        seen.setdefault(repr(tuple(value) if isinstance(value, list) else value), value)
    return list(seen.values())


def _text(values: Sequence[Any]) -> str:
    return " / ".join(_one(v) for v in values)


def _one(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        return "+".join(map(str, value)) if value else "none"
    if isinstance(value, float):
        return f"{value:g}"
    return format_value(value)


def _same(value: Any, paper: Any) -> bool:
    if isinstance(paper, float) or isinstance(value, float):
        return isinstance(value, (int, float)) and math.isclose(float(value), float(paper), rel_tol=1e-9)
    if isinstance(paper, tuple):
        return isinstance(value, (list, tuple)) and tuple(value) == paper
    return value == paper


def _frames_finetune(config: Mapping[str, Any]) -> Any:
    return config_value(config, "downstream.num_frames") or config_value(config, "data.num_frames")


def _video_ratio(config: Mapping[str, Any]) -> Any:
    return RELEASED_P_MASK if config_value(config, "mask.paper", False) else config_value(config, "mask.ratio")


def _text_ratio(config: Mapping[str, Any]) -> Any:
    return RELEASED_P_MASK if config_value(config, "mask.paper", False) else config_value(config, "mask.text_ratio")


def _batch(config: Mapping[str, Any], members: Sequence[Mapping[str, Any]]) -> int | None:
    # batch_size is per process; final.json's world_size says how many processes a run had
    worlds = {int(r["world_size"]) for r in members if isinstance(r.get("world_size"), (int, float))
              and r["world_size"] == r["world_size"]}
    per = config_value(config, "pretrain.optim.batch_size")
    return per * max(worlds) if worlds and per else None


def _teachers(done: Sequence[Mapping[str, Any]]) -> dict[str, Counter]:
    by_ref: dict[str, Counter] = {}
    for record in done:
        for ref, weights in (parse_json(record["teachers"]) or {}).items():
            by_ref.setdefault(ref, Counter())[weights or "no teacher"] += 1
    return by_ref


def _settings(configs: Sequence[Mapping[str, Any]], members: Sequence[Mapping[str, Any]],
              done: Sequence[Mapping[str, Any]]) -> list[tuple[str, str]]:
    def v(key: str, default: Any = None) -> str:
        return _text(_values(configs, key, default))

    def init(key: str) -> str:
        names = [PurePath(w).name if w else "random init" for w in _values(configs, key)]
        return " / ".join(names)

    lr_mult = " / ".join("frozen (backbone_lr_mult 0)" if m == 0 else f"trained (lr x {_one(m)})"
                         for m in _values(configs, "pretrain.optim.backbone_lr_mult", 1.0))
    ft_mult = " / ".join("frozen" if m == 0 else f"trained (lr x {_one(m)})"
                         for m in _values(configs, "downstream.optim.backbone_lr_mult", 1.0))
    batches = {_batch(c, members) for c in configs}
    batch = v("pretrain.optim.batch_size") + (" per process" if None in batches else
                                              f" per process, {' / '.join(map(str, sorted(batches)))} in all")
    teachers = _teachers(done)
    frames = [f for f in (parse_json(r["frames"]) for r in members) if f]
    return [
        ("video backbone", f"{v('model.video_backbone')}, init {init('model.backbone_weights')}, "
                           f"pretraining: {lr_mult}, finetuning: {ft_mult}"),
        ("text", f"fusion {v('model.hidden')} wide x {v('model.layers')} layers x {v('model.heads')} heads, "
                 f"init {init('model.text_weights')}, tokenizer {init('data.tokenizer').replace('random init', 'trained on the captions')}"),
        ("frames", f"pretraining {v('data.num_frames')}, finetuning {_text(_unique(map(_frames_finetune, configs)))}"),
        ("size", f"{v('data.size')} px, {v('data.max_text_len')} text tokens"),
        ("masking", f"{v('mask.strategies')}, video ratio {_text(_unique(map(_video_ratio, configs)))}, "
                    f"text ratio {_text(_unique(map(_text_ratio, configs)))}, released-code mode (mask.paper) "
                    f"{v('mask.paper', False)}, video masked without MVM {v('mask.video_without_mvm', False)}"),
        ("MVM", f"targets {v('mvm.targets')}, normalization {v('mvm.normalization')}, weight {v('mvm.weight')}"),
        ("pretraining", f"{v('pretrain.optim.steps')} steps, batch {batch}, lr {v('pretrain.optim.lr')}, "
                        f"temperature {v('pretrain.temperature')}, weight decay {v('pretrain.optim.weight_decay')}, "
                        f"warm-up {v('pretrain.optim.warmup_ratio')}"),
        ("finetuning", f"{v('downstream.tasks')}, {v('downstream.optim.steps')} steps, batch "
                       f"{v('downstream.optim.batch_size')}, lr {v('downstream.optim.lr')}, "
                       f"temperature {v('downstream.temperature')}"),
        ("flips", f"hflip_prob {v('data.hflip_prob')}, approximate flips {v('data.approximate_flips', False)}"),
        ("teachers (all done runs)", "; ".join(f"{ref}: {counted(c)}" for ref, c in sorted(teachers.items()))
         or "none recorded"),
        ("cache frames", "; ".join(sorted({_frames_text(f) for f in frames})) or "codec/compression not recorded"),
    ]


def _frames_text(frames: Mapping[str, Any]) -> str:
    return ", ".join(f"{k} {format_value(frames[k])}" for k in sorted(frames))


def _unique(values: Any) -> list[Any]:
    seen: dict[str, Any] = {}
    for value in values:
        seen.setdefault(repr(value), value)
    return list(seen.values())


def _compare(configs: Sequence[Mapping[str, Any]], members: Sequence[Mapping[str, Any]],
             done: Sequence[Mapping[str, Any]]) -> tuple[list[str], list[str]]:
    deviations: list[str] = []
    matches: list[str] = []

    def check(label: str, values: Sequence[Any], paper: Any, unit: str = "") -> None:
        if all(_same(value, paper) for value in values):
            matches.append(f"{label} {_text(values)}{unit}")
        else:
            deviations.append(f"{label} {_text(values)}{unit} (paper {_one(paper)}{unit})")

    def switch(key: str, message: str) -> None:
        if any(config_value(c, key, PAPER[key]) != PAPER[key] for c in configs):
            deviations.append(message)

    def values(key: str, default: Any = None) -> list[Any]:
        return _values(configs, key, default)

    check("video backbone", values("model.video_backbone"), PAPER["model.video_backbone"])
    if any(w is None for w in values("model.backbone_weights")):
        deviations.append(f"video backbone randomly initialised (paper: {PAPER['model.backbone_weights']})")
    else:
        matches.append("video backbone initialised from a weights file")
    for phase, key in (("pretraining", "pretrain.optim.backbone_lr_mult"),
                       ("finetuning", "downstream.optim.backbone_lr_mult")):
        mults = values(key, 1.0)
        if any(m == 0 for m in mults):
            deviations.append(f"backbone frozen in {phase} (backbone_lr_mult 0; paper: trained, multiplier 1)")
        else:
            check(f"backbone lr multiplier in {phase}", mults, PAPER["optim.backbone_lr_mult"])
    if any(w is None for w in values("model.text_weights")):
        deviations.append("text encoder not initialised from BERT (paper: bert-base-uncased)")
    else:
        matches.append("text encoder initialised from a BERT folder")
    if any(t is None for t in values("data.tokenizer")):
        deviations.append("tokenizer trained on the captions (paper: bert-base-uncased WordPiece)")
    for key, label in (("model.hidden", "fusion width"), ("model.layers", "fusion layers"),
                       ("model.heads", "fusion heads")):
        check(label, values(key), PAPER[key])
    check("pretraining frames", values("data.num_frames"), PAPER["data.num_frames"])
    check("finetuning frames", _unique(map(_frames_finetune, configs)), PAPER["downstream.num_frames"])
    check("size", values("data.size"), PAPER["data.size"])
    check("text tokens", values("data.max_text_len"), PAPER["data.max_text_len"])
    check("masking strategies", values("mask.strategies"), PAPER["mask.strategies"])
    if any(config_value(c, "mask.paper", False) for c in configs):
        deviations.append(f"released-code masking (mask.paper): video ratio {RELEASED_P_MASK} whatever mask.ratio "
                          f"says, blockwise masking ignores the ratio (paper's final model: {PAPER['mask.ratio']})")
    else:
        check("video mask ratio", values("mask.ratio"), PAPER["mask.ratio"])
        check("text mask ratio", values("mask.text_ratio"), PAPER["mask.text_ratio"])
    switch("mask.video_without_mvm", "video masked without MVM (paper: clean video for the no-MVM baseline)")
    if any(config_value(c, "mvm.normalization") != PAPER["mvm.normalization"] for c in configs):
        deviations.append(f"MVM loss normalization {_text(values('mvm.normalization'))} (official code: its "
                          f"per-target scaling, mvm.normalization {PAPER['mvm.normalization']})")
    check("MVM loss weight", values("mvm.weight"), PAPER["mvm.weight"])
    check("VTM negatives", values("pretrain.vtm_negatives"), PAPER["pretrain.vtm_negatives"])
    check("temperature", values("pretrain.temperature"), PAPER["pretrain.temperature"])
    check("finetuning temperature", values("downstream.temperature"), PAPER["downstream.temperature"])
    check("pretraining lr", values("pretrain.optim.lr"), PAPER["pretrain.optim.lr"])
    check("finetuning lr", values("downstream.optim.lr"), PAPER["downstream.optim.lr"])
    batches = _unique(_batch(c, members) for c in configs)
    if None not in batches:
        check("pretraining batch in all", batches, PAPER["pretrain.batch"])
    for key in ("betas", "weight_decay", "warmup_ratio", "grad_clip"):
        check(f"pretraining {key.replace('_', ' ')}", values(f"pretrain.optim.{key}"), PAPER[f"optim.{key}"])
    flips = values("data.hflip_prob", 0.0)
    if any(p > 0 for p in flips):
        deviations.append(f"horizontal flips in pretraining (hflip_prob {_text(flips)}; paper: none)")
    else:
        matches.append("no horizontal flips")
    switch("data.approximate_flips", "approximate flips on teacher targets (data.approximate_flips: cached targets "
                                     "are flipped instead of recomputed on the flipped clip)")
    random_refs = {ref: c["random"] for ref, c in _teachers(done).items() if c.get("random")}
    if random_refs:
        deviations.append("random-weight teachers: " + ", ".join(
            f"{ref} ({n} run{'s' * (n != 1)})" for ref, n in sorted(random_refs.items())))
    return deviations, matches


def card_markdown(card: ProtocolCard) -> list[str]:
    """The card as markdown lines: settings table, varying axes, deviations, matches."""
    lines = ["## Protocol", "", f"Settings of {card.base}; every run's settings are in its config.yaml.", ""]
    if card.note:
        lines += [f"*{card.note}*", ""]
    if card.settings:
        lines += ["| setting | as run |", "|---|---|"] + [f"| {k} | {v} |" for k, v in card.settings] + [""]
    lines += ["Varied across the grid: " + "; ".join(f"{k}: {v}" for k, v in card.axes) + ".", ""]
    if card.settings:
        lines += ["### Deviations from the paper's protocol", ""]
        lines += [f"- {d}" for d in card.deviations] or ["- none"]
        lines += ["", "Same as the paper: " + ("; ".join(card.matches) or "nothing compared") + ".",
                  f"Not compared: pretraining length (paper: {PAPER['pretrain.length']}).", ""]
    return lines
