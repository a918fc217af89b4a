"""One run = one YAML file, loaded into frozen dataclasses; unknown keys are errors, not silence.

Every field has a default, so a config file only states what differs from them. The resolved
config (all fields) is written into the run directory, and its canonical JSON is what run ids
and the harness hash.
"""

from __future__ import annotations

import dataclasses
import json
import typing
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Mapping

import yaml

from mvm_targets.names import name_problem
from mvm_targets.settings import setting_problem
from violet_core.config_parsing import ConfigError, apply_overrides, build_dataclass, read_yaml_mapping


MASK_STRATEGIES = ("rm", "bm", "am")
CACHED, ONLINE = "cached", "online"
MVM_SOURCES = (CACHED, ONLINE)  # values of mvm.source (docs/method.md §11)
DOWNSTREAM_TASKS = ("retrieval", "qa_mc", "qa_oe")


@dataclass(frozen=True)
class DataConfig:
    cache: str = "cache"  # shard store root
    dataset: str = "synthetic"  # dataset name inside the store
    frames_id: str | None = None  # which sampling configuration, when the dataset has several
    source: str = "data/synthetic"  # folder with splits.json / retrieval.json / qa_*.jsonl
    num_frames: int = 4
    size: int = 224  # training crop; grid-aligned random crop when the cache is larger
    max_text_len: int = 32
    hflip_prob: float = 0.5
    # flip targets that refuse flips anyway: mirrors the cached target, which is not what the teacher
    # gives on the mirrored clip (off: such a run stops before training and says so)
    approximate_flips: bool = False
    random_crop: bool = True
    # where the frames are cropped and flipped: loader (per item, in the workers) | device (the whole
    # batch, on the training device, by the same draws) | auto (device on CUDA, loader elsewhere)
    augment_on: str = "auto"
    num_workers: int = 0
    tokenizer: str | None = None  # local bert-base-uncased folder; None trains a WordPiece on the captions
    vocab_size: int = 4000  # for the trained tokenizer


AUGMENT_ON = ("auto", "loader", "device")


def augments_on_device(data: DataConfig, device_type: str) -> bool:
    """Whether the training device crops and flips the frames (`data.augment_on`; auto: on CUDA)."""
    return data.augment_on == "device" or (data.augment_on == "auto" and device_type == "cuda")


@dataclass(frozen=True)
class ModelConfig:
    video_backbone: str = "tiny"  # a mvm_targets Video Swin preset: tiny | swin-t | swin-s | swin-b
    backbone_weights: str | None = None  # official Video Swin .pth or torchvision swin3d state dict
    text_weights: str | None = None  # local bert-base-uncased folder (initialises embeddings + fusion)
    hidden: int = 128
    layers: int = 2
    heads: int = 2
    intermediate: int = 512
    dropout: float = 0.1
    init_std: float = 0.02  # BERT's initializer_range; small models learn faster with ~1/sqrt(hidden)
    max_frames: int = 8  # temporal embedding table size
    max_patches: int = 196  # spatial embedding table size (14 x 14 grid at 448 px)
    grad_checkpointing: bool = False
    # torch.compile the video encoder and the fusion encoder (violet_core/compiled.py): faster steps on a
    # GPU after a compile of a minute or more at start-up; on a CPU the compile rarely pays
    compile: bool = False


@dataclass(frozen=True)
class MaskConfig:
    strategies: tuple[str, ...] = ("rm", "bm")  # per-sample mixture
    ratio: float = 0.3  # video ratio (the paper's final model)
    text_ratio: float = 0.15
    # released behaviour: p_mask 0.15 everywhere, BM ignores the ratio, AM draws video and text jointly;
    # also sums the two directions of the retrieval loss (docs/method.md section 5)
    paper: bool = False
    video_without_mvm: bool = False  # mask the video even with no MVM target (the official code does not)


@dataclass(frozen=True)
class OnlineTeachersConfig:
    """How the targets of `mvm.source: online` are built, with the names a grid's cache section uses
    for extraction (ablations/prepare.py): the same settings give the same teacher either way. Their
    per-target options are `mvm.options`, shared with cached targets."""

    weights: str = "pretrained"  # pretrained (local files) | random (smoke tests)
    weights_dir: str | None = None  # folder of teacher weights; None: $MVM_WEIGHTS


