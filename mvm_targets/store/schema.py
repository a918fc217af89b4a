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

import json

from mvm_targets.provenance import code_version  # noqa: F401  (its old home; shards record it)

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
CODEC_GROUP = "codec"  # per-clip side arrays of a storage codec (e.g. int8 scales); see store/codecs.py


def frames_spec_json(num_frames: int, size: int) -> str:
    """The frames set's self-description, in the same form as a target's."""
    return json.dumps({"name": FRAMES_SET, "variant": "rgb", "grid": "dense", "dtype": "uint8",
                       "clip_shape": [num_frames, size, size, 3], "stored": True, "target_id": FRAMES_SET,
                       "description": "canonical RGB frames (T, S, S, 3); the pixel target reads these"},
                      sort_keys=True)
