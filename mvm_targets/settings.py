"""The ranges of the extraction settings, checked before any video is decoded or teacher built.

Shared by `mvmtargets extract` (as `--batch-size`, ...) and by a grid's `cache:` section (as
`cache.batch_size`, ...), so both refuse the same values with the same reasons.
"""

from __future__ import annotations

from typing import Any

from mvm_targets.targets.spec import PATCH_PX

COMPRESSIONS = ("lzf", "gzip", "none")  # what h5py writes without plugins; "none" stores raw
SHORT_VIDEOS = ("skip", "repeat")
WEIGHTS_MODES = ("pretrained", "random")


def _integer(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _at_least(minimum: int) -> Any:
    def check(value: Any) -> str | None:
        if not _integer(value) or value < minimum:
            return f"must be an integer >= {minimum}, got {value!r}"
        return None
    return check


def _size(value: Any) -> str | None:
    # one video token per 32-px patch: the frames are cut into whole patches (SamplingConfig)
    if not _integer(value) or value < PATCH_PX or value % PATCH_PX:
        return f"must be a positive multiple of {PATCH_PX} (the patch size), got {value!r}"
    return None


def _one_of(choices: tuple[str, ...]) -> Any:
    def check(value: Any) -> str | None:
        if value not in choices:
            return f"must be one of {', '.join(choices)}, got {value!r}"
        return None
    return check


RULES = {
    "frames": _at_least(1),
    "size": _size,
    "workers": _at_least(0),
    "batch_size": _at_least(1),
    "clips_per_shard": _at_least(1),
    "compression": _one_of(COMPRESSIONS),
    "short_videos": _one_of(SHORT_VIDEOS),
    "weights": _one_of(WEIGHTS_MODES),
}


def setting_problem(name: str, value: Any) -> str | None:
    """Why `value` is not a valid extraction setting `name` (a key of RULES), or None."""
    return RULES[name](value)


def compression_filter(name: str) -> str | None:
    """The h5py filter for a checked compression name ("none" -> no filter)."""
    return None if name == "none" else name