@dataclass(frozen=True)
class MvmConfig:
    targets: tuple[str, ...] = ()  # cache refs, e.g. ["sif"], ["hog", "flow:dis"]; empty = no MVM
    # where each target comes from (docs/method.md §11): "cached" reads it from the shard store and
    # augments it with the frames; "online" computes it inside the training step from the augmented
    # clip, as the official code does. A mapping {ref: cached|online} sets it per target (unlisted: cached).
    source: str | dict[str, str] = "cached"
    online: OnlineTeachersConfig = field(default_factory=OnlineTeachersConfig)
    # per-target options, keyed by a ref of `targets` or its target name: {hog: {codec: int8}}. For a cached
    # target they pick the cached set those options wrote (the storage codec, or a factory option such as
    # {flow: {preset: fast}}); an online target is built with them (docs/method.md §8.1, §11)
    options: dict[str, dict[str, Any]] = field(default_factory=dict)
    normalization: str = "mean"  # "mean" per element, or "paper" for the official scaling (docs/method.md §5)
    weight: float = 1.0
    # official pair rule: drop a flow pair whose largest absolute component max(|u|, |v|) over its pixels
    # reaches this many px (not the Euclidean |(u, v)|); null keeps all pairs
    flow_max_magnitude: float | None = 50.0

    def options_of(self, ref: str) -> dict[str, Any] | None:
        """The options `options` gives target `ref` (keyed by the ref, else by its name); None when none."""
        from mvm_targets.store.selection import options_for

        return options_for(self.options, ref)

    def source_of(self, ref: str) -> str:
        """"cached" or "online": where target `ref` comes from in this run."""
        return target_source(self.source, ref)

    @property
    def online_targets(self) -> tuple[str, ...]:
        """The refs of `targets` computed in the training step, in config order."""
        return tuple(ref for ref in self.targets if self.source_of(ref) == ONLINE)

    @property
    def cached_targets(self) -> tuple[str, ...]:
        """The refs of `targets` read from the cache, in config order."""
        return tuple(ref for ref in self.targets if self.source_of(ref) == CACHED)


@dataclass(frozen=True)
class OptimConfig:
    steps: int = 100
    batch_size: int = 8
    lr: float = 5e-5
    backbone_lr_mult: float = 1.0
    weight_decay: float = 1e-3
    betas: tuple[float, float] = (0.9, 0.98)
    warmup_ratio: float = 0.1
    grad_clip: float = 1.0


@dataclass(frozen=True)
class PretrainConfig:
    optim: OptimConfig = field(default_factory=OptimConfig)
    vtm_negatives: int = 3  # in-batch negatives per video (official: min(B, 4) texts in all)
    temperature: float = 0.05
    log_every: int = 10
    checkpoint_every: int = 50


@dataclass(frozen=True)
class DownstreamConfig:
    tasks: tuple[str, ...] = ("retrieval",)
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(steps=50, lr=2e-5))
    num_frames: int | None = None  # None: the pretraining frame count
    train_split: str = "train"
    eval_split: str = "test"
    temperature: float = 0.05
    eval_batch_size: int = 32
    # public benchmark files instead of the synthetic layout: "<task>_<train|eval>" -> "<kind>:<path>",
    # e.g. {retrieval_eval: "msrvtt_retrieval:data/msrvtt/test_1k.json"}; kinds: violet_core.downstream.adapters
    files: dict[str, str] = field(default_factory=dict)
    key_format: str = "{video_id}"  # maps a file's video id to a cache key, e.g. "videos/{video_id}"
    # tokens per text for a task, e.g. {qa_mc: 100} (the official finetuning uses 25, 100 for long texts);
    # tasks not listed use data.max_text_len
    max_text_len: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class RunConfig:
    name: str = "run"
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda
    precision: str = "auto"  # auto (bf16 autocast on CUDA, fp32 on CPU) | fp32 | bf16
    out_dir: str = "runs"
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    mask: MaskConfig = field(default_factory=MaskConfig)
    mvm: MvmConfig = field(default_factory=MvmConfig)
    pretrain: PretrainConfig = field(default_factory=PretrainConfig)
    downstream: DownstreamConfig = field(default_factory=DownstreamConfig)

    def to_dict(self) -> dict[str, Any]:
        return _plain(dataclasses.asdict(self))

    def canonical_json(self) -> str:
        """Key-sorted JSON of every field: the identity of a run's settings."""
        return json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))


