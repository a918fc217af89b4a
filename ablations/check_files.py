"""`ablate check`, files: the backbone and text weights and the tokenizer in the form the trainer
loads them, and every downstream task's train and eval files."""

from __future__ import annotations

from pathlib import Path

from ablations.prepare_plan import CacheJob
from violet_core.config import DOWNSTREAM_TASKS, RunConfig

# The files each downstream task reads under data.source when `downstream.files` names none for it
# (violet_core.downstream.records): alternatives per role, any one of a group will do.
SYNTHETIC_FILES: dict[str, dict[str, tuple[tuple[str, ...], ...]]] = {
    "retrieval": {"train": (("splits.json",), ("captions.csv",)),
                  "eval": (("splits.json", "retrieval.json"), ("captions.csv", "retrieval.json"))},
    "qa_mc": {"train": (("qa_mc.jsonl",),), "eval": (("qa_mc.jsonl",),)},
    "qa_oe": {"train": (("qa_oe.jsonl",),), "eval": (("qa_oe.jsonl",),)},
}
BERT_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin", "model.safetensors.index.json",
                     "pytorch_model.bin.index.json")


def model_file_problems(config: RunConfig) -> list[str]:
    """Backbone weights, text weights and tokenizer that are missing or not in the form the trainer loads."""
    from violet_core.data.tokenizer import BERT_FILES

    problems = []
    backbone = config.model.backbone_weights
    if backbone and not Path(backbone).is_file():
        problems.append(f"model.backbone_weights: no such file {backbone}")
    text = config.model.text_weights
    if text:
        folder = Path(text)
        if not (folder / "config.json").is_file() or not any((folder / f).is_file() for f in BERT_WEIGHT_FILES):
            problems.append(f"model.text_weights: {folder} is not a BERT folder (config.json and "
                            f"{' or '.join(BERT_WEIGHT_FILES[:2])})")
    tokenizer = config.data.tokenizer
    if tokenizer and not any((Path(tokenizer) / f).is_file() for f in BERT_FILES):
        problems.append(f"data.tokenizer: {tokenizer} is not a folder with {' or '.join(BERT_FILES)}")
    return problems


def task_file_problems(config: RunConfig, job: CacheJob | None) -> list[str]:
    """Downstream task files that are missing (synthesised sources are written by the cache section)."""
    from violet_core.downstream.adapters import TASK_KINDS

    problems = []
    source = Path(config.data.source)
    synthesised = (job is not None and job.source is not None and bool(job.synth) and not job.source.exists()
                   and source.resolve() == job.source.parent.resolve())
    for task in config.downstream.tasks:
        if task not in DOWNSTREAM_TASKS:
            continue  # the config's own validation names it
        for role in ("train", "eval"):
            key = f"{task}_{role}"
            spec = config.downstream.files.get(key)
            if spec is not None:
                kind, _, path = spec.partition(":")
                if kind not in TASK_KINDS:
                    problems.append(f"downstream.files.{key}: unknown kind '{kind}' (kinds: {', '.join(TASK_KINDS)})")
                elif not Path(path).is_file():
                    problems.append(f"downstream.files.{key}: no such file {path}")
                continue
            if synthesised:
                continue
            for group in SYNTHETIC_FILES[task][role]:
                if not any((source / name).is_file() for name in group):
                    problems.append(f"downstream {task} ({role}) reads {source / group[0]}, which does not exist "
                                    f"(or name a benchmark file in downstream.files.{key})")
                    break
    return problems
