"""Downstream finetuning and evaluation: text-to-video retrieval, multiple-choice and open-ended QA.

Each runner gets its inputs as arguments: the model (already holding the pretrained weights), the
tokenizer, the run config, the cached clip keys, a `finetune` function (`finetuner`: the run's
engine) and the device. It finetunes the model for `downstream.optim.steps` on the train split and
evaluates on the eval split. Returns (metrics, chance) with keys such as "retrieval/R@1" and "qa_mc/acc".

Videos are read from the same frame cache as pretraining: a random grid-aligned crop and random
temporal window in training, the centre in evaluation. No horizontal flip: captions and answers
may name a direction ("moves left"), which a flip would contradict.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Collection, Iterator

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset

from mvm_targets.store.reader import CacheReader
from violet_core.config import OptimConfig, RunConfig
from violet_core.data.augment import check_crop_size, crop_clip, temporal_window
from violet_core.data.device_batch import normalize_video, to_device
from violet_core.data.tokenizer import TextTokenizer
from violet_core.downstream.adapters import load_task_file
from violet_core.downstream.metrics import (accuracy, chance_retrieval, mc_predictions, oe_accuracy,
                                            retrieval_metrics)
from violet_core.downstream.records import (McItem, OeItem, RetrievalSet, load_qa_mc, load_qa_oe, load_retrieval,
                                            load_retrieval_train_pairs, mc_text, oe_prompt)
from violet_core.loop import Engine, autocast
from violet_core.model import Violet
from violet_core.objectives import MultipleChoiceObjective, OpenEndedObjective, RetrievalObjective, pairwise_scores

Finetune = Callable[[nn.Module, Dataset, str], None]  # (objective, train dataset, task name)
Metrics = tuple[dict[str, float], dict[str, float]]  # (metrics, chance levels)
Runner = Callable[[Violet, TextTokenizer, RunConfig, Collection[str], Finetune, torch.device], Metrics]


class ClipVideos:
    """(T, S, S, 3) uint8 videos by key from the frame cache, with train-time jitter; the device
    normalises them (violet_core.data.device_batch, docs/method.md §1).

    `reader` should load frames only: downstream tasks never use the MVM targets.
    """

    def __init__(self, reader: CacheReader, num_frames: int, size: int) -> None:
        self.reader, self.num_frames, self.size = reader, num_frames, size

    def __call__(self, key: str, rng: np.random.Generator | None = None) -> torch.Tensor:
        clip = {"frames": self.reader[key]["frames"]}  # (T, S0, S0, 3) uint8
        total = clip["frames"].shape[0]
        if self.num_frames > total:
            raise ValueError(f"{key}: the cache holds {total} frames; the run asks for {self.num_frames}")
        side, wanted = check_crop_size(clip["frames"].shape[1], self.size)
        spare_t, spare_p = total - self.num_frames, side - wanted
        if rng is None:
            start, top, left = spare_t // 2, spare_p // 2, spare_p // 2
        else:
            start, top, left = (int(rng.integers(0, spare_t + 1)), int(rng.integers(0, spare_p + 1)),
                                int(rng.integers(0, spare_p + 1)))
        clip = temporal_window(clip, [], self.num_frames, start)
        if wanted != side:
            clip = crop_clip(clip, [], top, left, wanted)
        return torch.from_numpy(np.ascontiguousarray(clip["frames"]))


class _TaskDataset(Dataset):
    """Items -> video + text tensors; `train` adds jitter drawn from (seed, epoch, index)."""

    def __init__(self, items: list, videos: ClipVideos, encode: Callable, train: bool, seed: int) -> None:
        self.items, self.videos, self.encode, self.train, self.seed, self.epoch = items, videos, encode, train, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict:
        item = self.items[index]
        rng = np.random.default_rng([self.seed, self.epoch, index]) if self.train else None
        return {"video": self.videos(item[0] if isinstance(item, tuple) else item.key, rng), **self.encode(item)}


def _collate(items: list[dict]) -> dict:
    return {key: torch.stack([item[key] for item in items]) for key in items[0]}


def finetuner(engine: Engine, model: nn.Module, optim: OptimConfig) -> Finetune:
    """The runners' `finetune`: `optim.steps` steps of `objective` on `dataset`, the model's weights
    trained in place by `engine`. No checkpoint: a task killed part-way starts over."""

    def finetune(objective: nn.Module, dataset: Dataset, task: str) -> None:
        if optim.steps > 0:
            engine.fit(task, model, objective, dataset, _collate, optim)

    return finetune


def _eval_batches(dataset: Dataset, batch_size: int, device: torch.device) -> Iterator[dict]:
    for start in range(0, len(dataset), batch_size):
        yield to_device(_collate([dataset[i] for i in range(start, min(start + batch_size, len(dataset)))]), device)


def _frames(config: RunConfig) -> ClipVideos:
    data = config.data
    frames_only = CacheReader(Path(data.cache), data.dataset, targets=(), frames_id=data.frames_id)
    return ClipVideos(frames_only, config.downstream.num_frames or data.num_frames, data.size)


def task_records(config: RunConfig, keys: Collection[str], task: str, role: str,
                 synthetic: Callable[[Path, str, set[str]], object]):
    """Records for `task` (`role` train or eval) of the clips `keys`: from `downstream.files` when the
    config names a benchmark file for it, else from the synthetic dataset layout under `data.source`."""
    downstream, keep = config.downstream, set(keys)
    spec = downstream.files.get(f"{task}_{role}")
    if spec is None:
        split = downstream.train_split if role == "train" else downstream.eval_split
        return synthetic(Path(config.data.source), split, keep)
    kind, _, path = spec.partition(":")
    return load_task_file(path, kind, downstream.key_format, keep)


def _text_encoder(tokenizer: TextTokenizer, max_len: int) -> Callable[[list[str]], tuple[torch.Tensor, torch.Tensor]]:
    return lambda texts: tokenizer.encode(texts, max_len)


def task_text_len(config: RunConfig, task: str) -> int:
    """Tokens per text for `task`: downstream.max_text_len[task], else data.max_text_len."""
    return config.downstream.max_text_len.get(task, config.data.max_text_len)


# --- retrieval -------------------------------------------------------------------------------


def run_retrieval(model: Violet, tokenizer: TextTokenizer, config: RunConfig, keys: Collection[str],
                  finetune: Finetune, device: torch.device) -> Metrics:
    encode = _text_encoder(tokenizer, task_text_len(config, "retrieval"))
    train = task_records(config, keys, "retrieval", "train", _retrieval_pairs)
    pairs = train.pairs() if isinstance(train, RetrievalSet) else train

    def encode_pair(pair: tuple[str, str]) -> dict:
        ids, mask = encode([pair[1]])
        return {"text_ids": ids[0], "text_mask": mask[0]}

    videos = _frames(config)
    # paper mode sums the two directions, as the official NormSoftmaxLoss (docs/method.md section 5)
    reduction = "sum" if config.mask.paper else "mean"
    finetune(RetrievalObjective(model, config.downstream.temperature, reduction),
             _TaskDataset(pairs, videos, encode_pair, True, config.seed), "retrieval")
    test = task_records(config, keys, "retrieval", "eval", load_retrieval)
    scores = score_retrieval(model, tokenizer, config, test, videos, device)
    metrics = {f"retrieval/{k}": float(v) for k, v in retrieval_metrics(scores, test.caption_to_video).items()}
    chance = {f"retrieval/{k}": float(v) for k, v in chance_retrieval(test.n_video).items()}
    return metrics, chance


@torch.no_grad()
def score_retrieval(model: Violet, tokenizer: TextTokenizer, config: RunConfig, test: RetrievalSet,
                    videos: ClipVideos, device: torch.device) -> np.ndarray:
    """Cross-encode every caption with every video (as the official evaluation): (N_text, N_video)."""
    model, batch_size = model.eval(), config.downstream.eval_batch_size
    ids, mask = tokenizer.encode(list(test.captions), task_text_len(config, "retrieval"))
    scores = torch.zeros(len(test.captions), len(test.videos))
    with autocast(device, config.precision):
        texts, keep = model.embed_text(ids.to(device)), mask.to(device)
        for start in range(0, len(test.videos), batch_size):
            clip = torch.stack([videos(key) for key in test.videos[start:start + batch_size]])
            clip = normalize_video(clip.to(device, non_blocking=True))
            video_tokens, grid = model.encode_video(clip)
            step = max(1, batch_size // len(clip))  # about batch_size fused pairs per pass
            for first in range(0, len(test.captions), step):
                block = pairwise_scores(model, video_tokens, grid, texts[first:first + step], keep[first:first + step])
                scores[first:first + step, start:start + len(clip)] = block.float().cpu()
    return scores.numpy()


# --- multiple-choice QA ---------------------------------------------------------------------


def _retrieval_pairs(source: Path, split: str, keep: set[str]) -> list[tuple[str, str]]:
    return load_retrieval_train_pairs(source, split, keep=keep)


def run_qa_mc(model: Violet, tokenizer: TextTokenizer, config: RunConfig, keys: Collection[str],
              finetune: Finetune, device: torch.device) -> Metrics:
    encode = _text_encoder(tokenizer, task_text_len(config, "qa_mc"))

    def encode_item(item: McItem) -> dict:
        ids, mask = encode([mc_text(item.question, option) for option in item.options])
        return {"option_ids": ids, "option_mask": mask, "answer": torch.tensor(item.answer)}

    videos = _frames(config)
    objective = MultipleChoiceObjective(model)
    finetune(objective, _TaskDataset(task_records(config, keys, "qa_mc", "train", load_qa_mc), videos,
                                     encode_item, True, config.seed), "qa_mc")
    test = _TaskDataset(task_records(config, keys, "qa_mc", "eval", load_qa_mc), videos, encode_item, False,
                        config.seed)
    model.eval()
    predictions, gold = [], []
    with torch.no_grad(), autocast(device, config.precision):
        for batch in _eval_batches(test, max(1, config.downstream.eval_batch_size // 5), device):
            predictions += mc_predictions(objective.option_scores(batch).float().cpu()).tolist()
            gold += batch["answer"].cpu().tolist()
    options = len(test.items[0].options) if test.items else 1
    return {"qa_mc/acc": accuracy(predictions, gold), "qa_mc/n": float(len(gold))}, {"qa_mc/acc": 100.0 / options}


# --- open-ended QA ----------------------------------------------------------------------------


def run_qa_oe(model: Violet, tokenizer: TextTokenizer, config: RunConfig, keys: Collection[str],
              finetune: Finetune, device: torch.device) -> Metrics:
    length = task_text_len(config, "qa_oe")
    length_key = "downstream.max_text_len.qa_oe" if "qa_oe" in config.downstream.max_text_len else "data.max_text_len"

    def encode_item(item: OeItem) -> dict:
        ids, mask = tokenizer.encode([oe_prompt(item.question, tokenizer.decode_token(tokenizer.mask_id))], length)
        positions = (ids[0] == tokenizer.mask_id).nonzero()
        if len(positions) == 0:
            raise ValueError(f"{item.key}: question too long for {length_key}={length}")
        answer = tokenizer.token_id(item.answer)
        return {"text_ids": ids[0], "text_mask": mask[0], "mask_position": positions[-1, 0],
                "answer_id": torch.tensor(-100 if answer is None else answer)}

    videos = _frames(config)
    objective = OpenEndedObjective(model)
    finetune(objective, _TaskDataset(task_records(config, keys, "qa_oe", "train", load_qa_oe), videos,
                                     encode_item, True, config.seed), "qa_oe")
    items = task_records(config, keys, "qa_oe", "eval", load_qa_oe)
    test = _TaskDataset(items, videos, encode_item, False, config.seed)
    model.eval()
    predictions = []
    with torch.no_grad(), autocast(device, config.precision):
        for batch in _eval_batches(test, config.downstream.eval_batch_size, device):
            predictions += objective.answer_logits(batch).argmax(dim=-1).cpu().tolist()
    answers = [item.answer for item in items]
    vocabulary = len({a for a in answers})
    return ({"qa_oe/acc": oe_accuracy(predictions, answers, tokenizer.token_id), "qa_oe/n": float(len(items))},
            {"qa_oe/acc": 100.0 / max(1, vocabulary)})


DOWNSTREAM_RUNNERS: dict[str, Runner] = {
    "retrieval": run_retrieval, "qa_mc": run_qa_mc, "qa_oe": run_qa_oe,
}


def task_corpus(source: Path) -> list[str]:
    """Every question, option and answer of the dataset's QA files, so a trained tokenizer covers them."""
    texts: list[str] = []
    for split in ("train", "val", "test"):
        for loader in (load_qa_mc, load_qa_oe):
            try:
                items = loader(source, split)
            except (FileNotFoundError, ValueError):
                continue
            for item in items:
                texts.append(item.question)
                texts += list(getattr(item, "options", ())) or [str(item.answer)]
    return texts