def load_config(path: str | Path, overrides: dict[str, Any] | None = None) -> RunConfig:
    """Read a YAML run config, apply dotted overrides (`{"mvm.targets": ["sif"]}`), and validate."""
    path = Path(path)
    raw = read_yaml_mapping(path, "run config", ConfigError)
    try:
        return config_from_dict(apply_overrides(raw, overrides or {}))
    except ConfigError as error:
        raise ConfigError(f"{path}: {error}") from None


def target_source(source: str | Mapping[str, str], ref: str) -> str:
    """Where target `ref` comes from under an `mvm.source` value (a string, or a mapping per ref with
    unlisted refs cached); also reads the plain dict of a saved config."""
    return source if isinstance(source, str) else str(source.get(ref, CACHED))


def config_from_dict(raw: dict[str, Any]) -> RunConfig:
    online = (raw.get("mvm") or {}).get("online") if isinstance(raw.get("mvm"), dict) else None
    if isinstance(online, dict) and "options" in online:
        raise ConfigError("'mvm.online.options': per-target options are 'mvm.options', shared by cached and "
                          "online targets (e.g. mvm.options: {<name>: {<key>: value}})")
    config = build_dataclass(RunConfig, raw, "")
    validate(config)
    return config


def save_config(config: RunConfig, path: Path) -> None:
    path.write_text(yaml.safe_dump(config.to_dict(), sort_keys=False))


def validate(config: RunConfig) -> None:
    """Checks across fields that types alone do not catch."""
    def need(condition: bool, key: str, message: str) -> None:
        if not condition:
            raise ConfigError(f"'{key}': {message}")

    need(config.device in ("auto", "cpu", "cuda") or config.device.startswith("cuda:"), "device",
         f"'{config.device}' is not auto, cpu or cuda[:N]")
    # both name a folder (<out_dir>/<name>, <data.cache>/<data.dataset>): a path would leave its parent
    for key, value in (("name", config.name), ("data.dataset", config.data.dataset)):
        need(name_problem(value) is None, key, str(name_problem(value)))
    need(config.precision in ("auto", "fp32", "bf16"), "precision", f"'{config.precision}' is not auto, fp32 or bf16")
    need(config.data.num_frames >= 1, "data.num_frames", "must be at least 1")
    need(config.data.size % 32 == 0 and config.data.size > 0, "data.size",
         f"{config.data.size} is not a positive multiple of 32 (one video token per 32-px patch)")
    need(0.0 <= config.data.hflip_prob <= 1.0, "data.hflip_prob", "must lie in [0, 1]")
    need(config.data.augment_on in AUGMENT_ON, "data.augment_on",
         f"'{config.data.augment_on}' is not {', '.join(AUGMENT_ON[:-1])} or {AUGMENT_ON[-1]}")
    unknown = [s for s in config.mask.strategies if s not in MASK_STRATEGIES]
    need(not unknown and bool(config.mask.strategies), "mask.strategies",
         f"{list(config.mask.strategies)} must be a non-empty subset of {list(MASK_STRATEGIES)}")
    need(0.0 < config.mask.ratio <= 1.0, "mask.ratio", f"{config.mask.ratio} is not in (0, 1]")
    need(0.0 <= config.mask.text_ratio <= 1.0, "mask.text_ratio", f"{config.mask.text_ratio} is not in [0, 1]")
    need(config.mvm.normalization in ("mean", "paper"), "mvm.normalization",
         f"'{config.mvm.normalization}' is not mean or paper")
    need(len(set(config.mvm.targets)) == len(config.mvm.targets), "mvm.targets", "lists a target twice")
    _check_mvm_source(config.mvm, need)
    _check_mvm_options(config.mvm, need)
    need(config.model.hidden % config.model.heads == 0, "model.hidden",
         f"{config.model.hidden} is not divisible by model.heads={config.model.heads}")
    need(config.data.num_frames <= config.model.max_frames, "data.num_frames",
         f"{config.data.num_frames} exceeds model.max_frames={config.model.max_frames}")
    for key, value in config.downstream.files.items():
        task, _, role = key.rpartition("_")
        need(task in DOWNSTREAM_TASKS and role in ("train", "eval") and ":" in value, f"downstream.files.{key}",
             f"expected <task>_<train|eval>: <kind>:<path> with task in {list(DOWNSTREAM_TASKS)}, got {value!r}")
    for task, length in config.downstream.max_text_len.items():
        need(task in DOWNSTREAM_TASKS, f"downstream.max_text_len.{task}",
             f"unknown task; choose from {list(DOWNSTREAM_TASKS)}")
        # the text position table has max(512, data.max_text_len) rows (violet_core/model.py)
        need(2 <= length <= max(512, config.data.max_text_len), f"downstream.max_text_len.{task}",
             f"{length} must leave room for [CLS] and [SEP] and fit {max(512, config.data.max_text_len)} positions")
    unknown_tasks = [t for t in config.downstream.tasks if t not in DOWNSTREAM_TASKS]
    need(not unknown_tasks, "downstream.tasks", f"unknown {unknown_tasks}; choose from {list(DOWNSTREAM_TASKS)}")
    for section in ("pretrain", "downstream"):
        optim = getattr(config, section).optim
        need(optim.steps >= 0, f"{section}.optim.steps", "must be >= 0")
        need(optim.batch_size >= 2, f"{section}.optim.batch_size", "must be >= 2 (VTM needs in-batch negatives)")
        need(0.0 <= optim.warmup_ratio <= 1.0, f"{section}.optim.warmup_ratio", "must lie in [0, 1]")


