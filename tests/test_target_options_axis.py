"""A target option as an ablation axis: `mvm.options` selects which cached set a reference means.

1. Resolution among several sets of one target in a tiny cache: two codecs of hog, two DIS presets of
   flow. The oracle is the cache itself, read independently of the resolver: each set's folder name
   and the `target_spec` attribute h5py reads from its first shard (params["codec"], params["preset"]),
   and the ids `mvmtargets extract` prints.
2. A bad `mvm.options` is a one-line ConfigError naming `mvm.options`.
3. What `ablate run` extracts for a grid: the cache section's options under each run's, deduplicated,
   and a run that would read another set than the one extracted for it is refused.
4. A tiny grid with the axis `mvm.options: [{}, {hog: {codec: int8}}]` runs through `ablate run`
   (2 steps each) and `ablate report`; the two runs read different sets (their final.json).
5. The shipped ablations/grids/codec_check.yaml passes `ablate check`.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import h5py
import pytest
import yaml

from ablations.check import check_grid_file
from ablations.grid import load_grid
from ablations.prepare import prepare_cache
from ablations.prepare_plan import PrepareError, plan_cache
from mvm_targets.errors import InputError
from mvm_targets.provenance import CODE_VERSION_ENV
from mvm_targets.store.layout import open_clip_cache
from mvm_targets.store.reader import CacheReader
from violet_core.config import ConfigError, config_from_dict
from violet_core.target_info import read_target_infos

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "violet_core" / "configs" / "tiny.yaml"
GRIDS = REPO / "ablations" / "grids"
FRAMES, SIZE = 4, 64
# one thread per process on a shared machine; a pinned code version, so a commit made meanwhile changes no run
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", CODE_VERSION_ENV: "0.0.0+pinned-by-tests",
       "PYTHONPATH": os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)}


def cli(cwd: Path, *args: object, module: str = "mvm_targets.cli", timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", module, *map(str, args)], cwd=cwd, env=ENV, capture_output=True,
                          text=True, timeout=timeout)


def stamped_params(set_dir: Path) -> dict:
    """The params of the spec stamped into a set's first shard, read with h5py alone."""
    shard = sorted(set_dir.glob("shard-*.h5"))[0]
    with h5py.File(shard, "r") as handle:
        raw = handle.attrs["target_spec"]
    return json.loads(raw.decode() if isinstance(raw, bytes) else raw)["params"]


def sets_by(root: Path, prefix: str, key: str) -> dict:
    """{params.get(key): folder name} over the cached sets whose folder starts with `prefix`."""
    return {stamped_params(d).get(key): d.name for d in root.iterdir() if d.is_dir() and d.name.startswith(prefix)}


# ----------------------------------------------------------------------------------------------
# 1. Resolution among several sets of one target


@pytest.fixture(scope="module")
def two_of_each(tmp_path_factory) -> Path:
    """cache/toy/<frames>: hog stored fp16 and int8, flow:dis at the presets fast (its default) and ultrafast."""
    work = tmp_path_factory.mktemp("options")
    done = cli(work, "synth", "data", "--clips", "4", "--frames", "6", "--size", str(SIZE))
    assert done.returncode == 0, done.stderr
    printed = []
    for extra in ([], ["-o", "hog.codec=int8"], ["-t", "flow:dis"], ["-t", "flow:dis", "-o", "flow.preset=ultrafast"]):
        targets = [] if "-t" in extra else ["-t", "hog"]
        done = cli(work, "extract", "data", *targets, *extra, "--frames", FRAMES, "--size", SIZE, "--cache", "cache",
                   "--dataset", "toy")
        assert done.returncode == 0, done.stderr
        printed += re.findall(r"targets: (\S+);", done.stdout)
    root = open_clip_cache(work / "cache", "toy").root
    on_disk = {d.name for d in root.iterdir() if d.is_dir() and d.name != "frames"}
    assert sorted(printed) == sorted(on_disk) and len(on_disk) == 4  # four distinct sets, as extract named them
    return root


def test_without_options_resolution_is_unchanged(two_of_each):
    cache = open_clip_cache(two_of_each.parents[1], "toy")
    with pytest.raises(InputError, match="'hog' matches several configurations"):
        cache.resolve_target("hog")
    with pytest.raises(InputError, match="'flow:dis' matches several configurations"):
        CacheReader(two_of_each.parents[1], "toy", targets=["flow:dis"])


