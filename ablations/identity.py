"""Names of runs: the content hash that identifies one, and how factor values read in names.

`run_id` hashes the resolved config, not the grid, so the same settings get the same id from any
grid file, any axis order, any machine.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from typing import Any

from violet_core.config import RunConfig, config_from_dict

# Fields that name or place a run, or pick hardware, without changing what it computes. Leaving them
# out of the hash lets a grid move between a laptop (device=cpu, num_workers=0, out_dir=runs) and a
# cluster (cuda, 8 workers, /scratch/...) and still find the runs it already finished; `name` is set
# to the alias, which differs between grids that share a config. num_workers is assumed to change
# throughput only, i.e. the data pipeline seeds its randomness per sample rather than per worker.
IDENTITY_EXCLUDED = ("name", "out_dir", "data.num_workers", "device")
_UNSAFE = re.compile(r"[^A-Za-z0-9._+=,@-]")


def run_id(config: Mapping[str, Any] | RunConfig) -> str:
    """First 12 hex digits of the sha256 of the resolved config's canonical JSON, minus IDENTITY_EXCLUDED.

    A partial mapping is resolved first (defaults filled, numbers coerced), so `{"mask": {"ratio": 1}}`
    and the full dict of the same config share an id. The JSON is key-sorted with compact
    separators, which makes the id independent of dict order and of Python's hash seed.
    """
    resolved = config.to_dict() if isinstance(config, RunConfig) else config_from_dict(dict(config)).to_dict()
    for dotted in IDENTITY_EXCLUDED:
        *parents, leaf = dotted.split(".")
        node = resolved
        for part in parents:
            node = node[part]
        node.pop(leaf, None)
    canonical = json.dumps(resolved, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:12]


def format_value(value: Any) -> str:
    """How a factor value reads in aliases and report columns: lists '+'-joined, [] -> 'none'; a mapping
    as its dotted leaves, key-sorted and '+'-joined (`{hog: {codec: int8}}` -> 'hog.codec=int8'), {} -> 'none'."""
    if isinstance(value, (list, tuple)):
        return "+".join(format_value(v) for v in value) if value else "none"
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    if isinstance(value, Mapping):
        return "+".join(f"{key}={format_value(leaf)}" for key, leaf in _leaves(value)) if value else "none"
    return str(value)


def _leaves(mapping: Mapping[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    """(dotted key, value) of each leaf of a nested mapping, keys sorted; an empty inner mapping is a leaf."""
    leaves: list[tuple[str, Any]] = []
    for key in sorted(mapping, key=str):
        value = mapping[key]
        if isinstance(value, Mapping) and value:
            leaves += _leaves(value, f"{prefix}{key}.")
        else:
            leaves.append((f"{prefix}{key}", value))
    return leaves


def safe_name(text: str) -> str:
    """`text` with characters that are awkward in file names (':', '/', spaces...) replaced."""
    return _UNSAFE.sub("_", text.replace(":", "-").replace("/", "-"))


def value_key(value: Any) -> str:
    """A hashable canonical form for comparing values: tuples == lists, 1 == 1.0, True != 1."""
    return json.dumps(_canon(value), sort_keys=True, separators=(",", ":"))


def _canon(value: Any) -> Any:
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, (list, tuple)):
        return [_canon(v) for v in value]
    if isinstance(value, Mapping):
        return {str(k): _canon(v) for k, v in value.items()}
    return str(value)
