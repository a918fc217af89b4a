"""ablations.grid: expansion counts, content-addressed run ids, aliases and every validation error."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml

from ablations.grid import GridError, describe, expand, load_grid, run_id
from violet_core.config import config_from_dict

REPO = Path(__file__).resolve().parents[1]
GRIDS = REPO / "ablations" / "grids"

TARGETS = '[[], [pixel], [hog], ["flow:dis"]]'


def write_grid(tmp_path: Path, text: str, name: str = "g.yaml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def product_grid(tmp_path: Path, extra: str = "", name: str = "g.yaml") -> Path:
    return write_grid(tmp_path, textwrap.dedent(f"""
        name: t
        base: {{pretrain: {{optim: {{steps: 2}}}}}}
        axes:
          mvm.targets: {TARGETS}
          mask.ratio: [0.15, 0.3]
        seeds: [0, 1]
        labels: {{mvm.targets: target}}
        """) + textwrap.dedent(extra), name)


# ----------------------------------------------------------------------------------------------
# Expansion


def test_product_of_axes_and_seeds(tmp_path):
    grid = load_grid(product_grid(tmp_path))
    assert len(grid.runs) == 4 * 2 * 2
    assert grid.axes == ["mvm.targets", "mask.ratio", "seed"]
    # file order, seed fastest
    assert [r.alias for r in grid.runs[:3]] == ["target=none,mask.ratio=0.15,seed=0",
                                                "target=none,mask.ratio=0.15,seed=1",
                                                "target=none,mask.ratio=0.3,seed=0"]
    hog = next(r for r in grid.runs if r.alias == "target=hog,mask.ratio=0.3,seed=1")
    assert hog.factors == {"mvm.targets": ["hog"], "mask.ratio": 0.3, "seed": 1}
    assert hog.config["mvm"]["targets"] == ["hog"] and hog.config["mask"]["ratio"] == 0.3
    assert hog.config["seed"] == 1 and hog.config["pretrain"]["optim"]["steps"] == 2
    assert hog.config["name"] == hog.alias
    assert len({r.run_id for r in grid.runs}) == 16


def test_zip_group_varies_together(tmp_path):
    path = write_grid(tmp_path, f"""
        axes: {{mvm.targets: {TARGETS}}}
        zip:
          - {{mask.strategies: [[rm], [rm, bm]], mask.paper: [true, false]}}
        seeds: [0, 1]
        """)
    grid = load_grid(path)
    assert len(grid.runs) == 4 * 2 * 2  # the group is one axis of 2 rows, not 2 x 2
    pairs = [(tuple(r.factors["mask.strategies"]), r.factors["mask.paper"]) for r in grid.runs]
    assert set(pairs) == {(("rm",), True), (("rm", "bm"), False)}
    assert pairs.count((("rm",), True)) == 8
    assert grid.axes == ["mvm.targets", "mask.strategies", "mask.paper", "seed"]
    assert grid.paired == [["mask.strategies", "mask.paper"]]


def test_a_paired_key_may_repeat_a_value_beside_different_partners(tmp_path):
    path = write_grid(tmp_path, """
        zip:
          - {mvm.targets: [[], [pixel], [hog]], mask.ratio: [0.3, 0.3, 0.15]}
        """)
    grid = load_grid(path)
    rows = [(tuple(r.factors["mvm.targets"]), r.factors["mask.ratio"]) for r in grid.runs]
    assert rows == [((), 0.3), (("pixel",), 0.3), (("hog",), 0.15)]
    assert len({r.run_id for r in grid.runs}) == 3


def test_a_baseline_naming_one_paired_key_is_the_whole_row_of_its_zip_group(tmp_path):
    path = write_grid(tmp_path, """
        zip:
          - {mvm.targets: [[], [hog], [pixel]], mask.ratio: [0.3, 0.15, 0.15]}
        baseline: {mvm.targets: []}
        """)
    assert load_grid(path).baseline == {"mvm.targets": [], "mask.ratio": 0.3}
    ambiguous = write_grid(tmp_path, """
        zip:
          - {mvm.targets: [[], [hog], [pixel]], mask.ratio: [0.3, 0.15, 0.15]}
        baseline: {mask.ratio: 0.15}
        """)
    with pytest.raises(GridError, match=r"baseline: mask.ratio=0.15 of the paired keys mvm.targets, mask.ratio "
                                        r"matches 2 of its rows; name the others too"):
        load_grid(ambiguous)
    absent = write_grid(tmp_path, """
        zip:
          - {mvm.targets: [[], [hog], [pixel]], mask.ratio: [0.3, 0.15, 0.15]}
        baseline: {mvm.targets: [], mask.ratio: 0.15}
        """)
    with pytest.raises(GridError, match="is not one of its rows"):
        load_grid(absent)


def test_exclude_drops_exactly_the_matching_runs(tmp_path):
    grid = load_grid(product_grid(tmp_path, """
        exclude:
          - {mvm.targets: ["flow:dis"], mask.ratio: 0.15}
        """))
    assert len(grid.runs) == 14 and grid.excluded == 2
    dropped = [r for r in grid.runs if r.factors["mvm.targets"] == ["flow:dis"] and r.factors["mask.ratio"] == 0.15]
    assert dropped == []
    assert sum(r.factors["mvm.targets"] == ["flow:dis"] for r in grid.runs) == 2  # ratio 0.3 kept, both seeds


def test_exclude_can_name_a_seed(tmp_path):
    grid = load_grid(product_grid(tmp_path, """
        exclude:
          - {mvm.targets: [hog], seed: 1}
          - {mask.ratio: 0.3, mvm.targets: []}
        """))
    # hog seed 1 at both ratios (2) + none at 0.3 for both seeds (2)
    assert len(grid.runs) == 16 - 4 and grid.excluded == 4


def test_seeds_default_to_the_base_seed(tmp_path):
    grid = load_grid(write_grid(tmp_path, "base: {seed: 7}\naxes: {mask.ratio: [0.15, 0.3]}\n"))
    assert [r.factors["seed"] for r in grid.runs] == [7, 7]
    assert [r.alias for r in grid.runs] == ["mask.ratio=0.15,seed=7", "mask.ratio=0.3,seed=7"]


def test_alias_names_only_varied_axes_and_is_filesystem_safe(tmp_path):
    path = write_grid(tmp_path, f"""
        axes:
          mvm.targets: [[], [hog, "flow:dis"]]
          model.hidden: [128]
        seeds: [3]
        """)
    aliases = [r.alias for r in load_grid(path).runs]
    assert aliases == ["mvm.targets=none,seed=3", "mvm.targets=hog+flow_dis,seed=3"]
    assert all("/" not in a and ":" not in a and " " not in a for a in aliases)


def test_base_config_relative_to_grid_file_and_overrides(tmp_path):
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "small.yaml").write_text("model: {hidden: 64, heads: 2}\ndata: {size: 64}\n")
    grids = tmp_path / "grids"
    grids.mkdir()
    path = write_grid(grids, """
        base_config: ../configs/small.yaml
        base: {data.size: 96, model: {layers: 3}}
        axes: {mask.ratio: [0.15, 0.3]}
        """)
    grid = load_grid(path, overrides={"pretrain.optim.steps": 5})
    config = grid.runs[0].config
    assert (config["model"]["hidden"], config["model"]["layers"], config["data"]["size"]) == (64, 3, 96)
    assert config["pretrain"]["optim"]["steps"] == 5
    assert grid.base["data"]["size"] == 96
    with pytest.raises(GridError, match=r"g\.yaml: overrides: 'mask\.ratio' is a grid axis"):
        load_grid(path, overrides={"mask.ratio": 0.5})
    with pytest.raises(GridError, match=r"overrides: 'pretrain\.optim\.step' is not a RunConfig field"):
        load_grid(path, overrides={"pretrain.optim.step": 5})


# ----------------------------------------------------------------------------------------------
# Identity


def test_run_id_is_the_hash_of_the_canonical_config_without_placement_fields(tmp_path):
    run = load_grid(product_grid(tmp_path)).runs[5]
    stripped = json.loads(json.dumps(run.config))
    for key in ("name", "out_dir", "device"):
        del stripped[key]
    del stripped["data"]["num_workers"]
    canonical = json.dumps(stripped, sort_keys=True, separators=(",", ":"))
    assert run.run_id == hashlib.sha256(canonical.encode()).hexdigest()[:12]
    assert run_id(run.config) == run.run_id == run_id(config_from_dict(run.config))


def test_run_id_ignores_name_out_dir_workers_and_device_only():
    base = {"mask": {"ratio": 0.3}}
    same = {"mask": {"ratio": 0.3}, "name": "other", "out_dir": "/scratch/x", "device": "cuda:1",
            "data": {"num_workers": 8}}
    assert run_id(base) == run_id(same)
    assert run_id({"mask": {"ratio": 1}}) == run_id({"mask": {"ratio": 1.0}})  # resolved before hashing
    assert run_id(base) != run_id({"mask": {"ratio": 0.3}, "precision": "fp32"})
    assert run_id(base) != run_id({"mask": {"ratio": 0.3}, "pretrain": {"optim": {"lr": 1e-4}}})


def test_run_ids_do_not_depend_on_axis_or_value_order(tmp_path):
    forward = load_grid(product_grid(tmp_path, name="a.yaml"))
    backward = load_grid(write_grid(tmp_path, f"""
        name: reordered
        base: {{pretrain: {{optim: {{steps: 2}}}}}}
        axes:
          mask.ratio: [0.3, 0.15]
          mvm.targets: [["flow:dis"], [hog], [pixel], []]
        seeds: [1, 0]
        """, "b.yaml"))

    def by_factors(grid):
        return {json.dumps(r.factors, sort_keys=True): r.run_id for r in grid.runs}

    assert by_factors(forward) == by_factors(backward)
    assert forward.grid_hash != backward.grid_hash


def test_same_config_from_different_grids_gets_the_same_id(tmp_path):
    one = load_grid(write_grid(tmp_path, "base: {mask: {ratio: 0.3}}\naxes: {mvm.targets: [[hog], []]}\n", "1.yaml"))
    other = load_grid(write_grid(tmp_path, """
        name: elsewhere
        base: {mvm.targets: [hog]}
        axes: {mask.ratio: [0.15, 0.3]}
        """, "2.yaml"))
    assert one.runs[0].run_id == other.runs[1].run_id
    assert one.runs[0].alias != other.runs[1].alias


def test_run_ids_stable_across_python_hash_seeds(tmp_path):
    path = product_grid(tmp_path)
    here = [r.run_id for r in load_grid(path).runs]
    code = ("import json, sys; from ablations.grid import load_grid; "
            "print(json.dumps([r.run_id for r in load_grid(sys.argv[1]).runs] + [load_grid(sys.argv[1]).grid_hash]))")
    outputs = []
    for seed in ("1", "4242"):
        env = {**os.environ, "PYTHONHASHSEED": seed, "PYTHONPATH": str(REPO)}
        done = subprocess.run([sys.executable, "-c", code, str(path)], env=env, capture_output=True, text=True,
                              check=True, cwd=REPO)
        outputs.append(json.loads(done.stdout))
    assert outputs[0] == outputs[1]
    assert outputs[0][:-1] == here and outputs[0][-1] == load_grid(path).grid_hash


def test_grid_hash_follows_content_not_key_order(tmp_path):
    a = load_grid(write_grid(tmp_path, "axes: {mask.ratio: [0.3]}\nseeds: [0, 1]\n", "a.yaml"))
    b = load_grid(write_grid(tmp_path, "seeds: [0, 1]\naxes: {mask.ratio: [0.3]}\n", "a2.yaml"))
    c = load_grid(write_grid(tmp_path, "axes: {mask.ratio: [0.3]}\nseeds: [0, 2]\n", "a3.yaml"))
    assert len(a.grid_hash) == 64
    assert a.name != b.name  # names default to the file stem, and the name is grid content
    b2 = load_grid(write_grid(tmp_path, "seeds: [0, 1]\naxes: {mask.ratio: [0.3]}\nname: a\n", "x.yaml"))
    assert a.grid_hash == b2.grid_hash != c.grid_hash


# ----------------------------------------------------------------------------------------------
# Validation: one line, naming the file and the key

ERRORS = {
    "unknown_axis": ("axes: {mask.ration: [0.3]}",
                     "axes: 'mask.ration' is not a RunConfig field (did you mean 'mask.ratio'?)"),
    "empty_axis": ("axes: {mask.ratio: []}", "axes: 'mask.ratio' needs a non-empty list of values"),
    "scalar_axis": ("axes: {mask.ratio: 0.3}", "axes: 'mask.ratio' needs a non-empty list of values"),
    "duplicate_value": ("axes: {mask.ratio: [0.3, 0.30]}", "axes: 'mask.ratio' lists the value 0.3 twice"),
    "seed_axis": ("axes: {seed: [0, 1]}", "axes: 'seed' is the replicate axis"),
    "identity_excluded_axis": ("axes: {device: [cpu, cuda]}", "axes: 'device' does not change results"),
    "zip_unequal": ("zip: [{mask.strategies: [[rm], [bm]], mask.paper: [true]}]",
                    "zip[0]: paired axes need lists of equal length (mask.strategies has 2, mask.paper has 1)"),
    "zip_repeats_pair": ("zip: [{mask.ratio: [0.3, 0.3], mask.paper: [true, true]}]",
                         "zip[0]: lists the pair {'mask.ratio': 0.3, 'mask.paper': True} twice"),
    "zip_repeats_axis": ("axes: {mask.ratio: [0.3]}\nzip: [{mask.ratio: [0.15], mask.paper: [true]}]",
                         "zip[0]: 'mask.ratio' is already an axis"),
    "exclude_not_axis": ("axes: {mvm.targets: [[], [hog]]}\nexclude: [{mask.ratio: 0.15}]",
                         "exclude[0]: 'mask.ratio' is not an axis of this grid"),
    "exclude_value_not_in_axis": ("axes: {mask.ratio: [0.15, 0.3]}\nexclude: [{mask.ratio: 0.5}]",
                                  "exclude[0]: 'mask.ratio': 0.5 is not a value of the axis"),
    "exclude_everything": ("axes: {mask.ratio: [0.3]}\nexclude: [{mask.ratio: 0.3}]", "exclude: every run is excluded"),
    "baseline_value": ("axes: {mvm.targets: [[], [hog]]}\nbaseline: {mvm.targets: [sif]}",
                       "baseline: 'mvm.targets': ['sif'] is not a value of the axis"),
    "baseline_not_axis": ("axes: {mvm.targets: [[], [hog]]}\nbaseline: {mask.ratio: 0.3}",
                          "baseline: 'mask.ratio' is not an axis of this grid"),
    "baseline_seed": ("axes: {mvm.targets: [[], [hog]]}\nbaseline: {seed: 0}", "baseline: 'seed' is not an axis"),
    "baseline_excluded": ("axes: {mvm.targets: [[], [hog]]}\nexclude: [{mvm.targets: []}]\nbaseline: {mvm.targets: []}",
                          "baseline: the cell mvm.targets=none is entirely excluded"),
    "duplicate_seeds": ("seeds: [0, 1, 1]", "seeds: lists seed 1 twice"),
    "non_int_seed": ("seeds: [0, a]", "seeds: 'a' is not an integer"),
    "unknown_top_level": ("axis: {mask.ratio: [0.3]}", "unknown top-level key 'axis'"),
    "labels_not_axis": ("axes: {mask.ratio: [0.3]}\nlabels: {mvm.targets: target}",
                        "labels: 'mvm.targets' is not an axis"),
    "config_error": ("axes: {mask.ratio: [0.3, 1.5]}",
                     "run 'mask.ratio=1.5,seed=0': 'mask.ratio': 1.5 is not in (0, 1]"),
    "config_type_error": ("base: {pretrain: {optim: {steps: many}}}",
                          "run 'seed=0': 'pretrain.optim.steps' must be an integer, got 'many'"),
    "missing_base_config": ("base_config: nowhere.yaml", "base_config: no such file"),
    "cache_not_mapping": ("cache: data/x.csv", "cache: must be a mapping"),
}


@pytest.mark.parametrize("case", sorted(ERRORS))
def test_validation_errors(tmp_path, case):
    text, expected = ERRORS[case]
    path = write_grid(tmp_path, text + "\n", f"{case}.yaml")
    with pytest.raises(GridError) as caught:
        load_grid(path)
    message = str(caught.value)
    assert message.startswith(f"{path}: ") and "\n" not in message
    assert expected in message


def test_missing_grid_file_and_bad_yaml(tmp_path):
    with pytest.raises(GridError, match="no such grid file"):
        load_grid(tmp_path / "absent.yaml")
    with pytest.raises(GridError, match="not valid YAML"):
        load_grid(write_grid(tmp_path, "axes: {mask.ratio: [0.3\n"))
    with pytest.raises(GridError, match="a grid must be a mapping"):
        load_grid(write_grid(tmp_path, "- 1\n", "list.yaml"))


# ----------------------------------------------------------------------------------------------
# Shipped grids and the dry-run summary


def test_paper_table1_grid():
    grid = load_grid(GRIDS / "paper_table1.yaml")
    targets = [r.factors["mvm.targets"] for r in grid.runs[::3]]
    assert targets == [[], ["pixel"], ["hog"], ["depth"], ["flow:raft"], ["vq"], ["sif"], ["tvf"], ["mmf"]]
    assert len(grid.runs) == 27 and grid.baseline == {"mvm.targets": []}
    config = grid.runs[0].config
    model = config["model"]
    assert (model["video_backbone"], model["hidden"], model["layers"], model["heads"], model["intermediate"]) == \
        ("swin-b", 768, 12, 12, 3072)
    assert (config["data"]["num_frames"], config["data"]["size"]) == (4, 224)
    assert (config["mask"]["strategies"], config["mask"]["ratio"]) == (["rm", "bm"], 0.3)
    assert (config["pretrain"]["optim"]["lr"], config["pretrain"]["optim"]["batch_size"]) == (5e-5, 20)
    assert config["downstream"]["tasks"] == ["retrieval", "qa_oe"]
    # base.yaml is inherited; the settings the official code uses are stated
    assert config["model"]["text_weights"] == config["data"]["tokenizer"] == "weights/bert-base-uncased"
    assert config["data"]["hflip_prob"] == 0.0
    assert config["downstream"]["max_text_len"] == {"retrieval": 100} and config["data"]["max_text_len"] == 32
    assert sorted(config["downstream"]["files"]) == ["qa_oe_eval", "qa_oe_train", "retrieval_eval",
                                                     "retrieval_train"]
    # 5 cached frames: finetuning reads all of them, pretraining a window of 4
    assert (grid.cache["num_frames"], grid.cache["size"]) == (5, 224)
    assert config["downstream"]["num_frames"] == 5


def test_demo_grid_content(tmp_path):
    raw = yaml.safe_load((GRIDS / "demo.yaml").read_text())
    assert raw["base_config"] == "../../violet_core/configs/tiny.yaml"
    assert raw["cache"] == {"source": "data/demo/captions.csv",
                            "synth": {"clips": 400, "seed": 0, "object_scale": 2.0}, "num_frames": 4, "size": 64}
    tiny = yaml.safe_load((GRIDS.parent.parent / "violet_core" / "configs" / "tiny.yaml").read_text())
    # the runs read exactly the dataset and sampling the grid extracts
    assert raw["cache"]["size"] == tiny["data"]["size"] and raw["cache"]["num_frames"] == tiny["data"]["num_frames"]
    assert raw["cache"]["source"] == f"{tiny['data']['source']}/captions.csv"
    raw.pop("base_config")
    grid = expand(raw, GRIDS / "demo.yaml")
    # the baseline and the positive control over 6 seeds, the real targets on seed 0
    # (the real targets stored with the int8 codec)
    expected = ([f"target={t},storage=none,seed={s}" for t in ("none", "palette") for s in range(6)]
                + ["target=hog,storage=hog.codec=int8,seed=0", "target=flow_dis,storage=flow.codec=int8,seed=0"])
    assert [r.alias for r in grid.runs] == expected
    assert grid.runs[-1].factors["mvm.targets"] == ["flow:dis"] and grid.excluded == 10
    assert grid.runs[-1].config["mvm"]["options"] == {"flow": {"codec": "int8"}}
    assert all(r.config["mvm"]["options"] == {} for r in grid.runs[:12])
    # the baseline is masked like the MVM runs: the deltas are the MVM loss's alone
    assert raw["base"] == {"mask.video_without_mvm": True}


def test_demo_grid_loads_with_its_base_config():
    if not (REPO / "violet_core" / "configs" / "tiny.yaml").exists():
        pytest.skip("violet_core/configs/tiny.yaml (the demo's base_config) does not exist yet")
    grid = load_grid(GRIDS / "demo.yaml")
    assert len(grid.runs) == 14 and grid.name == "demo"


def test_describe_lists_axes_counts_and_runs(tmp_path):
    grid = load_grid(product_grid(tmp_path, """
        exclude: [{mvm.targets: ["flow:dis"], mask.ratio: 0.15}]
        baseline: {mvm.targets: []}
        """))
    text = describe(grid)
    assert "axis target (mvm.targets): none | pixel | hog | flow:dis" in text
    assert "14 runs in 7 cells, 2 excluded" in text
    assert "baseline: target=none" in text
    assert all(f"{r.run_id}  {r.alias}" in text for r in grid.runs)


# ----------------------------------------------------------------------------------------------
# Names, cache overrides, invalid runs collected


@pytest.mark.parametrize("name, reason", [
    ("../../../pwned", "must be one folder name"), ("a/b", "must be one folder name"),
    ("..", "the current or the parent folder"), (".hidden", "must not start with '.'"),
])
def test_grid_name_is_one_folder(tmp_path, name, reason):
    with pytest.raises(GridError, match=rf"g\.yaml: name: .*{reason}"):
        load_grid(product_grid(tmp_path, f"name: {json.dumps(name)}\n"))


def test_grid_stem_is_checked_when_no_name_is_given(tmp_path):
    path = write_grid(tmp_path, "axes: {mask.ratio: [0.1, 0.2]}\n", ".hidden.yaml")
    with pytest.raises(GridError, match=r"name: '\.hidden' must not start with '\.'"):
        load_grid(path)
    assert load_grid(write_grid(tmp_path, "name: 2024\naxes: {mask.ratio: [0.1, 0.2]}\n")).name == "2024"


def test_label_must_not_start_with_a_dot(tmp_path):
    with pytest.raises(GridError, match="labels"):
        load_grid(product_grid(tmp_path, "labels: {mvm.targets: .t}\n"))


def test_cache_overrides_apply_to_the_cache_section_only(tmp_path):
    path = product_grid(tmp_path, """
        cache: {source: data/x/captions.csv, synth: {clips: 8, seed: 0}, num_frames: 4}
        """)
    grid = load_grid(path, {"cache.weights": "random", "cache.synth.clips": 16, "cache.num_frames": 5,
                            "data.size": 64})
    assert grid.cache == {"source": "data/x/captions.csv", "synth": {"clips": 16, "seed": 0}, "num_frames": 5,
                          "weights": "random"}
    assert all(r.config["data"]["size"] == 64 for r in grid.runs)
    assert load_grid(path).grid_hash != grid.grid_hash
    with pytest.raises(GridError, match="'cache_x' is not a RunConfig field"):
        load_grid(path, {"cache_x": 1})


def test_invalid_runs_are_collected_when_asked(tmp_path):
    path = write_grid(tmp_path, """
        axes: {mask.ratio: [0.3, 1.5], data.size: [64, 100]}
        seeds: [0, 1]
        """)
    with pytest.raises(GridError, match="run 'mask.ratio=0.3,data.size=100,seed=0'"):
        load_grid(path)
    invalid = []
    grid = load_grid(path, None, invalid)
    assert [r.alias for r in grid.runs] == ["mask.ratio=0.3,data.size=64,seed=0", "mask.ratio=0.3,data.size=64,seed=1"]
    assert len(invalid) == 6
    bad = next(i for i in invalid if i.alias == "mask.ratio=1.5,data.size=64,seed=1")
    assert bad.factors == {"mask.ratio": 1.5, "data.size": 64, "seed": 1} and "'mask.ratio': 1.5" in bad.reason