def test_options_pick_the_set_written_with_them(two_of_each):
    hog = sets_by(two_of_each, "hog-", "codec")
    flow = sets_by(two_of_each, "flow-", "preset")
    assert set(hog) == {None, "int8"} and set(flow) == {"fast", "ultrafast"}  # the default codec leaves no param
    cache = open_clip_cache(two_of_each.parents[1], "toy")
    cases = [
        ("hog", {"hog": {"codec": "int8"}}, hog["int8"]),
        ("hog", {"hog": {"codec": "fp16"}}, hog[None]),  # the default codec, named
        ("hog", {"hog": {}}, hog[None]),  # an empty entry: the default options
        ("hog", {}, hog[None]),  # no entry among a run's options: the default codec is preferred
        ("hog:paper", {"hog:paper": {"codec": "int8"}}, hog["int8"]),  # keyed by the reference
        ("flow:dis", {"flow": {"preset": "ultrafast"}}, flow["ultrafast"]),
        ("flow:dis", {"flow": {"preset": "fast"}}, flow["fast"]),  # equal to the default, still pinned
        ("flow:dis", {"optical_flow": {"preset": "fast"}}, flow["fast"]),  # an alias of the name
    ]
    for ref, options, folder in cases:
        assert cache.resolve_target(ref, options).set_id == folder, (ref, options)
    reader = CacheReader(two_of_each.parents[1], "toy", targets=["hog", "flow:dis"],
                         options={"hog": {"codec": "int8"}, "flow:dis": {"preset": "ultrafast"}})
    infos = read_target_infos(reader, ["hog", "flow:dis"])
    assert [i.target_id for i in infos] == [hog["int8"], flow["ultrafast"]]
    assert reader.spec("hog").codec == "int8" and reader[reader.keys[0]]["hog"].dtype.name == "float32"


def test_options_that_select_nothing_or_nothing_cached(two_of_each):
    cache = open_clip_cache(two_of_each.parents[1], "toy")
    # a worker count changes no stored value: both presets still match
    with pytest.raises(InputError, match="with num_workers=1 matches several configurations"):
        cache.resolve_target("flow:dis", {"flow": {"num_workers": 1}})
    with pytest.raises(InputError, match=r"no cached target 'hog' with codec=int8-half \(cached targets: "):
        cache.resolve_target("hog", {"hog": {"codec": "int8-half"}})
    with pytest.raises(InputError, match="does not accept|unexpected keyword"):
        cache.resolve_target("hog", {"hog": {"colour": 3}})
    int8 = sets_by(two_of_each, "hog-", "codec")["int8"]
    with pytest.raises(InputError, match=f"cached set '{int8}' was not written with codec=fp16"):
        cache.resolve_target(int8, {int8: {"codec": "fp16"}})


# ----------------------------------------------------------------------------------------------
# 2. Bad mvm.options


@pytest.mark.parametrize("mvm, reason", [
    ({"targets": ["hog"], "options": ["hog"]}, "'mvm.options' must be a mapping"),
    ({"targets": ["hog"], "options": {"hog": "int8"}}, "'mvm.options' must be a mapping"),
    ({"targets": ["hog"], "options": {"flow": {"codec": "int8"}}}, "'mvm.options': 'flow' is not among mvm.targets"),
    ({"targets": ["hog"], "options": {"hog:maskfeat": {}}}, "'mvm.options': 'hog:maskfeat' is not among"),
    ({"targets": ["hog"], "options": {"hog": {"codec": "int4"}}}, "'mvm.options': hog: unknown codec 'int4'"),
    ({"targets": ["hog"], "source": "online", "options": {"hog": {"codec": "int8"}}},
     "'mvm.options': hog: 'codec' is how a cached target is stored"),
    ({"targets": ["hog"], "online": {"options": {"hog": {}}}}, "'mvm.online.options': per-target options are"),
])
def test_bad_options_are_one_line_errors(mvm, reason):
    with pytest.raises(ConfigError) as caught:
        config_from_dict({"mvm": mvm})
    assert reason in str(caught.value) and "\n" not in str(caught.value)


def test_bad_options_stop_ablate_check_with_one_line(tmp_path):
    grid = write_grid(tmp_path, {"mvm.options": [{}, {"hog": {"codec": "int4"}}]}, steps=2)
    done = cli(tmp_path, "check", grid, module="ablations.cli")
    assert done.returncode != 0
    lines = [line for line in done.stderr.splitlines() + done.stdout.splitlines() if "int4" in line]
    assert len(lines) == 1 and "mvm.options" in lines[0] and "unknown codec 'int4'" in lines[0], done.stdout + done.stderr


# ----------------------------------------------------------------------------------------------
# 3. What ablate run extracts


def write_grid(folder: Path, axes: dict, steps: int = 2, cache_options: dict | None = None,
               base_options: dict | None = None) -> Path:
    cache = {"source": "data/synthetic/captions.csv", "synth": {"clips": 12, "seed": 0, "frames": 6, "size": SIZE},
             "num_frames": FRAMES, "size": SIZE}
    if cache_options:
        cache["options"] = cache_options
    base = {"data": {"size": SIZE, "source": "data/synthetic", "cache": "cache", "dataset": "synthetic"},
            "mvm": {"targets": ["hog"], **({"options": base_options} if base_options else {})},
            "pretrain": {"optim": {"steps": steps, "batch_size": 2}, "log_every": 1, "checkpoint_every": 0},
            "downstream": {"tasks": ["retrieval"], "optim": {"steps": 1, "batch_size": 2}, "eval_batch_size": 4}}
    grid = {"name": "opts", "base_config": str(TINY), "base": base, "cache": cache, "axes": axes, "seeds": [0, 1]}
    path = folder / "opts.yaml"
    path.write_text(yaml.safe_dump(grid, sort_keys=False))
    return path


