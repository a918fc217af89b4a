"""The HDF5 shard store: atomic shard sets, the ledger, the reader, verify and info."""

from mvm_targets.store.layout import DEFAULT_CACHE, ClipCache, open_clip_cache
from mvm_targets.store.ledger import Ledger, LedgerEntry
from mvm_targets.store.reader import CacheReader
from mvm_targets.store.shard_set import ClipRecord, ShardSet
from mvm_targets.store.verify import VerifyReport, verify_cache

__all__ = ["DEFAULT_CACHE", "CacheReader", "ClipCache", "ClipRecord", "Ledger", "LedgerEntry", "ShardSet",
           "VerifyReport", "open_clip_cache", "verify_cache"]
