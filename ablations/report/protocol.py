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
from ablations.report.load import (cell_name, cell_of, cell_value, config_value, factor_columns, is_number, natural,
                                   parse_json, render_factor)
from violet_core.config import CACHED, ONLINE, target_source

# The paper's protocol as its official code (tsujuifu/pytorch_empirical-mvm) runs it; keys are this project's config
# keys, or a name of our own where no single key holds the setting. Each comment says where the value comes from.
PAPER: dict[str, Any] = {
    "model.video_backbone": "swin-b",  # model.py, visbackbone/video_swin.py: Video Swin-B (embed 128, 2-2-18-2)
    # _args/args_pretrain.json vis_backbone_init "3d", kinetics 600: the Kinetics-600 / ImageNet-22K release
    "model.backbone_weights": "swin_base_patch244_window877_kinetics600_22k.pth",
    "optim.backbone_lr_mult": 1.0,  # the trainer's optimiser groups: vis_backbone_lr_mul 1, the backbone trains
    "model.text_weights": "bert-base-uncased",  # model.py: the fusion encoder is loaded from bert-base-uncased
    "data.tokenizer": "bert-base-uncased",  # dataset.py: AutoTokenizer of bert-base-uncased (WordPiece)
    "model.hidden": 768,  # model.py: BERT-base fusion encoder, 768 wide
    "model.layers": 12,  # ... 12 layers
    "model.heads": 12,  # ... 12 attention heads
    "data.num_frames": 4,  # _args/args_pretrain.json size_frame 4
    "downstream.num_frames": 5,  # _args/_best/*.json (finetuning) size_frame 5
    "data.size": 224,  # _args/args_pretrain.json size_img 224
    "data.max_text_len": 32,  # _args/args_pretrain.json size_txt 32
    "mask.strategies": ("rm", "bm"),  # _args/args_pretrain.json pretrain_masks, one drawn per sample
    # the final model's video ratio: checkpoint ckpt_pretrain_..._rm-bm_0.3_ep10.pt and the author's reply on the
    # VIOLET repository (the released masking() keeps its default p_mask 0.15)
    "mask.ratio": 0.3,
    "mask.text_ratio": 0.15,  # masking(): text tokens masked with p_mask 0.15
    # masking(): video cells are drawn only when "mvm" is among pretrain_tasks: the no-MVM baseline sees clean video
    "mask.video_without_mvm": False,
    "mvm.normalization": "paper",  # calc_mvm_loss(): per-target scales (/3 pixel, depth, features; /2 flow)
    "mvm.weight": 1.0,  # main_pretrain.py step(): ls = ls_mtm + ls_vtm + ls_mvm, every weight 1
    # the teachers run inside the training step on the clip the student sees (cropped, never flipped)
    "mvm.source": "online",
    "pretrain.vtm_negatives": 3,  # VIOLET_Pretrain.forward(): min(B, 4) texts per video, 3 of them negatives
    "pretrain.temperature": 0.05,  # args temp 0.05 divides the VTM logits
    "downstream.temperature": 0.05,  # main_retrieval.py NormSoftmaxLoss temperature 0.05
    "pretrain.optim.lr": 5e-5,  # _args/args_pretrain.json lr
    "downstream.optim.lr": 2e-5,  # _args/_best/*.json lr
    "pretrain.batch": 160,  # size_batch 20 per GPU x 8 GPUs in the README's pretraining command
    "optim.betas": (0.9, 0.98),  # the trainer's AdamW betas
    "optim.weight_decay": 1e-3,  # decay 1e-3, none on bias and LayerNorm
    "optim.warmup_ratio": 0.1,  # WarmupLinearLR: linear warm-up over 10 % of the steps
    "optim.grad_clip": 1.0,  # gradient clipping at norm 1.0
    "data.hflip_prob": 0.0,  # dataset.py img_rand_crop: resize, random crop, normalise; no flip in training
    "data.approximate_flips": False,  # no flips, so no flipped copies of targets either
    "teacher_weights": "pretrained",  # the teachers are pretrained (DPT-Large, RAFT-Large, DALL-E, Swin-B, ...)
    # "All variants are pre-trained on WebVid for 5 epochs", quoted from the paper in the official repository's issues
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


def build_card(df: pd.DataFrame, rows: Sequence[str], baseline: Mapping[str, Any] | None,
               cache: Mapping[str, Any] | None = None) -> ProtocolCard:
    """The card for the runs of `df` (a `load_runs` frame), described from its base cell; `cache` is
    the grid file's cache section, when known, for the frames' storage settings."""
    labels = df.attrs.get("labels", {})
    runs = df.drop_duplicates("run_id")
    records = runs.to_dict("records")
    cells = sorted({cell_of(r, rows) for r in records}, key=lambda c: tuple(natural(v) for v in c))
    base = {k: render_factor(v) for k, v in (baseline or {}).items()}
    # the baseline may fix only some row factors: then every cell it matches is the base
    chosen = [c for c in cells if all(c[rows.index(k)] == v for k, v in base.items() if k in rows)] if base else []
    if chosen:
        name, role = cell_name(base, labels), "baseline"
    else:
        chosen = cells[:1]
        name, role = (cell_name(dict(zip(rows, cells[0])), labels) if cells else "(no runs)"), "first cell"
    members = [r for r in records if cell_of(r, rows) in chosen]
    base_text = f"{name} ({role}, {len(members)} run{'s' * (len(members) != 1)})"
    axes = [(labels.get(f, f), ", ".join(format_value(v) for v in sorted({cell_value(r[f]) for r in records},
                                                                          key=natural)))
            for f in factor_columns(df)]
    seeds = sorted({r["seed"] for r in records if r["seed"] is not None and r["seed"] == r["seed"]})
    axes.append(("seed", ", ".join(str(s) for s in seeds) or "not recorded"))
    configs = [c for c in (parse_json(r["config"]) for r in members) if c]
    done = [r for r in records if r["state"] == "done"]
    if not configs:
        return ProtocolCard(base_text, [], axes, [], [], note="no config.yaml in the base cell's runs: "
                                                               "settings and deviations unknown")
    cfg = _Configs(configs, members)
    # the source of each target is shown when some run computes a target online or the grid varies it
    everywhere = [c for c in (parse_json(r["config"]) for r in records) if c]
    show_sources = (any(ONLINE in _sources(c).values() for c in everywhere)
                    or len({repr(config_value(c, "mvm.source", CACHED)) for c in everywhere}) > 1)
    # per-target options (e.g. a storage codec) are shown when some run of the grid gives any
    show_options = any(config_value(c, "mvm.options", {}) for c in everywhere)
    return ProtocolCard(base_text, _settings(cfg, members, done, cache or {}, show_sources, show_options), axes,
                        *_compare(cfg, done))


class _Configs:
    """The base cell's configs, read key by key: the distinct values of a key (several when a factor
    is pooled out of the rows), plus derived settings no single key holds (`EFFECTIVE`)."""

    def __init__(self, configs: Sequence[Mapping[str, Any]], members: Sequence[Mapping[str, Any]]) -> None:
        # batch_size is per process; final.json's world_size says how many processes a run had
        worlds = [int(r["world_size"]) for r in members if is_number(r.get("world_size")) and r["world_size"] > 0]
        self.world = max(worlds) if worlds else None
        self.configs = configs

    def values(self, key: str, default: Any = None) -> list[Any]:
        read = EFFECTIVE.get(key)
        seen: dict[str, Any] = {}
        for config in self.configs:
            value = read(config, self.world) if read else config_value(config, key, default)
            seen.setdefault(repr(tuple(value) if isinstance(value, list) else value), value)
        return list(seen.values())

    def text(self, key: str, default: Any = None) -> str:
        return " / ".join(_one(v) for v in self.values(key, default))

    def any(self, key: str, test: Any) -> bool:
        return any(test(v) for v in self.values(key))


def _paper_mode(config: Mapping[str, Any], key: str) -> Any:
    return RELEASED_P_MASK if config_value(config, "mask.paper", False) else config_value(config, key)


def _sources(config: Mapping[str, Any]) -> dict[str, str]:
    """ref -> "cached" | "online" for the targets of a saved config (older configs: all cached)."""
    source = config_value(config, "mvm.source", CACHED)
    return {ref: target_source(source, ref) for ref in config_value(config, "mvm.targets", []) or []}


def _sources_text(config: Mapping[str, Any]) -> str:
    return ", ".join(f"{ref} {source}" for ref, source in _sources(config).items()) or "no targets"


EFFECTIVE = {  # settings derived from several keys: (config, world size or None) -> value
    "finetune.frames": lambda c, w: config_value(c, "downstream.num_frames") or config_value(c, "data.num_frames"),
    "mask.video_ratio": lambda c, w: _paper_mode(c, "mask.ratio"),
    "mask.text_ratio_run": lambda c, w: _paper_mode(c, "mask.text_ratio"),
    "pretrain.batch": lambda c, w: config_value(c, "pretrain.optim.batch_size") * w if w else None,
    "mvm.sources": lambda c, w: _sources_text(c),
    "mvm.options_text": lambda c, w: format_value(config_value(c, "mvm.options", {}) or {}),
}


def _one(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        return "+".join(map(str, value)) if value else "none"
    if isinstance(value, float):
        return repr(value)  # shortest exact form: 1.0, 0.05, 5e-05
    return format_value(value)


def _same(value: Any, paper: Any) -> bool:
    if isinstance(paper, float) or isinstance(value, float):
        return is_number(value) and math.isclose(float(value), float(paper), rel_tol=1e-9)
    if isinstance(paper, tuple):
        return isinstance(value, (list, tuple)) and tuple(value) == paper
    return value == paper


def _teachers(done: Sequence[Mapping[str, Any]]) -> dict[str, Counter]:
    by_ref: dict[str, Counter] = {}
    for record in done:
        for ref, weights in (parse_json(record["teachers"]) or {}).items():
            by_ref.setdefault(ref, Counter())[weights or "no teacher"] += 1
    return by_ref


def _settings(cfg: _Configs, members: Sequence[Mapping[str, Any]], done: Sequence[Mapping[str, Any]],
              cache: Mapping[str, Any], show_sources: bool = False,
              show_options: bool = False) -> list[tuple[str, str]]:
    v = cfg.text

    def init(key: str, missing: str) -> str:
        return " / ".join(f"from {PurePath(w).name}" if w else missing for w in cfg.values(key))

    def trained(key: str) -> str:
        return " / ".join("frozen (backbone_lr_mult 0)" if m == 0 else f"trained (lr x {_one(m)})"
                          for m in cfg.values(key, 1.0))

    in_all = f", {v('pretrain.batch')} in all" if cfg.world else ""
    teachers = "; ".join(f"{ref}: {counted(c)}" for ref, c in sorted(_teachers(done).items()))
    frames = sorted({", ".join(f"{k} {format_value(f[k])}" for k in sorted(f))
                     for f in (parse_json(r["frames"]) for r in members) if f})
    return [
        ("video backbone", f"{v('model.video_backbone')}, {init('model.backbone_weights', 'random init')}; "
                           f"pretraining: {trained('pretrain.optim.backbone_lr_mult')}, "
                           f"finetuning: {trained('downstream.optim.backbone_lr_mult')}"),
        ("text", f"fusion {v('model.hidden')} wide x {v('model.layers')} layers x {v('model.heads')} heads, "
                 f"{init('model.text_weights', 'random init')}; tokenizer "
                 f"{init('data.tokenizer', 'trained on the captions')}"),
        ("frames", f"pretraining {v('data.num_frames')}, finetuning {v('finetune.frames')}"),
        ("size", f"{v('data.size')} px, {v('data.max_text_len')} text tokens"),
        ("masking", f"{v('mask.strategies')}, video ratio {v('mask.video_ratio')}, text ratio "
                    f"{v('mask.text_ratio_run')}, released-code mode (mask.paper) {v('mask.paper', False)}, "
                    f"video masked without MVM {v('mask.video_without_mvm', False)}"),
        ("MVM", f"targets {v('mvm.targets')}, normalization {v('mvm.normalization')}, weight {v('mvm.weight')}"
                + (f", source {v('mvm.sources')}" if show_sources else "")
                + (f", target options {v('mvm.options_text')}" if show_options else "")),
        ("pretraining", f"{v('pretrain.optim.steps')} steps, batch {v('pretrain.optim.batch_size')} per process"
                        f"{in_all}, lr {v('pretrain.optim.lr')}, temperature {v('pretrain.temperature')}, "
                        f"weight decay {v('pretrain.optim.weight_decay')}, warm-up {v('pretrain.optim.warmup_ratio')}"),
        ("finetuning", f"{v('downstream.tasks')}, {v('downstream.optim.steps')} steps, batch "
                       f"{v('downstream.optim.batch_size')}, lr {v('downstream.optim.lr')}, "
                       f"temperature {v('downstream.temperature')}"),
        ("flips", f"hflip_prob {v('data.hflip_prob')}, approximate flips {v('data.approximate_flips', False)}"),
        ("teachers (all done runs)", teachers or "none recorded"),
        ("cache frames", "; ".join(frames) or (f"compression {cache['compression']} (grid file)"
                                               if "compression" in cache else "codec/compression not recorded")),
    ]


# (label, key, paper key) of the settings compared value by value; the others need a sentence of their own
COMPARED = (
    ("video backbone", "model.video_backbone", "model.video_backbone"),
    ("fusion width", "model.hidden", "model.hidden"), ("fusion layers", "model.layers", "model.layers"),
    ("fusion heads", "model.heads", "model.heads"),
    ("pretraining frames", "data.num_frames", "data.num_frames"),
    ("finetuning frames", "finetune.frames", "downstream.num_frames"),
    ("size", "data.size", "data.size"), ("text tokens", "data.max_text_len", "data.max_text_len"),
    ("masking strategies", "mask.strategies", "mask.strategies"),
    ("MVM loss weight", "mvm.weight", "mvm.weight"),
    ("VTM negatives", "pretrain.vtm_negatives", "pretrain.vtm_negatives"),
    ("temperature", "pretrain.temperature", "pretrain.temperature"),
    ("finetuning temperature", "downstream.temperature", "downstream.temperature"),
    ("pretraining lr", "pretrain.optim.lr", "pretrain.optim.lr"),
    ("finetuning lr", "downstream.optim.lr", "downstream.optim.lr"),
    ("pretraining betas", "pretrain.optim.betas", "optim.betas"),
    ("pretraining weight decay", "pretrain.optim.weight_decay", "optim.weight_decay"),
    ("pretraining warm-up ratio", "pretrain.optim.warmup_ratio", "optim.warmup_ratio"),
    ("pretraining grad clip", "pretrain.optim.grad_clip", "optim.grad_clip"),
)


def _compare(cfg: _Configs, done: Sequence[Mapping[str, Any]]) -> tuple[list[str], list[str]]:
    deviations: list[str] = []
    matches: list[str] = []

    def check(label: str, key: str, paper: Any) -> None:
        if all(_same(value, paper) for value in cfg.values(key)):
            matches.append(f"{label} {cfg.text(key)}")
        else:
            deviations.append(f"{label} {cfg.text(key)} (paper {_one(paper)})")

    def either(deviates: bool, deviation: str, match: str = "") -> None:
        (deviations if deviates else matches).append(deviation if deviates else match)

    for label, key, paper_key in COMPARED:
        check(label, key, PAPER[paper_key])
    either(cfg.any("model.backbone_weights", lambda w: w is None),
           f"video backbone randomly initialised (paper: {PAPER['model.backbone_weights']})",
           "video backbone initialised from a weights file")
    for phase, key in (("pretraining", "pretrain.optim.backbone_lr_mult"),
                       ("finetuning", "downstream.optim.backbone_lr_mult")):
        if cfg.any(key, lambda m: m == 0):
            deviations.append(f"backbone frozen in {phase} (backbone_lr_mult 0; paper: trained, multiplier 1)")
        else:
            check(f"backbone lr multiplier in {phase}", key, PAPER["optim.backbone_lr_mult"])
    either(cfg.any("model.text_weights", lambda w: w is None),
           "text encoder not initialised from BERT (paper: bert-base-uncased)", "text encoder initialised from BERT")
    either(cfg.any("data.tokenizer", lambda t: t is None),
           "tokenizer trained on the captions (paper: bert-base-uncased WordPiece)", "BERT tokenizer")
    if cfg.any("mask.paper", bool):
        deviations.append(f"released-code masking (mask.paper): video ratio {RELEASED_P_MASK} whatever mask.ratio "
                          f"says, blockwise masking ignores the ratio (paper's final model: {PAPER['mask.ratio']})")
    else:
        check("video mask ratio", "mask.ratio", PAPER["mask.ratio"])
        check("text mask ratio", "mask.text_ratio", PAPER["mask.text_ratio"])
    if cfg.any("mask.video_without_mvm", lambda on: on is True):
        deviations.append("video masked without MVM (paper: clean video for the no-MVM baseline)")
    if not all(n == PAPER["mvm.normalization"] for n in cfg.values("mvm.normalization")):
        deviations.append(f"MVM loss normalization {cfg.text('mvm.normalization')} (official code: its per-target "
                          f"scaling, mvm.normalization {PAPER['mvm.normalization']})")
    if cfg.world:
        check("pretraining batch in all", "pretrain.batch", PAPER["pretrain.batch"])
    cached = sorted({ref for c in cfg.configs for ref, source in _sources(c).items() if source == CACHED})
    online = sorted({ref for c in cfg.configs for ref, source in _sources(c).items() if source == ONLINE})
    if cached:
        deviations.append(f"MVM targets read from the cache, computed once on the centre frames and cropped and "
                          f"flipped with them by their declared rules: {', '.join(cached)} (paper: computed "
                          f"{PAPER['mvm.source']} from the augmented clip)")
    elif online:
        matches.append(f"MVM targets computed {PAPER['mvm.source']} from the augmented clip")
    either(cfg.any("data.hflip_prob", lambda p: p is not None and p > 0),
           f"horizontal flips in pretraining (hflip_prob {cfg.text('data.hflip_prob')}; paper: none)",
           "no horizontal flips")
    if cfg.any("data.approximate_flips", lambda on: on is True):
        deviations.append("approximate flips on teacher targets (data.approximate_flips: cached targets are "
                          "flipped instead of recomputed on the flipped clip)")
    random_refs = {ref: c["random"] for ref, c in _teachers(done).items() if c.get("random")}
    if random_refs:
        deviations.append("random-weight teachers: " + ", ".join(
            f"{ref} ({n} run{'s' * (n != 1)})" for ref, n in sorted(random_refs.items()))
            + f" (paper: {PAPER['teacher_weights']})")
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