def test_each_distinct_target_and_options_is_extracted_once(tmp_path):
    grid = load_grid(write_grid(tmp_path, {"mvm.options": [{}, {"hog": {"codec": "int8"}}, {"hog": {"codec": "fp16"}}]},
                                cache_options={"hog": {"orientations": 9}}))
    (job,) = plan_cache(grid)
    assert len(job.reads) == 6  # 3 option values x 2 seeds, one cached target each
    # the section's options under each run's; the run's codec wins; seeds share their request
    assert [(r.ref, r.options) for r in job.requests] == [
        ("hog", {"codec": "fp16", "orientations": 9}), ("hog", {"codec": "int8", "orientations": 9}),
        ("hog", {"orientations": 9})]


def test_a_run_that_would_read_another_set_is_refused(tmp_path, monkeypatch):
    """cache.options give hog int8, but the runs say nothing: once the cache also holds the default
    set, the trainer (which sees only mvm.options) would read that one."""
    grid = load_grid(write_grid(tmp_path, {"mask.ratio": [0.3]}, cache_options={"hog": {"codec": "int8"}}))
    monkeypatch.chdir(tmp_path)  # the grid's cache and data paths are relative to the working directory
    prepare_cache(grid, say=lambda line: None)  # only the int8 set: the run's bare hog can mean nothing else
    plain = load_grid(write_grid(tmp_path, {"mask.ratio": [0.3]}))
    prepare_cache(plain, say=lambda line: None)  # adds the default set
    with pytest.raises(PrepareError, match=r"run 'seed=0' would read hog from hog-paper-\w+, not from hog-paper-\w+"):
        prepare_cache(grid, say=lambda line: None)
    stated = load_grid(write_grid(tmp_path, {"mask.ratio": [0.3]}, base_options={"hog": {"codec": "int8"}}))
    prepare_cache(stated, say=lambda line: None)  # stated in the runs' mvm.options: the trainer sees it


# ----------------------------------------------------------------------------------------------
# 4. The codec as an axis, end to end


def test_codec_axis_runs_through_ablate_run_and_report(tmp_path):
    grid = write_grid(tmp_path, {"mvm.options": [{}, {"hog": {"codec": "int8"}}]}, steps=2)
    raw = yaml.safe_load(grid.read_text())
    raw["seeds"] = [0]
    grid.write_text(yaml.safe_dump(raw, sort_keys=False))
    done = cli(tmp_path, "run", grid, "--runs-dir", "runs", module="ablations.cli", timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    finals = {json.loads((d / "run.json").read_text())["alias"]: json.loads((d / "final.json").read_text())
              for d in (tmp_path / "runs").iterdir() if (d / "final.json").exists()}
    assert sorted(finals) == ["mvm.options=hog.codec=int8,seed=0", "mvm.options=none,seed=0"]
    read = {alias: [t["target_id"] for t in final["targets"]] for alias, final in finals.items()}
    stored = sets_by(open_clip_cache(tmp_path / "cache", "synthetic").root, "hog-", "codec")
    assert read == {"mvm.options=none,seed=0": [stored[None]], "mvm.options=hog.codec=int8,seed=0": [stored["int8"]]}
    report = cli(tmp_path, "report", "runs", "--out", "rep", module="ablations.cli")
    assert report.returncode == 0, report.stderr[-3000:]
    text = (tmp_path / "rep" / "report.md").read_text()
    assert "mvm.options: hog.codec=int8, none" in text or "mvm.options: none, hog.codec=int8" in text
    assert "target options" in text


# ----------------------------------------------------------------------------------------------
# 5. The shipped codec grid


def test_codec_check_grid_passes_ablate_check():
    report = check_grid_file(GRIDS / "codec_check.yaml")
    assert report.ok, report.error_lines()
    grid = load_grid(GRIDS / "codec_check.yaml")
    assert len(grid.runs) == 8 and grid.baseline == {"mvm.options": {}}
    cells = {(tuple(r.factors["mvm.targets"]), json.dumps(r.factors["mvm.options"], sort_keys=True)) for r in grid.runs}
    assert cells == {(("hog",), "{}"), (("hog",), '{"hog": {"codec": "int8"}}'),
                     (("flow:dis",), "{}"), (("flow:dis",), '{"flow": {"codec": "int8"}}')}
    (job,) = plan_cache(grid)
    assert {str(r) for r in job.requests} == {"hog", "hog (codec=int8)", "flow:dis", "flow:dis (codec=int8)"}
