"""Damage and full disks: verify finds every flipped byte, --repair plus extract restores it, ENOSPC is one line.

Bytes are flipped inside a clip's chunk (located with `get_chunk_info`, and checked with the raw
chunk bytes before and after), never in HDF5's headers, so what is tested is the per-chunk checksum.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import h5py
import numpy as np
import pytest

from mvm_targets.extract import ExtractConfig, extract
from mvm_targets.store import schema
from mvm_targets.store.damage import DamagedShardError
from mvm_targets.store.diskspace import OutOfSpaceError
from mvm_targets.store.layout import open_clip_cache
from mvm_targets.store.ledger import Ledger, LedgerEntry
from mvm_targets.store.reader import CacheReader
from mvm_targets.store.repair import repair_cache
from mvm_targets.store.verify import verify_cache
from mvm_targets.targets import build_target
from mvm_targets.targets.spec import Grid, TargetSpec
from mvm_targets.video.decode import SamplingConfig
from mvm_targets.video.inputs import discover_inputs
from tests.conftest import write_video

REPO = Path(__file__).resolve().parents[1]
SAMPLING = SamplingConfig(num_frames=4, size=64)


class Levels:
    """A uint8 target for these tests: each pixel's brightness in four levels, (T, S, S)."""

    spec = TargetSpec(name="levels", variant="test", version=1, grid=Grid.DENSE, dtype="uint8", loss="ce",
                      clip_shape=lambda t, s: (t, s, s), description="brightness // 64")

    def compute(self, frames: np.ndarray) -> dict[str, np.ndarray]:
        return {"data": (frames.mean(axis=-1) // 64).astype(np.uint8)}


def targets():
    return [Levels(), build_target("hog"), build_target("flow")]


def run_extract(videos: Path, cache: Path, refs=None):
    config = ExtractConfig(cache_root=cache, dataset="toy", sampling=SAMPLING, batch_size=2, clips_per_shard=2)
    return extract(discover_inputs([videos]), refs if refs is not None else targets(), config)


def cli(*args: str) -> list[str]:
    return [sys.executable, "-c", "from mvm_targets.cli import main; main()", *args]


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    """Three videos extracted with a uint8 target, a float16 target and flow (float16 plus an extra):
    every set has two shards (2 clips + 1 clip). Returns (videos, cache, {key: clip} as read back)."""
    root = tmp_path_factory.mktemp("integrity")
    for i in range(3):
        write_video(root / "videos" / f"v{i}.mp4", num_frames=10 + i)
    run_extract(root / "videos", root / "cache")
    reader = CacheReader(root / "cache", "toy", targets=[t.spec.target_id for t in targets()])
    clips = {key: reader[key] for key in reader.keys}
    reader.close()
    assert len(clips) == 3
    return root / "videos", root / "cache", clips


@pytest.fixture
def cache(pristine, tmp_path):
    videos, source, clips = pristine
    shutil.copytree(source, tmp_path / "cache")
    return tmp_path / "cache"


def shard_holding(cache: Path, set_prefix: str, key: str) -> tuple[Path, int]:
    clip_cache = open_clip_cache(cache, "toy")
    shard_set = next(s for s in [clip_cache.frames, *clip_cache.target_sets()] if s.set_id.startswith(set_prefix))
    for name, keys in shard_set.keys_by_shard().items():
        if key in keys:
            return shard_set.directory / name, keys.index(key)
    raise AssertionError(f"{key} not in {set_prefix}")


def flip_chunk(shard: Path, dataset: str, row: int) -> None:
    """XOR up to 16 bytes in the middle of the stored data of the chunk holding `row` of `dataset`.

    The chunk's last 4 bytes, its Fletcher-32 checksum, are left alone: complementing a whole chunk
    including its checksum is the one pattern that checksum cannot see (one's-complement sums)."""
    with h5py.File(shard, "r") as handle:
        ids = handle[dataset].id
        info = next(i for i in (ids.get_chunk_info(n) for n in range(ids.get_num_chunks())) if i.chunk_offset[0] == row)
        before = ids.read_direct_chunk(info.chunk_offset)[1]
    payload = info.size - 4
    count = min(16, payload)
    start = info.byte_offset + (payload - count) // 2
    with open(shard, "r+b") as handle:
        handle.seek(start)
        original = handle.read(count)
        handle.seek(start)
        handle.write(bytes(b ^ 0xFF for b in original))
    with h5py.File(shard, "r") as handle:
        after = handle[dataset].id.read_direct_chunk(info.chunk_offset)[1]
    assert after != before and len(after) == len(before), "the flip must land in the clip's chunk"


def truncate(shard: Path) -> None:
    data = shard.read_bytes()
    shard.write_bytes(data[: len(data) * 2 // 3])


def test_every_dataset_of_every_shard_is_chunked_per_clip_with_a_checksum(pristine):
    _, cache, _ = pristine
    shards = sorted(cache.rglob("shard-*.h5"))
    assert len(shards) == 8
    for shard in shards:
        with h5py.File(shard, "r") as handle:
            datasets = []
            handle.visititems(lambda name, obj: datasets.append(obj) if isinstance(obj, h5py.Dataset) else None)
            assert {d.name for d in datasets} >= {"/keys", "/sources", "/data", "/frame_indices", "/timestamps"}
            for dataset in datasets:
                assert dataset.fletcher32, f"{shard}:{dataset.name}"
                assert dataset.chunks == (1, *dataset.shape[1:]), f"{shard}:{dataset.name}"


def test_flipped_bytes_in_every_kind_of_shard_and_a_truncated_one_are_named_then_repaired(pristine, cache):
    videos, _, originals = pristine
    keys = sorted(originals)
    damage = {  # (set, dataset) -> the clip whose chunk is flipped
        ("frames", schema.DATA): keys[1],  # uint8 frames
        ("levels-", schema.DATA): keys[2],  # a uint8 target
        ("hog-", schema.DATA): keys[0],  # a float16 target
        ("flow-", f"{schema.EXTRAS_GROUP}/max_magnitude"): keys[1],  # a target's extra
    }
    expected = []  # (shard, key) pairs verify must name
    for (prefix, dataset), key in damage.items():
        shard, row = shard_holding(cache, prefix, key)
        flip_chunk(shard, dataset, row)
        expected.append((shard, key))
    truncated, _ = shard_holding(cache, "hog-", keys[2])
    assert truncated != expected[2][0]
    truncate(truncated)
    expected.append((truncated, keys[2]))

    report = verify_cache(cache)
    assert not report.ok
    for shard, key in expected:
        assert any(str(shard) in p and f"'{key}'" in p for p in report.problems), (shard, key, report.problems)
    assert any(str(truncated) in p and "truncated" in p for p in report.problems)
    assert report.unrepairable == 0, report.problems

    damaged_bytes = {shard: shard.read_bytes() for shard, _ in expected}
    repaired = subprocess.run(cli("verify", "--cache", str(cache), "--repair"), cwd=REPO, capture_output=True,
                              text=True)
    assert repaired.returncode == 0, repaired.stderr
    assert "marked for re-extraction" in repaired.stdout
    quarantined = sorted((cache / "toy" / schema.QUARANTINE_DIR).rglob("shard-*.h5"))
    assert len(quarantined) == len(damaged_bytes)  # moved, never deleted: the same bytes, elsewhere
    assert sorted(q.read_bytes() for q in quarantined) == sorted(damaged_bytes.values())
    assert not any(shard.exists() for shard in damaged_bytes)
    awaiting = verify_cache(cache)
    assert not awaiting.ok and all("await re-extraction" in p for p in awaiting.problems), awaiting.problems

    summary = run_extract(videos, cache)
    assert summary.failed == 0
    after = verify_cache(cache)
    assert after.ok, after.problems
    assert not after.notes
    reader = CacheReader(cache, "toy", targets=[t.spec.target_id for t in targets()])
    assert reader.keys == keys
    for key in keys:
        restored = reader[key]
        assert restored.keys() == originals[key].keys()
        for name, value in originals[key].items():
            if isinstance(value, np.ndarray):
                np.testing.assert_array_equal(restored[name], value, err_msg=f"{key} {name}")


def test_nan_written_into_a_float_target_is_repaired_too(pristine, cache):
    videos, _, originals = pristine
    key = sorted(originals)[0]
    shard, row = shard_holding(cache, "hog-", key)
    with h5py.File(shard, "r+") as handle:  # h5py recomputes the checksum: only the NaN check can see this
        handle[schema.DATA][row, 0, 0, 0] = np.nan
    report = verify_cache(cache)
    assert any(str(shard) in p and f"'{key}'" in p and "NaN/Inf" in p for p in report.problems)
    assert run_extract(videos, cache).already_done == 3  # extract alone cannot see it: shards are the truth
    with h5py.File(shard, "r") as handle:
        neighbours = handle[schema.KEYS].shape[0]  # the whole shard is moved aside and re-extracted
    repair_cache(report)
    assert run_extract(videos, cache).done == neighbours == 2
    assert verify_cache(cache).ok
    hog_id = build_target("hog").spec.target_id
    np.testing.assert_array_equal(CacheReader(cache, "toy", targets=[hog_id])[key][hog_id], originals[key][hog_id])


def test_damage_met_by_reader_extract_info_and_show_names_the_file_and_the_fix(pristine, cache):
    videos, _, originals = pristine
    key = sorted(originals)[0]
    flipped, row = shard_holding(cache, "frames", key)
    flip_chunk(flipped, schema.DATA, row)
    reader = CacheReader(cache, "toy")
    with pytest.raises(DamagedShardError) as caught:
        reader[key]
    message = str(caught.value)
    assert str(flipped) in message and f"'{key}'" in message and "verify --repair" in message
    assert "\n" not in message
    import torch

    loader = torch.utils.data.DataLoader(reader, num_workers=1, collate_fn=lambda clips: clips)
    with pytest.raises(DamagedShardError) as caught:  # raised in a worker, re-raised here still as one line
        list(loader)
    assert str(caught.value) == message

    truncated, _ = shard_holding(cache, "hog-", sorted(originals)[2])
    truncate(truncated)
    for attempt in (lambda: CacheReader(cache, "toy", targets=["hog"]), lambda: run_extract(videos, cache)):
        with pytest.raises(DamagedShardError, match="verify --repair") as caught:
            attempt()
        assert str(truncated) in str(caught.value) and "truncated" in str(caught.value)
    for command in (["info", "--cache", str(cache)],
                    ["show", key, "--target", "hog", "--cache", str(cache), "--out", str(cache / "x.png")]):
        result = subprocess.run(cli(*command), cwd=REPO, capture_output=True, text=True)
        assert result.returncode == 2, result.stderr
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and str(truncated) in lines[0] and "verify --repair" in lines[0], result.stderr


def write_old_style(shard: Path) -> None:
    """Rewrite `shard` as the writer did before checksums: no filters but the compression, keys and
    sources as variable-length strings, 1-D datasets unchunked."""
    with h5py.File(shard, "r") as source:
        attrs = dict(source.attrs)
        arrays = {}
        source.visititems(lambda name, obj: arrays.__setitem__(name, obj[()])
                          if isinstance(obj, h5py.Dataset) else None)
    old = shard.with_suffix(".old")
    with h5py.File(old, "w", libver="latest") as handle:
        handle.attrs.update(attrs)
        string = h5py.string_dtype("utf-8")
        for name, values in arrays.items():
            if name in (schema.KEYS, schema.SOURCES):
                handle.create_dataset(name, data=np.array([v.decode() for v in values], dtype=object), dtype=string)
            else:
                handle.create_dataset(name, data=values, chunks=(1, *values.shape[1:]) if values.ndim > 1 else None,
                                      compression="lzf" if name == schema.DATA else None)
    old.replace(shard)


def test_shards_written_before_checksums_still_verify_read_and_catch_truncation(pristine, cache):
    videos, _, originals = pristine
    for shard in cache.rglob("shard-*.h5"):
        write_old_style(shard)
    report = verify_cache(cache)
    assert report.ok, report.problems
    assert len(report.notes) == 4 and all("carry no checksum" in n for n in report.notes)
    reader = CacheReader(cache, "toy", targets=["hog", "flow"])
    for key, clip in originals.items():
        np.testing.assert_array_equal(reader[key]["frames"], clip["frames"])
    reader.close()  # HDF5 would serve a truncated file from the handle this process still holds
    assert run_extract(videos, cache).already_done == 3
    truncated, _ = shard_holding(cache, "flow-", sorted(originals)[0])
    truncate(truncated)
    report = verify_cache(cache)
    assert any(str(truncated) in p and "truncated" in p for p in report.problems)
    repair_cache(report)
    run_extract(videos, cache)
    assert verify_cache(cache).ok  # the restored shard has checksums; the others still carry none
    assert len(verify_cache(cache).notes) == 4


def test_a_failed_ledger_append_is_cut_back_and_withdraws_its_shard(tmp_path, monkeypatch):
    from mvm_targets.store import files
    from mvm_targets.store.shard_set import ClipRecord, ShardSet

    ledger = Ledger(tmp_path / "ledger.jsonl")
    ledger.append([LedgerEntry("a", "frames", "done")])
    before = ledger.path.read_bytes()
    real_write = os.write

    def half_then_full(fd, data):
        real_write(fd, bytes(data[: len(data) // 2]))
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(files.os, "write", half_then_full)
    shard_set = ShardSet(tmp_path / "frames")
    record = ClipRecord("b", np.zeros((2, 32, 32, 3), np.uint8), np.arange(2), np.arange(2) / 10, {})
    with pytest.raises(OutOfSpaceError) as caught:
        shard_set.commit([record], {"target_spec": schema.frames_spec_json(2, 32)}, None,
                         on_commit=lambda result: ledger.append([LedgerEntry("b", "frames", "done")]))
    assert str(shard_set.directory / "shard-000000.h5") in str(caught.value)  # the shard write failed first
    monkeypatch.setattr(files.os, "write", real_write)
    shard_set.commit([record], {"target_spec": schema.frames_spec_json(2, 32)}, None)
    monkeypatch.setattr(files.os, "write", half_then_full)
    with pytest.raises(OutOfSpaceError) as caught:
        ledger.append([LedgerEntry("c", "frames", "done")])
    assert str(ledger.path) in str(caught.value) and caught.value.errno == errno.ENOSPC
    assert ledger.path.read_bytes() == before  # no torn line left for the next append to run into
    monkeypatch.setattr(files.os, "write", real_write)
    record_c = ClipRecord("c", np.ones((2, 32, 32, 3), np.uint8), np.arange(2), np.arange(2) / 10, {})

    def failing_ledger(result):
        raise OutOfSpaceError(ledger.path, 100)

    with pytest.raises(OutOfSpaceError):
        shard_set.commit([record_c], {"target_spec": schema.frames_spec_json(2, 32)}, None, on_commit=failing_ledger)
    assert [p.name for p in shard_set.shards()] == ["shard-000000.h5"]  # the unrecorded shard was withdrawn
    assert ShardSet(shard_set.directory).committed_keys() == {"b"}
    assert not list(shard_set.directory.glob(".*.tmp"))


def enospc_after(fail_at: int, root: str, real_write):
    """An `os.write` that raises ENOSPC from the `fail_at`-th write into files under `root` on, as a full disk does."""
    calls = [0]

    def write(fd, data):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            target = ""
        if target.startswith(root):
            calls[0] += 1
            if calls[0] >= fail_at:
                raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(fd, data)

    return write


FAULTY_EXTRACT = textwrap.dedent("""
    import os, sys
    from tests.test_integrity import enospc_after
    os.write = enospc_after(int(sys.argv[1]), sys.argv[2], os.write)
    from mvm_targets.cli import main
    sys.argv = ["mvmtargets", *sys.argv[3:]]
    main()
""")


def extract_args(videos: Path, cache: Path) -> list[str]:
    return ["extract", str(videos), "-t", "hog", "--out", str(cache), "--dataset", "toy", "--frames", "4",
            "--size", "64", "--clips-per-shard", "1", "--batch-size", "1"]


def assert_consistent_after_failure(cache: Path, stderr: str) -> None:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "out of disk space" in lines[0], stderr
    named = lines[0].split()[1].rstrip(":")
    assert named.startswith(str(cache)), lines[0]
    assert not list(cache.rglob("*.tmp")), "no temporary file may stay behind"
    for ledger in cache.rglob(schema.LEDGER_NAME):
        assert ledger.read_bytes().endswith(b"\n") or not ledger.read_bytes(), "no torn ledger line"
    report = verify_cache(cache) if any(cache.rglob("frames-*")) else None
    if report is not None:
        assert report.ok, report.problems  # committed shards and the ledger agree both ways


# Writes into the cache, in order: the manifest, frames shard 0, its ledger lines (the shard is then
# withdrawn), hog shard 0, its ledger lines, ...
@pytest.mark.parametrize("fail_at, named", [(2, "frames/shard-000000.h5"), (3, "ledger.jsonl")])
def test_enospc_in_the_cli_is_one_line_exit_1_and_a_rerun_completes(pristine, tmp_path, fail_at, named):
    """In a subprocess: before shards were written from memory, this is where HDF5 segfaulted."""
    videos, _, originals = pristine
    cache = tmp_path / "cache"
    script = tmp_path / "faulty_extract.py"
    script.write_text(FAULTY_EXTRACT)
    result = subprocess.run([sys.executable, str(script), str(fail_at), str(cache), *extract_args(videos, cache)],
                            cwd=REPO, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert result.returncode == 1, (result.returncode, result.stderr)
    assert_consistent_after_failure(cache, result.stderr)
    assert f"{named}: out of disk space" in result.stderr
    run_extract(videos, cache, refs=[build_target("hog")])
    assert verify_cache(cache).ok
    reader = CacheReader(cache, "toy", targets=["hog"])
    for key, clip in originals.items():
        np.testing.assert_array_equal(reader[key]["frames"], clip["frames"])


@pytest.mark.parametrize("fail_at, named", [(1, "toy/manifest.jsonl"), (4, "hog-*/shard-000000.h5"),
                                            (5, "frames-*/ledger.jsonl"), (7, "frames-*/ledger.jsonl")])
def test_enospc_at_other_writes_leaves_the_cache_consistent(pristine, tmp_path, monkeypatch, fail_at, named):
    from mvm_targets.store import files

    videos, _, originals = pristine
    cache = tmp_path / "cache"
    monkeypatch.setattr(files.os, "write", enospc_after(fail_at, str(cache), os.write))
    with pytest.raises(OutOfSpaceError) as caught:
        run_extract(videos, cache, refs=[build_target("hog")])
    monkeypatch.undo()
    assert_consistent_after_failure(cache, f"error: {caught.value}")
    assert Path(str(caught.value).split(": out of disk space")[0]).match(named), caught.value
    run_extract(videos, cache, refs=[build_target("hog")])
    assert verify_cache(cache).ok
    reader = CacheReader(cache, "toy", targets=["hog"])
    assert reader.keys == sorted(originals)


TMPFS_SCENARIO = textwrap.dedent("""
    import json, subprocess, sys
    mount_point, size, args = sys.argv[1], sys.argv[2], sys.argv[3:]
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", mount_point], check=True)
    command = [sys.executable, "-c", "from mvm_targets.cli import main; main()"]
    first = subprocess.run(command + args, capture_output=True, text=True)
    files = sorted(str(p) for p in __import__("pathlib").Path(mount_point).rglob("*") if p.is_file())
    verify_full = subprocess.run(command + ["verify", "--cache", mount_point], capture_output=True, text=True)
    subprocess.run(["mount", "-o", "remount,size=16m", mount_point], check=True)
    second = subprocess.run(command + args, capture_output=True, text=True)
    verify_after = subprocess.run(command + ["verify", "--cache", mount_point], capture_output=True, text=True)
    print(json.dumps({"rc": first.returncode, "stderr": first.stderr, "files": files,
                      "verify_full": [verify_full.returncode, verify_full.stdout + verify_full.stderr],
                      "rerun": [second.returncode, second.stderr], "verify_after": verify_after.returncode}))
""")


def private_mount_namespace() -> list[str] | None:
    """A prefix that runs a command where it may mount a tmpfs: `unshare -m` as root, else a user namespace."""
    unshare = shutil.which("unshare")
    if unshare is None:
        return None
    for prefix in ([unshare, "-m"] if os.geteuid() == 0 else [], [unshare, "-rm"]):
        if prefix and subprocess.run([*prefix, "true"], capture_output=True).returncode == 0:
            return prefix
    return None


def test_a_real_full_tmpfs_is_one_line_and_a_rerun_after_freeing_space_is_clean(pristine, tmp_path):
    prefix = private_mount_namespace()
    if prefix is None:
        pytest.skip("cannot mount a tmpfs here (needs root or unprivileged user namespaces)")
    videos, _, _ = pristine
    mount_point = tmp_path / "small_disk"
    mount_point.mkdir()
    script = tmp_path / "scenario.py"
    script.write_text(TMPFS_SCENARIO)
    # uncompressed, a clip's frames shard takes about 52 kB and its hog shard 36 kB:
    # two clips fit in 200 kB, three do not
    run = subprocess.run([*prefix, sys.executable, str(script), str(mount_point), "200k",
                          *extract_args(videos, mount_point), "--compression", "none"], cwd=REPO, capture_output=True,
                         text=True,
                         env={**os.environ, "PYTHONPATH": str(REPO)})
    assert run.returncode == 0, run.stderr
    outcome = json.loads(run.stdout.strip().splitlines()[-1])
    assert outcome["rc"] == 1, outcome  # not 139: no segmentation fault
    lines = outcome["stderr"].strip().splitlines()
    assert len(lines) == 1 and "out of disk space" in lines[0] and str(mount_point) in lines[0], outcome["stderr"]
    assert not any(f.endswith(".tmp") for f in outcome["files"]), outcome["files"]
    assert any(f.endswith("shard-000000.h5") for f in outcome["files"]), "something should commit before the disk fills"
    assert outcome["verify_full"][0] == 0, outcome["verify_full"]
    assert outcome["rerun"][0] == 0, outcome["rerun"]
    assert outcome["verify_after"] == 0


def test_a_full_disk_while_saving_a_checkpoint_is_one_line_and_keeps_the_previous_one(tmp_path, monkeypatch):
    import torch

    from violet_core import run_dir

    directory = run_dir.RunDir(tmp_path / "run")
    directory.save_checkpoint(directory.checkpoint, {"step": 1, "w": torch.zeros(10)})
    real_open = open

    class FullDisk:
        """A file that takes 1 kB and then fails the way a full disk does."""

        def __init__(self, path, mode):
            self.handle = real_open(path, mode)

        def write(self, data):
            if self.handle.tell() + len(data) > 1000:
                raise OSError(errno.ENOSPC, "No space left on device")
            return self.handle.write(data)

        def __getattr__(self, name):
            return getattr(self.handle, name)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.handle.close()

    monkeypatch.setattr(run_dir, "open", FullDisk, raising=False)
    with pytest.raises(OutOfSpaceError) as caught:
        directory.save_checkpoint(directory.checkpoint, {"step": 2, "w": torch.zeros(100_000)})
    message = str(caught.value)
    assert message.startswith(str(directory.checkpoint)) and "out of disk space" in message and "\n" not in message
    assert "400.0 kB" in message  # the state's size: 100,000 float32 values
    assert sorted(p.name for p in directory.checkpoint.parent.iterdir()) == ["last.pt"]
    assert torch.load(directory.checkpoint, weights_only=True)["step"] == 1
