"""ablations.report on fabricated run directories with hand-chosen metric values.

Hand computations used below (R@1):
    none  seeds 0,1,2 = 10, 12, 14      mean 12, std 2, se 2/sqrt(3) = 1.1547
    hog   seeds 0,1,2 = 13, 15, 20      mean 16, std sqrt(13) = 3.6056, se 2.0817
          paired differences 3, 3, 6    delta 4, std sqrt(3), se sqrt(3)/sqrt(3) = 1, 3 pairs
    pixel seeds 0,1,3 = 11, 14, 30      mean 55/3, std sqrt(313/3) = 10.2144, se 5.8973
          seed 3 has no baseline run: differences 1, 2 -> delta 1.5, std sqrt(0.5), se 0.5, 2 pairs
    sif   seed 0 = 25 (random teacher)  n 1, std/se NaN; delta 15 from 1 pair
    depth seed 0 failed, seed 1 pending -> missing cell
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd
import pytest

from ablations.report import factor_columns, find_flags, load_runs, report_main, summarize, write_report

R1 = "retrieval/R@1"
SQRT3 = math.sqrt(3)


def make_run(root: Path, run_id: str, targets: list[str], seed: int, r1: float | None = None, state: str = "done",
             failure: str | None = None, message: str = "", code: str = "abc123", teacher: str = "pretrained",
             extra_factors: dict | None = None, software: dict | None = None,
             cell_seeds: list[int] | None = None) -> Path:
    run_dir = root / run_id
    run_dir.mkdir(parents=True)
    factors = {"mvm.targets": targets, **(extra_factors or {}), "seed": seed}
    alias = ",".join(f"{k}={'+'.join(v) or 'none' if isinstance(v, list) else v}" for k, v in factors.items())
    (run_dir / "run.json").write_text(json.dumps({
        "run_id": run_id, "alias": alias, "grid": "fake", "grid_hash": "f" * 64, "factors": factors,
        "code_version": code, "baseline": {"mvm.targets": []}, "labels": {"mvm.targets": "target"},
        **({"cell_seeds": cell_seeds} if cell_seeds is not None else {})}))
    (run_dir / "status.json").write_text(json.dumps({"state": state, "failure": failure, "message": message}))
    if r1 is not None:
        (run_dir / "final.json").write_text(json.dumps({
            "metrics": {R1: r1, "pretrain/loss": r1 / 10, "retrieval/MdR": 4},
            "chance": {R1: 1.0},
            "targets": [{"ref": t, "target_id": f"{t}-id", "teacher_weights": teacher} for t in targets],
            "code_version": code, "seed": seed, "wall_s": 1.0, "steps": 2,
            "software": software or {"python": "3.11.7", "torch": "2.13.0+cpu", "numpy": "2.4.6"}}))
    return run_dir


@pytest.fixture
def runs_root(tmp_path: Path) -> Path:
    root = tmp_path / "runs"
    for seed, value in zip((0, 1, 2), (10, 12, 14)):
        make_run(root, f"none{seed}", [], seed, value)
    for seed, value in zip((0, 1, 2), (13, 15, 20)):
        make_run(root, f"hog{seed}", ["hog"], seed, value)
    for seed, value in zip((0, 1, 3), (11, 14, 30)):
        make_run(root, f"pixel{seed}", ["pixel"], seed, value)
    make_run(root, "sif0", ["sif"], 0, 25, teacher="random", code="def456")
    make_run(root, "depth0", ["depth"], 0, state="failed", failure="nan", message="loss is NaN at step 3")
    make_run(root, "depth1", ["depth"], 1, state="pending")
    (root / "logs").mkdir()  # not a run directory
    (root / "notes.txt").write_text("x")
    return root


def stats(summary: pd.DataFrame, target: str, metric: str = R1) -> dict:
    rows = summary[(summary["mvm.targets"] == target) & (summary["metric"] == metric)]
    assert len(rows) == 1
    return rows.iloc[0].to_dict()


def test_load_runs_long_format(runs_root):
    df = load_runs([runs_root])
    assert df["run_id"].nunique() == 12  # logs/ and notes.txt skipped
    assert factor_columns(df) == ["mvm.targets"]
    assert {"run_id", "alias", "state", "failure", "code_version", "seed", "metric", "value",
            "random_teacher"} <= set(df.columns)
    hog1 = df[(df["run_id"] == "hog1") & (df["metric"] == R1)].iloc[0]
    assert (hog1["mvm.targets"], hog1["seed"], hog1["value"], hog1["state"]) == ("hog", 1, 15.0, "done")
    assert set(df.loc[df["run_id"] == "none0", "mvm.targets"]) == {"none"}
    assert len(df[df["run_id"] == "hog1"]) == 3  # one row per metric
    pending = df[df["run_id"] == "depth1"]
    assert len(pending) == 1 and pending["metric"].isna().all() and pending["state"].iat[0] == "pending"
    assert df.loc[df["run_id"] == "sif0", "random_teacher"].all()
    assert not df.loc[df["run_id"] == "hog0", "random_teacher"].any()
    # single run directories work too, and a directory given twice is read once
    one = load_runs([runs_root / "hog0", runs_root / "hog0", runs_root / "none0"])
    assert sorted(one["run_id"].unique()) == ["hog0", "none0"]


def test_runs_without_runner_files(tmp_path):
    # `ablate train` alone writes final.json or, on failure, the trainer's failure.json
    done, failed = tmp_path / "a", tmp_path / "b"
    done.mkdir(), failed.mkdir()
    (done / "final.json").write_text(json.dumps({"metrics": {R1: 7.5}, "seed": 4, "code_version": "v"}))
    (failed / "failure.json").write_text(json.dumps({"class": "nan", "message": "loss is inf", "step": 9}))
    df = load_runs([done, failed]).set_index("run_id")
    assert (df.loc["a", "state"], df.loc["a", "seed"], df.loc["a", "value"]) == ("done", 4, 7.5)
    assert (df.loc["b", "state"], df.loc["b", "failure"], df.loc["b", "message"]) == ("failed", "nan", "loss is inf")
    assert factor_columns(load_runs([done])) == []


def test_mean_std_se_n(runs_root):
    summary = summarize(load_runs([runs_root]), ["mvm.targets"], None, [R1])
    none, hog, pixel, sif = (stats(summary, t) for t in ("none", "hog", "pixel", "sif"))
    assert (none["n"], none["mean"], none["std"], none["se"]) == pytest.approx((3, 12.0, 2.0, 2 / SQRT3))
    assert (hog["n"], hog["mean"], hog["std"], hog["se"]) == pytest.approx((3, 16.0, math.sqrt(13),
                                                                            math.sqrt(13) / SQRT3))
    assert (pixel["mean"], pixel["std"]) == pytest.approx((55 / 3, math.sqrt(313 / 3)))
    assert sif["n"] == 1 and sif["mean"] == 25 and math.isnan(sif["std"]) and math.isnan(sif["se"])
    assert none["chance"] == 1.0
    assert math.isnan(hog["delta"])  # no baseline, no delta
    assert set(summary["metric"]) == {R1}
    assert "depth" not in set(summary["mvm.targets"])  # no done run


def test_paired_delta_against_baseline(runs_root):
    summary = summarize(load_runs([runs_root]), ["mvm.targets"], {"mvm.targets": []})
    hog, pixel, none, sif = (stats(summary, t) for t in ("hog", "pixel", "none", "sif"))
    assert (hog["delta"], hog["delta_std"], hog["delta_se"], hog["n_pairs"]) == pytest.approx((4.0, SQRT3, 1.0, 3))
    # seed 3 of pixel has no baseline partner: dropped from delta, kept in mean/n
    assert (pixel["delta"], pixel["delta_std"], pixel["delta_se"], pixel["n_pairs"]) == \
        pytest.approx((1.5, math.sqrt(0.5), 0.5, 2))
    assert pixel["n"] == 3
    assert (none["delta"], none["n_pairs"], none["is_baseline"]) == (0.0, 3, True)
    assert (sif["delta"], sif["n_pairs"]) == (15.0, 1) and math.isnan(sif["delta_se"])
    assert summary.iloc[0]["mvm.targets"] == "none"  # baseline first
    # the label, and the rendered value, name the same baseline
    again = summarize(load_runs([runs_root]), ["target"], {"target": "none"})
    assert stats(again, "hog")["delta"] == pytest.approx(4.0)


def test_pooled_factors_join_the_pairing_key(tmp_path):
    root = tmp_path / "runs"
    cases = [([], 0.15, (10, 20)), ([], 0.3, (30, 40)), (["hog"], 0.15, (11, 23)), (["hog"], 0.3, (35, 41))]
    for targets, ratio, pair in cases:
        for seed, value in enumerate(pair):
            make_run(root, f"{'+'.join(targets) or 'none'}-{ratio}-{seed}", targets, seed, value,
                     extra_factors={"mask.ratio": ratio})
    df = load_runs([root])
    full = summarize(df, None, {"mvm.targets": []}, [R1])
    by_ratio = full[full["mvm.targets"] == "hog"].set_index("mask.ratio")
    assert by_ratio.loc[0.15, "delta"] == pytest.approx(2.0)  # (1 + 3) / 2 against none at 0.15
    assert by_ratio.loc[0.3, "delta"] == pytest.approx(3.0)  # (5 + 1) / 2 against none at 0.3
    pooled = stats(summarize(df, ["mvm.targets"], {"mvm.targets": []}, [R1]), "hog")
    # differences 1, 3, 5, 1 paired on (seed, ratio): mean 2.5, std sqrt(11/3), se std/2
    assert (pooled["n"], pooled["mean"], pooled["delta"], pooled["delta_std"], pooled["delta_se"]) == \
        pytest.approx((4, 27.5, 2.5, math.sqrt(11 / 3), math.sqrt(11 / 3) / 2))
    with pytest.raises(ValueError, match="baseline factor 'mask.ratio' is not a row"):
        summarize(df, ["mvm.targets"], {"mask.ratio": 0.3})


def test_flags(runs_root):
    flags = find_flags(load_runs([runs_root]), ["mvm.targets"], expected=[{"mvm.targets": ["vq"], "seed": 0}])
    by_kind: dict[str, list[str]] = {}  # cells are named with the labels from run.json
    for flag in flags:
        by_kind.setdefault(flag.kind, []).append(flag.message)
    assert by_kind["missing_cell"] == ["missing cell target=depth: no done run (failed: 1, pending: 1)",
                                       "missing cell target=vq: no done run (no run directory)"]
    assert by_kind["failed_run"] == ["failed run mvm.targets=depth,seed=0 (depth0): nan: loss is NaN at step 3"]
    assert by_kind["random_teacher"] == ["cell target=sif: 1 run uses random-weight teachers; "
                                         "numbers with random teachers are not meaningful"]
    assert by_kind["mixed_code"] == ["mixed code versions across runs: abc123 (11 runs), def456 (1 run)"]
    assert "cell target=pixel: 3 of 4 seeds done (missing seeds 2)" in by_kind["incomplete_cell"]
    # expected seeds are every seed seen in the runs, so pixel's stray seed 3 is "missing" elsewhere
    assert "cell target=hog: 3 of 4 seeds done (missing seeds 3)" in by_kind["incomplete_cell"]


def test_a_cell_is_complete_against_the_seeds_its_grid_planned(tmp_path):
    # the baseline over seeds 0-3, hog planned over seeds 0 and 1 only (a grid's exclusions), flow over
    # 0-2 with seed 2 not done: only flow is incomplete, and against its own three seeds
    for seed in range(4):
        make_run(tmp_path, f"none{seed}", [], seed, 10.0, cell_seeds=[0, 1, 2, 3])
    for seed in (0, 1):
        make_run(tmp_path, f"hog{seed}", ["hog"], seed, 11.0, cell_seeds=[0, 1])
        make_run(tmp_path, f"flow{seed}", ["flow"], seed, 12.0, cell_seeds=[0, 1, 2])
    make_run(tmp_path, "flow2", ["flow"], 2, None, state="pending", cell_seeds=[0, 1, 2])
    flags = find_flags(load_runs([tmp_path]), ["mvm.targets"])
    incomplete = [f.message for f in flags if f.kind == "incomplete_cell"]
    assert incomplete == ["cell target=flow: 2 of 3 seeds done (missing seeds 2)"]


def test_runs_trained_with_different_software_are_flagged(tmp_path):
    same = {"python": "3.11.7", "torch": "2.13.0+cpu", "numpy": "2.4.6"}
    for seed in (0, 1):
        make_run(tmp_path, f"none{seed}", [], seed, 10, software=same)
        make_run(tmp_path, f"hog{seed}", ["hog"], seed, 12, software=same)
    assert not [f for f in find_flags(load_runs([tmp_path])) if f.kind == "mixed_software"]

    make_run(tmp_path, "none2", [], 2, 11, software={**same, "numpy": "2.3.1", "cuda": "12.8"})
    make_run(tmp_path, "hog2", ["hog"], 2, 13, software={**same, "numpy": "2.3.1", "cuda": "12.8"})
    make_run(tmp_path, "hog3", ["hog"], 3, state="failed")  # no final.json: nothing recorded, nothing counted
    flags = [f for f in find_flags(load_runs([tmp_path])) if f.kind == "mixed_software"]
    assert [f.message for f in flags] == [
        "done runs were trained with different software: cuda absent (4 runs), 12.8 (2 runs); "
        "numpy 2.4.6 (4 runs), 2.3.1 (2 runs)"]


def test_write_report_files_parse_back(runs_root, tmp_path):
    df = load_runs([runs_root])
    out = tmp_path / "report"
    report = write_report(df, out, {"mvm.targets": []}, rows=["mvm.targets"])
    names = sorted(p.name for p in report.files)
    # R@1 is the only headline metric present; MdR and pretrain/loss go to the CSVs only
    assert names == ["comparison.csv", "report.md", "retrieval_R@1.png", "summary.csv"]
    assert all(p.is_file() and p.parent == out for p in report.files)
    assert (out / "retrieval_R@1.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    comparison = pd.read_csv(out / "comparison.csv", keep_default_na=False, na_values=[""])
    hog = comparison[comparison["mvm.targets"] == "hog"].iloc[0]
    assert (hog[f"{R1} mean"], hog[f"{R1} std"], hog[f"{R1} se"], hog[f"{R1} n"]) == \
        pytest.approx((16.0, math.sqrt(13), math.sqrt(13) / SQRT3, 3))
    assert (hog[f"{R1} delta"], hog[f"{R1} delta_se"]) == pytest.approx((4.0, 1.0))
    assert comparison.iloc[0]["mvm.targets"] == "none"
    summary = pd.read_csv(out / "summary.csv", keep_default_na=False, na_values=[""])
    assert set(summary["metric"]) == {R1, "pretrain/loss", "retrieval/MdR"}
    pixel = summary[(summary["mvm.targets"] == "pixel") & (summary["metric"] == R1)].iloc[0]
    assert (pixel["delta"], pixel["delta_se"], pixel["n_pairs"]) == pytest.approx((1.5, 0.5, 2))

    markdown = (out / "report.md").read_text()
    assert f"## {R1} (chance 1.00)" in markdown
    # t(0.975, 2) = 4.3027 (tables): none 12 -/+ 4.3027 * 1.1547, hog delta 4 -/+ 4.3027 * 1;
    # hog's differences 3, 3, 6: only the all-plus and all-minus of 8 sign patterns reach |mean| 4, p = 2/8
    assert "| none (baseline) | 3 | 12.00 | [7.03, 16.97] | 2.00 | 1.15 | — | — | — | — |" in markdown
    assert "| hog | 3 | 16.00 | [7.04, 24.96] | 3.61 | 2.08 | +4.00 | [-0.30, +8.30] | 0.250 | 3 |" in markdown
    assert "| sif | 1 | 25.00 | n/a | n/a | n/a | +15.00 | n/a | 1.000 | 1 |" in markdown
    assert "*s.e.* = sd / √seeds (a spread, not an interval)" in markdown
    assert "whiskers the 95 % t-interval" in markdown and "![retrieval/R@1](retrieval_R@1.png)" in markdown
    assert "paired by seed" in markdown
    assert "numbers with random teachers are not meaningful" in markdown
    assert "missing cell target=depth" in markdown  # labels from run.json name the columns
    assert {f.kind for f in report.flags} == {"missing_cell", "incomplete_cell", "random_teacher", "mixed_code",
                                             "failed_run", "unpaired"}


def test_report_main_reads_baseline_from_run_json(runs_root, tmp_path):
    files = report_main([runs_root], tmp_path / "out")
    assert {p.name for p in files} == {"summary.csv", "comparison.csv", "report.md", "retrieval_R@1.png"}
    markdown = (tmp_path / "out" / "report.md").read_text()
    header = ["target", "seeds", "mean", "95 % CI (t)", "sd", "s.e.", "Δ vs baseline", "Δ 95 % CI (t)",
              "p (sign-flip)", "pairs"]
    assert "| " + " | ".join(header) + " |" in markdown
    assert "| hog | 3 | 16.00 | [7.04, 24.96] | 3.61 | 2.08 | +4.00 | [-0.30, +8.30] | 0.250 | 3 |" in markdown
    with pytest.raises(ValueError, match="no run directories"):
        report_main([tmp_path / "out"], tmp_path / "out2")
