"""What every shard file says about itself, and the layout of a cache folder.

    cache/<dataset>/manifest.jsonl                      key, source path, captions
    cache/<dataset>/<frames_id>/ledger.jsonl            per (key, set): done / failed / skipped
    cache/<dataset>/<frames_id>/frames/shard-*.h5       the decoded clips, (T, S, S, 3) uint8
    cache/<dataset>/<frames_id>/<target_id>/shard-*.h5  one shard set per target configuration
    cache/<dataset>/quarantine/<time>/...               damaged shards moved aside by `verify --repair`

`frames_id` = `frames-t{T}-s{S}-{hash of the sampling config}`; `target_id` =
`{name}-{variant}-{hash of the target config}`. A new target or configuration is a new folder:
existing shards are never rewritten.
"""

from __future__ import annotations

import functools
import json
import subprocess
from pathlib import Path

SCHEMA_VERSION = 1
FRAMES_SET = "frames"
SHARD_GLOB = "shard-*.h5"
LEDGER_NAME = "ledger.jsonl"
MANIFEST_NAME = "manifest.jsonl"
QUARANTINE_DIR = "quarantine"  # under the dataset folder; keeps each moved file's path below it

# Datasets inside a shard; every one has the clip axis first and one chunk per clip.
KEYS = "keys"
DATA = "data"
FRAME_INDICES = "frame_indices"
TIMESTAMPS = "timestamps"
SOURCES = "sources"  # per-clip JSON: source path, size, rotation, frame count, duration
EXTRAS_GROUP = "extras"  # per-clip side statistics of a target (e.g. flow max magnitude)


def frames_spec_json(num_frames: int, size: int) -> str:
    """The frames set's self-description, in the same form as a target's."""
    return json.dumps({"name": FRAMES_SET, "variant": "rgb", "grid": "dense", "dtype": "uint8",
                       "clip_shape": [num_frames, size, size, 3], "stored": True, "target_id": FRAMES_SET,
                       "description": "canonical RGB frames (T, S, S, 3); the pixel target reads these"},
                      sort_keys=True)


@functools.lru_cache(maxsize=1)
def code_version() -> str:
    """Package version, plus the git commit (and '-dirty') when running from a checkout."""
    from mvm_targets import __version__

    root = Path(__file__).resolve().parents[2]
    try:
        commit = subprocess.run(["git", "-C", str(root), "rev-parse", "--short=10", "HEAD"],
                                capture_output=True, text=True, timeout=5, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=5, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return __version__
    return f"{__version__}+g{commit}{'-dirty' if dirty else ''}"
