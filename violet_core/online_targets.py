"""Online MVM targets (`mvm.source: online`): computed in the training step from the augmented clip.

A cached target is computed once, on the canonical centre frames, and then follows the trainer's
flip and crop by its declared rules (violet_core.data.augment). The official VIOLETv2 code runs its
teachers inside the training step on the clip the student sees, so crops and flips are exact by
construction. An online target does the same (docs/method.md §11): the dataset hands over the
augmented clip as the uint8 video, and `OnlineTargets.fill` runs each target's `compute` on it, before
the batch is normalised on the device, and writes the result into the batch exactly where and how the
dataset puts a cached target:

    batch["video"]               (B, T, S, S, 3) uint8, the augmented clips (violet_core.data.pretrain)
    batch["targets"][key]        the target's training layout (`target_tensor`), B first (key: `ref_key`)
    batch["targets_as_input"]    the refs among them that are normalised like the video (`normalize_as_input`)
    batch["extras"]["key/name"]  each extra the target returns beside "data" (e.g. a per-pair statistic)

The targets are built by the one builder of mvm_targets (`build_targets`), with the settings a grid's
cache section uses for extraction (device, weights, weights_dir) and the run's per-target `mvm.options`,
so an online target is the teacher that would have filled the cache. Nothing here depends on which target it is.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np
import torch

from mvm_targets.errors import MvmTargetsError
from violet_core.config import ONLINE, ConfigError, MvmConfig
from violet_core.data.device_batch import AS_INPUT
from violet_core.data.pretrain import extra_tensor, target_tensor
from violet_core.target_info import TargetInfo


class OnlineTargets:
    """The online targets of a run: their `TargetInfo`s (for the model's heads) and `fill` (per step).

    Args:
        refs: the online target references, in the order of `mvm.targets`.
        runtime: settings passed to every factory that accepts them (device, weights, weights_dir).
        options: per-target options keyed by reference or target name, e.g. {"<name>": {"<key>": value}}
            (`mvm.options`; an entry keyed by the reference wins over one keyed by its name).
        num_frames, size: the cached clips' T and S. Each info's spec is the built target's spec at
            that geometry, the spec the target's shard set would carry had it been extracted, so the
            heads are those of the cached run.
    Raises:
        ConfigError: a target's factory does not take an option of `mvm.options`.
        MvmTargetsError: an unknown target, or one that cannot be built here (e.g. missing weights).
    """

    def __init__(self, refs: Sequence[str], runtime: Mapping[str, Any], options: Mapping[str, Mapping[str, Any]],
                 num_frames: int, size: int) -> None:
        from mvm_targets.store.selection import options_for
        from mvm_targets.targets.build import TargetOptionError, build_targets
        from mvm_targets.targets.registry import parse_target_ref

        self.targets: dict[str, Any] = {}
        for ref in refs:  # one at a time: two refs of one target may take different options
            own = options_for(options, ref)
            try:
                per_name = {parse_target_ref(ref)[0]: own} if own else None
                (self.targets[ref],) = build_targets([ref], runtime, per_name)
            except TargetOptionError as error:
                raise ConfigError(f"'mvm.options': {error}") from None
        # teacher_weights as extraction stamps it into a shard set: "random" marks smoke-test teachers
        self.infos = [TargetInfo(ref, target.spec.stored_spec(num_frames, size),
                                 teacher_weights=str(target.spec.params.get("weights", "") or ""), source=ONLINE)
                      for ref, target in self.targets.items()]

    @classmethod
    def from_config(cls, mvm: MvmConfig, device: torch.device | str, num_frames: int,
                    size: int) -> "OnlineTargets | None":
        """The run's online targets (None when every target is cached); teachers run on `device`."""
        if not mvm.online_targets:
            return None
        settings = mvm.online
        runtime = {"device": str(device), "weights": settings.weights,
                   "weights_dir": Path(settings.weights_dir) if settings.weights_dir else None}
        try:
            return cls(mvm.online_targets, runtime, mvm.options, num_frames, size)
        except MvmTargetsError as error:
            raise MvmTargetsError(f"mvm.source: online target: {error}") from None

    @property
    def refs(self) -> list[str]:
        return list(self.targets)

    @torch.no_grad()
    def fill(self, batch: dict[str, Any]) -> dict[str, Any]:
        """The batch with every online target computed from batch["video"] (B, T, S, S, 3) uint8, on
        the video's device; a batch not yet normalised (`BatchStream` fills it before it normalises).

        The whole batch goes through each target's `compute` in one call, as extraction computes a
        batch of clips, so a teacher runs at the batch size the step runs at; targets are per clip by
        contract (a clip's values do not depend on its batch-mates, up to floating-point rounding). A
        1-frame batch leaves out the targets that need a video, as the dataset does for cached ones.
        Call it outside autocast: a teacher must run at its own precision, as it did for the cache.
        """
        video = batch.get("video")
        if not isinstance(video, torch.Tensor) or video.dtype != torch.uint8 or video.ndim != 5 or video.shape[-1] != 3:
            got = f"{tuple(video.shape)} {video.dtype}" if isinstance(video, torch.Tensor) else type(video).__name__
            raise ValueError(f"online MVM targets need the augmented clips as the batch's uint8 video (B, T, S, S, 3), "
                             f"got {got}: fill the batch before it is normalised")
        frames = video.cpu().numpy()
        targets, extras = dict(batch["targets"]), dict(batch["extras"])
        as_input = list(batch.get(AS_INPUT, ()))
        for info in self.infos:
            if frames.shape[1] == 1 and info.needs_video:
                continue
            data, named = self._compute(info, frames)
            targets[info.key] = data.to(video.device, non_blocking=True)
            extras.update({name: value.to(video.device, non_blocking=True) for name, value in named.items()})
            if info.spec.normalize_as_input and info.key not in as_input:
                as_input.append(info.key)
        return {**batch, "targets": targets, "extras": extras, AS_INPUT: as_input}

    def _compute(self, info: TargetInfo, frames: np.ndarray) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """(B, T, S, S, 3) uint8 -> the batch's target tensor (B, ...) and its extras {"ref/name": (B, ...)}."""
        out = dict(self.targets[info.ref].compute(np.ascontiguousarray(frames)))
        values = out.pop("data")
        # per clip through the dataset's own conversions, so online and cached targets share one layout
        data = torch.stack([target_tensor(info, clip) for clip in values])
        return data, {f"{info.key}/{name}": torch.stack([extra_tensor(v) for v in value]) for name, value in out.items()}

    def describe(self) -> str:
        """One line for the run log: each online target, its target id and its teacher weights if any."""
        return "; ".join(f"{info.ref} ({info.target_id}" + (f", weights {info.teacher_weights})"
                                                              if info.teacher_weights else ")") for info in self.infos)


def online_fill(online: OnlineTargets | None) -> Callable[[dict[str, Any]], dict[str, Any]] | None:
    """What `BatchStream(fill=...)` applies to each batch as it is drawn (None without online targets).

    The loop draws a batch before it enters autocast, so the targets are computed at the teachers'
    own precision; the time they take is part of the logged step time.
    """
    return None if online is None else online.fill


def worker_fork_problem(infos: Iterable[TargetInfo], hflip_prob: float, num_workers: int) -> str | None:
    """Why this mix of online and cached targets cannot use DataLoader worker processes, or None.

    Online targets run in the main process, and a target's kernels may start an OpenMP runtime
    there (numba's parallel kernels do). A worker forked from such a process aborts as soon as it
    runs OpenMP code itself, which a cached target that is recomputed on flipped frames does inside
    the worker. `BatchStream` forks its workers once, before it fills the first batch, but any later
    fork (a second loader in the same process) would abort part-way, and nothing short of running the
    kernels says whether they use OpenMP, so the mix is refused before training.
    """
    infos = list(infos)
    if num_workers <= 0 or hflip_prob <= 0 or not any(info.online for info in infos):
        return None
    from mvm_targets.targets.spec import FlipRule

    recomputed = [info.ref for info in infos if not info.online and info.spec.augmentation.flip is FlipRule.RECOMPUTE]
    if not recomputed:
        return None
    names = ", ".join(f"'{ref}'" for ref in recomputed)
    return (f"'data.num_workers': {num_workers} worker processes would recompute the cached target {names} on "
            f"flipped frames after the main process has run the online targets' kernels, and an OpenMP runtime "
            f"aborts a worker forked from such a process; set data.num_workers: 0, or make {names} online too "
            f"(mvm.source), or data.hflip_prob: 0")


def sources(infos: Iterable[TargetInfo]) -> dict[str, str]:
    """ref -> "cached" | "online", for the run log and final.json."""
    return {info.ref: info.source for info in infos}
