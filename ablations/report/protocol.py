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
from ablations.report.load import cell_name, cell_of, config_value, is_number, natural, parse_json, render_factor

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
    cfg = _Configs(configs, members)
    return ProtocolCard(base_text, _settings(cfg, members, done), axes, *_compare(cfg, done))


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


EFFECTIVE = {  # settings derived from several keys: (config, world size or None) -> value
    "finetune.frames": lambda c, w: config_value(c, "downstream.num_frames") or config_value(c, "data.num_frames"),
    "mask.video_ratio": lambda c, w: _paper_mode(c, "mask.ratio"),
    "mask.text_ratio_run": lambda c, w: _paper_mode(c, "mask.text_ratio"),
    "pretrain.batch": lambda c, w: config_value(c, "pretrain.optim.batch_size") * w if w else None,
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


def _settings(cfg: _Configs, members: Sequence[Mapping[str, Any]],
              done: Sequence[Mapping[str, Any]]) -> list[tuple[str, str]]:
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
        ("MVM", f"targets {v('mvm.targets')}, normalization {v('mvm.normalization')}, weight {v('mvm.weight')}"),
        ("pretraining", f"{v('pretrain.optim.steps')} steps, batch {v('pretrain.optim.batch_size')} per process"
                        f"{in_all}, lr {v('pretrain.optim.lr')}, temperature {v('pretrain.temperature')}, "
                        f"weight decay {v('pretrain.optim.weight_decay')}, warm-up {v('pretrain.optim.warmup_ratio')}"),
        ("finetuning", f"{v('downstream.tasks')}, {v('downstream.optim.steps')} steps, batch "
                       f"{v('downstream.optim.batch_size')}, lr {v('downstream.optim.lr')}, "
                       f"temperature {v('downstream.temperature')}"),
        ("flips", f"hflip_prob {v('data.hflip_prob')}, approximate flips {v('data.approximate_flips', False)}"),
        ("teachers (all done runs)", teachers or "none recorded"),
        ("cache frames", "; ".join(frames) or "codec/compression not recorded"),
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
    either(cfg.any("data.hflip_prob", lambda p: p is not None and p > 0),
           f"horizontal flips in pretraining (hflip_prob {cfg.text('data.hflip_prob')}; paper: none)",
           "no horizontal flips")
    if cfg.any("data.approximate_flips", lambda on: on is True):
        deviations.append("approximate flips on teacher targets (data.approximate_flips: cached targets are "
                          "flipped instead of recomputed on the flipped clip)")
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
