"""The shard store: round trip, self-description, atomic commits, ledger, lazy per-worker reads."""

from __future__ import annotations

import json

import h5py
import numpy as np
import pytest
import torch

from mvm_targets.store import schema
from mvm_targets.store.layout import ClipCache
from mvm_targets.store.ledger import Ledger, LedgerEntry
from mvm_targets.store.reader import CacheReader
from mvm_targets.store.shard_set import ClipRecord, ShardSet

T, S = 2, 32


def record(key: str, value: int) -> ClipRecord:
    return ClipRecord(key=key, data=np.full((T, S, S, 3), value, np.uint8), frame_indices=np.arange(T),
                      timestamps=np.arange(T) / 10, source={"path": f"{key}.mp4"})


ATTRS = {"target_spec": schema.frames_spec_json(T, S), "dataset": "toy"}


def make_cache(tmp_path, keys=("a", "b", "c")) -> ClipCache:
    cache = ClipCache(tmp_path / "cache" / "toy" / "frames-t2-s32-test")
    result = cache.frames.commit([record(k, i) for i, k in enumerate(keys)], ATTRS, "lzf")
    Ledger(cache.ledger_path).append(LedgerEntry(k, "frames", "done", shard=result.shard.name) for k in keys)
    return cache


def test_round_trip_returns_the_same_arrays_and_self_description(tmp_path):
    make_cache(tmp_path)
    reader = CacheReader(tmp_path / "cache", "toy")
    assert reader.keys == ["a", "b", "c"]
    clip = reader["b"]
    np.testing.assert_array_equal(clip["frames"], np.full((T, S, S, 3), 1, np.uint8))
    np.testing.assert_allclose(clip["timestamps"], [0.0, 0.1])
    attrs = reader.attrs()
    assert attrs["schema_version"] == schema.SCHEMA_VERSION and attrs["set_id"] == "frames"
    assert attrs["target_spec"]["clip_shape"] == [T, S, S, 3]


def test_each_chunk_holds_one_clip(tmp_path):
    cache = make_cache(tmp_path)
    [shard] = cache.frames.shards()
    with h5py.File(shard) as handle:
        assert handle[schema.DATA].chunks == (1, T, S, S, 3)


def test_commit_skips_keys_already_committed_and_cleans_stale_temporaries(tmp_path):
    cache = make_cache(tmp_path)
    stale = cache.frames.directory / ".shard-000009.h5.tmp"
    stale.write_bytes(b"half a shard")
    result = ShardSet(cache.frames.directory).commit([record("b", 7), record("d", 3)], ATTRS, None)
    assert result.keys == ("d",) and result.shard.name == "shard-000001.h5"
    assert not stale.exists()
    assert ShardSet(cache.frames.directory).committed_keys() == {"a", "b", "c", "d"}


def test_ledger_ignores_a_torn_last_line_but_reports_corruption_elsewhere(tmp_path):
    ledger = Ledger(tmp_path / "ledger.jsonl")
    ledger.append([LedgerEntry("a", "frames", "done")])
    with ledger.path.open("a") as handle:
        handle.write('{"key": "b", "set_id": "fra')  # a writer killed mid-line
    entries, malformed = ledger.read()
    assert [e.key for e in entries] == ["a"] and malformed == []
    ledger.path.write_text('garbage\n' + json.dumps({"key": "a", "set_id": "frames", "status": "done"}) + "\n")
    assert ledger.read()[1] == [1]


def test_latest_ledger_entry_wins(tmp_path):
    ledger = Ledger(tmp_path / "ledger.jsonl")
    ledger.append([LedgerEntry("a", "frames", "failed", "DecodeError", "boom")])
    ledger.append([LedgerEntry("a", "frames", "done")])
    assert ledger.latest()[("a", "frames")].status == "done"


def test_reader_is_safe_in_dataloader_workers(tmp_path):
    make_cache(tmp_path, keys=[f"k{i}" for i in range(8)])
    reader = CacheReader(tmp_path / "cache", "toy")
    reader["k0"]  # opens a handle in the parent first: workers must not reuse it
    loader = torch.utils.data.DataLoader(reader, batch_size=2, num_workers=2,
                                         collate_fn=lambda clips: [c["frames"][0, 0, 0, 0] for c in clips])
    values = sorted(int(v) for batch in loader for v in batch)
    assert values == list(range(8))


def test_unknown_target_in_reader_lists_cached_targets(tmp_path):
    make_cache(tmp_path)
    with pytest.raises(Exception, match="no cached target 'hog'"):
        CacheReader(tmp_path / "cache", "toy", targets=["hog"])


def test_keys_and_sources_of_any_length_and_script_round_trip(tmp_path):
    keys = ["a", "vidéos/été_1", "视频/" + "x" * 300]
    cache = ClipCache(tmp_path / "cache" / "toy" / "frames-t2-s32-test")
    records = [record(k, i) for i, k in enumerate(keys)]
    records[1].source = {"path": "vidéos/été_1.mp4", "note": "ü" * 500}
    result = cache.frames.commit(records, ATTRS, "gzip")
    assert result.bytes_written == result.shard.stat().st_size
    Ledger(cache.ledger_path).append(LedgerEntry(k, "frames", "done", shard=result.shard.name) for k in keys)
    assert ShardSet(cache.frames.directory).committed_keys() == set(keys)
    with h5py.File(result.shard) as handle:
        assert json.loads(handle[schema.SOURCES][1]) == {"note": "ü" * 500, "path": "vidéos/été_1.mp4"}
        assert handle[schema.DATA].compression == "gzip" and handle[schema.DATA].fletcher32
    reader = CacheReader(tmp_path / "cache", "toy")
    assert reader.keys == sorted(keys)
    np.testing.assert_array_equal(reader[keys[2]]["frames"], np.full((T, S, S, 3), 2, np.uint8))
