"""Paths inside a cache folder, and resolution of set names such as "hog" to their folders."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from mvm_targets.errors import InputError
from mvm_targets.store import schema
from mvm_targets.store.codecs import DEFAULT_CODEC
from mvm_targets.store.damage import open_shard
from mvm_targets.store.selection import describe_options, option_match, options_for
from mvm_targets.store.shard_set import ShardSet
from mvm_targets.targets.registry import ALIASES  # a constant: importing it loads no target module
from mvm_targets.targets.spec import StoredSpec, split_ref

DEFAULT_CACHE = Path("cache")


@dataclass(frozen=True)
class ClipCache:
    """One dataset at one sampling configuration: `cache/<dataset>/<frames_id>/`."""

    root: Path  # cache/<dataset>/<frames_id>

    @property
    def dataset_dir(self) -> Path:
        return self.root.parent

    @property
    def ledger_path(self) -> Path:
        return self.root / schema.LEDGER_NAME

    @property
    def manifest_path(self) -> Path:
        return self.dataset_dir / schema.MANIFEST_NAME

    @property
    def frames(self) -> ShardSet:
        return ShardSet(self.root / schema.FRAMES_SET)

    def target_set(self, target_id: str) -> ShardSet:
        return ShardSet(self.root / target_id)

    def target_sets(self) -> list[ShardSet]:
        return [ShardSet(p) for p in sorted(self.root.iterdir())
                if p.is_dir() and p.name != schema.FRAMES_SET and not p.name.startswith(".")]

    def stored_spec(self, shard_set: ShardSet, declarations: bool = True) -> StoredSpec:
        """The spec stamped into a set's first shard (`declarations=False`: never consult target modules
        for fields that older records lack)."""
        shards = shard_set.shards()
        if not shards:
            raise InputError(f"{shard_set.directory}: no shards")
        with open_shard(shards[0]) as handle:
            raw = handle.attrs.get("target_spec")
        if raw is None:
            raise InputError(f"{shards[0]}: no target_spec attribute; not a target shard")
        record = json.loads(raw.decode() if isinstance(raw, bytes) else raw)
        return StoredSpec.from_record(record, declarations=declarations)

    def resolve_target(self, ref: str, options: Mapping[str, Mapping[str, Any]] | None = None) -> ShardSet:
        """A set by exact id (`hog-paper-1a2b3c4d`) or by `name[:variant]`, as `extract` accepts it.

        Resolved from the specs stamped into the shards, without importing any target module: a bare
        name means the set whose record says it is its target's default variant (`hog` is `hog:paper`);
        in caches written before records said so, a bare name matching exactly one set is that set.
        `options` are a run's per-target options (`find_target`).
        """
        match = self.find_target(ref, options)
        if match is None:
            available = ", ".join(s.set_id for s in self.target_sets()) or "none"
            own = options_for(options, ref)
            asked = f" with {describe_options(own)}" if own is not None else ""
            raise InputError(f"{self.root}: no cached target '{ref}'{asked} (cached targets: {available})")
        return match

    def find_target(self, ref: str, options: Mapping[str, Mapping[str, Any]] | None = None) -> ShardSet | None:
        """`resolve_target`, but None when nothing cached matches `ref` (several matches still raise).

        `options`: a run's per-target options, keyed by reference or target name (store/selection.py).
        None resolves the reference alone. With a mapping, an entry that applies to `ref` (even an empty
        one, which means the default options) keeps only the sets those options would have written
        (`OptionMatch`); a reference with no entry keeps every set it names, and when that is several,
        prefers the ones stored with the default codec, as a bare name prefers the default variant. Only
        an entry with options other than the codec imports the target's module (to build its spec
        without weights).
        """
        sets = self.target_sets()
        own = options_for(options, ref)
        exact = [s for s in sets if s.set_id == ref]
        if exact:
            if own is not None and not self._selects(exact[0], own):
                raise InputError(f"{self.root}: cached set '{ref}' was not written with {describe_options(own)}")
            return exact[0]
        name, variant = split_ref(ref)
        name = ALIASES.get(name, name)
        candidates = []
        for shard_set in sets:
            if not shard_set.set_id.startswith(f"{name}-"):
                continue  # ids start with the target name: skip opening shards that cannot match
            try:
                spec = self.stored_spec(shard_set, declarations=False)
            except (InputError, OSError, ValueError, KeyError):
                continue  # an empty or damaged set is `verify`'s business, not a match
            if spec.name == name and (variant is None or spec.variant == variant):
                candidates.append((shard_set, spec))
        if variant is None:
            flagged = [c for c in candidates if c[1].default_variant]
            unflagged = [c for c in candidates if c[1].default_variant is None]
            candidates = flagged or (unflagged if len(unflagged) == 1 else
                                     [c for c in candidates if c[1].default_variant is not False])
        asked = ""
        if own is not None:
            matches = {spec.variant: option_match(spec.name, spec.variant, own) for _, spec in candidates}
            candidates = [c for c in candidates if matches[c[1].variant].accepts(c[1])]
            asked = f" with {describe_options(own)}"
        elif options is not None and len(candidates) > 1:
            candidates = [c for c in candidates if c[1].codec == DEFAULT_CODEC] or candidates
        if not candidates:
            return None
        if len(candidates) == 1:
            return candidates[0][0]
        raise InputError(f"{self.root}: '{ref}'{asked} matches several configurations; pick one of: "
                         f"{', '.join(s.set_id for s, _ in candidates)}")

    def _selects(self, shard_set: ShardSet, options: Mapping[str, Any]) -> bool:
        spec = self.stored_spec(shard_set, declarations=False)
        return option_match(spec.name, spec.variant, options).accepts(spec)


def dataset_caches(cache_root: Path, dataset: str) -> list[ClipCache]:
    dataset_dir = Path(cache_root) / dataset
    if not dataset_dir.is_dir():
        return []
    return [ClipCache(p) for p in sorted(dataset_dir.glob("frames-*")) if p.is_dir()]


def open_clip_cache(cache_root: Path, dataset: str, frames_id: str | None = None) -> ClipCache:
    """The dataset's sampling configuration, by id, or the only one present."""
    caches = dataset_caches(cache_root, dataset)
    if frames_id is not None:
        caches = [c for c in caches if c.root.name == frames_id]
    if len(caches) == 1:
        return caches[0]
    where = Path(cache_root) / dataset
    if not caches:
        raise InputError(f"{where}: no cached clips{f' for {frames_id}' if frames_id else ''}; run `mvmtargets extract` first")
    raise InputError(f"{where}: several frame configurations ({', '.join(c.root.name for c in caches)}); pass one")


def list_datasets(cache_root: Path) -> list[str]:
    root = Path(cache_root)
    return sorted(p.name for p in root.iterdir() if p.is_dir() and any(p.glob("frames-*"))) if root.is_dir() else []
