"""Paths inside a cache folder, and resolution of set names such as "hog" to their folders."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from mvm_targets.errors import InputError
from mvm_targets.store import schema
from mvm_targets.store.shard_set import ShardSet

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

    def resolve_target(self, ref: str) -> ShardSet:
        """A set by exact id (`hog-paper-1a2b3c4d`) or by `name[:variant]`, as `extract` accepts it.

        A bare name means the registry's default variant (`hog` is `hog:paper`), as in extract.
        """
        sets = self.target_sets()
        matches = [s for s in sets if s.set_id == ref]
        if not matches:
            from mvm_targets.targets.registry import parse_target_ref

            name, variant = parse_target_ref(ref)
            matches = [s for s in sets if s.set_id.startswith(f"{name}-{variant}-")]
        if len(matches) == 1:
            return matches[0]
        available = ", ".join(s.set_id for s in sets) or "none"
        if not matches:
            raise InputError(f"{self.root}: no cached target '{ref}' (cached targets: {available})")
        raise InputError(f"{self.root}: '{ref}' matches several configurations; pick one of: "
                         f"{', '.join(s.set_id for s in matches)}")


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