def _check_mvm_source(mvm: MvmConfig, need: Any) -> None:
    """mvm.source names a source per target (a string for all of them, or a mapping per listed ref),
    and mvm.online.weights is a weights mode."""
    choices = " or ".join(MVM_SOURCES)
    if isinstance(mvm.source, str):
        need(mvm.source in MVM_SOURCES, "mvm.source", f"'{mvm.source}' is not {choices}")
    else:
        for ref, source in mvm.source.items():
            need(ref in mvm.targets, "mvm.source",
                 f"'{ref}' is not among mvm.targets {list(mvm.targets)}")
            need(source in MVM_SOURCES, "mvm.source", f"{ref}: '{source}' is not {choices}")
    problem = setting_problem("weights", mvm.online.weights)
    need(problem is None, "mvm.online.weights", str(problem))


def _check_mvm_options(mvm: MvmConfig, need: Any) -> None:
    """Every key of mvm.options names a ref of mvm.targets or its target name, a codec is a known one, and
    an online target takes no storage codec (it is never stored)."""
    from mvm_targets.store.codecs import CodecError, codec_named
    from mvm_targets.store.selection import CODEC_OPTION, options_for

    for key, options in mvm.options.items():
        need(any(options_for({key: {}}, ref) is not None for ref in mvm.targets), "mvm.options",
             f"'{key}' is not among mvm.targets {list(mvm.targets)} (name a target or its reference)")
        if CODEC_OPTION in options:
            try:
                codec_named(options[CODEC_OPTION])
            except CodecError as error:
                need(False, "mvm.options", f"{key}: {error}")
    for ref in mvm.online_targets:
        own = mvm.options_of(ref) or {}
        need(CODEC_OPTION not in own, "mvm.options",
             f"{ref}: '{CODEC_OPTION}' is how a cached target is stored, but {ref} is computed online (mvm.source)")


def field_paths(cls: type = RunConfig, prefix: str = "") -> list[str]:
    """Every dotted leaf key of the config, e.g. `mask.ratio`, for validating grid axes."""
    paths = []
    hints = typing.get_type_hints(cls)
    for item in fields(cls):
        kind = hints[item.name]
        if dataclasses.is_dataclass(kind):
            paths += field_paths(kind, f"{prefix}{item.name}.")
        else:
            paths.append(f"{prefix}{item.name}")
    return paths


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value
