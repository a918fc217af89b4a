"""The pretraining task (docs/method.md §2-§5): MLM, VTM and MVM on the cached clips, resumable.

`pretrain` trains the model in place on the train split of the cache, through `PretrainObjective`,
and leaves `pretrain.json` and `checkpoints/pretrained.pt` in the run folder; a run that finds them
loads the weights instead. The engine (violet_core.loop.Engine) runs the steps, the log and the
resumable checkpoints.
"""

from __future__ import annotations

from pathlib import Path

import torch

from mvm_targets.store.reader import CacheReader
from violet_core import distributed
from violet_core.config import RunConfig, augments_on_device
from violet_core.data.pretrain import PretrainDataset, collate_pretrain, split_keys
from violet_core.data.tokenizer import TextTokenizer
from violet_core.loop import Engine
from violet_core.masking import MaskSampler
from violet_core.model import Violet
from violet_core.objectives import PretrainObjective
from violet_core.online_targets import OnlineTargets, online_fill
from violet_core.target_info import TargetInfo


def pretrain(model: Violet, infos: list[TargetInfo], tokenizer: TextTokenizer, reader: CacheReader,
             online: OnlineTargets | None, config: RunConfig, engine: Engine) -> dict[str, float]:
    """Pretrain `model` for `pretrain.optim.steps` steps; returns the mean of each loss over the last
    log window (a finished pretraining's, read back, when the run folder already holds one).

    infos: the MVM targets in head order; reader: the cache of frames and cached targets; online:
    the targets computed in the step from the augmented clip (docs/method.md §11), or None.
    """
    run_dir = engine.run_dir
    if run_dir.pretrained.exists():
        model.load_state_dict(torch.load(run_dir.pretrained, map_location=engine.device, weights_only=True))
        return (run_dir.read_json("pretrain.json") or {}).get("losses", {})
    data = config.data
    keys = split_keys(Path(data.source), "train", reader.keys)
    dataset = PretrainDataset(reader, infos, tokenizer, keys, data.num_frames, data.size, data.max_text_len,
                              data.hflip_prob, data.random_crop, seed=config.seed,
                              approximate_flips=data.approximate_flips,
                              device_augment=augments_on_device(data, engine.device.type))
    sampler = MaskSampler(config.mask.strategies, config.mask.ratio, config.mask.text_ratio, config.mask.paper,
                          video_without_mvm=config.mask.video_without_mvm)
    objective = PretrainObjective(model, sampler, tokenizer.mask_id, config.pretrain.vtm_negatives,
                                  config.pretrain.temperature, config.mvm.weight)
    # each rank draws its own masks; the generator's state goes into every checkpoint
    mask_rng = torch.Generator().manual_seed(config.seed * 7919 + engine.dist.rank)

    def inputs(batch: dict) -> tuple:
        return batch, mask_rng, tokenizer.special_mask(batch["text_ids"])

    losses, steps = engine.fit("pretrain", model, objective, dataset, collate_pretrain, config.pretrain.optim,
                               fill=online_fill(online), inputs=inputs, checkpoint=run_dir.checkpoint,
                               checkpoint_every=config.pretrain.checkpoint_every, generators={"mask": mask_rng})
    if engine.dist.is_main:
        run_dir.write_json("pretrain.json", {"losses": losses, "steps": steps})
        # written last and atomically: its presence is what marks pretraining as done
        run_dir.save_checkpoint(run_dir.pretrained, model.state_dict())
        run_dir.checkpoint.unlink(missing_ok=True)  # pretrained.pt supersedes it
    distributed.barrier(engine.dist)
    return losses
