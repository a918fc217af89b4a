"""Report statistics against scipy.stats on toy run folders with repeated and unpaired seeds.

Cells (R@1 by seed; a seed listed twice was run twice, e.g. by two code versions):
    none   seed 0: 10, 12   seed 1: 13   seed 2: 15   seed 3: 11
    hog    seed 0: 15       seed 1: 14, 18   seed 2: 19   seed 4: 30
Seed averages: none 11, 13, 15, 11 (seeds 0-3); hog 15, 16, 19, 30 (seeds 0, 1, 2, 4).
Pairs with none: seeds 0, 1, 2 -> differences 4, 3, 4; seed 3 only in none, seed 4 only in hog.
"""

from __future__ import annotations

import subprocess
import sys
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps

from ablations.report import load_runs, report_main, summarize, write_report
from ablations.report.stats import EXACT_MAX_PAIRS, interquartile_means, sign_flip_p
from tests.test_report import R1, make_run

REPO = Path(__file__).resolve().parents[1]
NONE = {0: [10, 12], 1: [13], 2: [15], 3: [11]}
HOG = {0: [15], 1: [14, 18], 2: [19], 4: [30]}


def build(root: Path, cells: dict[str, dict[int, list[float]]]) -> Path:
    for target, by_seed in cells.items():
        for seed, values in by_seed.items():
            for rerun, value in enumerate(values):
                make_run(root, f"{target}{seed}-{rerun}", [] if target == "none" else [target], seed, value,
                         code=f"v{rerun}")
    return root


@pytest.fixture
def toy(tmp_path: Path) -> pd.DataFrame:
    return load_runs([build(tmp_path / "runs", {"none": NONE, "hog": HOG})])


def row(summary: pd.DataFrame, target: str) -> dict:
    part = summary[(summary["mvm.targets"] == target) & (summary["metric"] == R1)]
    assert len(part) == 1
    return part.iloc[0].to_dict()


def seed_means(by_seed: dict[int, list[float]]) -> dict[int, float]:
    return {seed: sum(values) / len(values) for seed, values in by_seed.items()}


def paired(a: dict[int, list[float]], b: dict[int, list[float]]) -> tuple[np.ndarray, np.ndarray]:
    ma, mb = seed_means(a), seed_means(b)
    shared = sorted(set(ma) & set(mb))
    return np.array([ma[s] for s in shared]), np.array([mb[s] for s in shared])


def test_repeated_seeds_are_averaged_and_n_counts_seeds(toy):
    summary = summarize(toy, ["mvm.targets"], {"mvm.targets": []}, [R1])
    for target, by_seed in (("none", NONE), ("hog", HOG)):
        values = np.array(list(seed_means(by_seed).values()))
        got = row(summary, target)
        low, high = sps.t.interval(0.95, len(values) - 1, loc=values.mean(), scale=sps.sem(values))
        assert got["n"] == 4  # five runs, four seeds
        assert (got["mean"], got["std"], got["se"], got["ci95_low"], got["ci95_high"]) == pytest.approx(
            (values.mean(), values.std(ddof=1), sps.sem(values), low, high))


def test_paired_delta_interval_and_sign_flip_p_match_scipy(toy):
    summary = summarize(toy, ["mvm.targets"], {"mvm.targets": []}, [R1])
    hog = row(summary, "hog")
    x, y = paired(HOG, NONE)
    rel = sps.ttest_rel(x, y)
    one = sps.ttest_1samp(x - y, 0.0)
    exact = sps.permutation_test((x, y), lambda a, b: np.mean(a - b), permutation_type="samples",
                                 n_resamples=np.inf, alternative="two-sided")
    assert hog["n_pairs"] == 3 and hog["delta"] == pytest.approx(11 / 3)
    assert (hog["delta_ci95_low"], hog["delta_ci95_high"]) == pytest.approx(tuple(rel.confidence_interval(0.95)))
    assert (hog["delta_ci95_low"], hog["delta_ci95_high"]) == pytest.approx(tuple(one.confidence_interval(0.95)))
    assert hog["delta_se"] == pytest.approx(sps.sem(x - y))
    assert hog["p_signflip"] == pytest.approx(exact.pvalue) and hog["p_method"] == "exact"
    assert hog["p_signflip"] == pytest.approx(0.25)  # by hand: 2 of 8 sign patterns reach |mean| 11/3
    assert (hog["only_in_cell"], hog["only_in_baseline"]) == ("seed 4", "seed 3")
    none = row(summary, "none")
    assert none["is_baseline"] and none["delta"] == 0 and none["p_signflip"] == 1.0


@pytest.mark.parametrize("diffs", [[0.5, -1.0, 2.0, 3.5, 1.25, -0.25], [1.0, 1.0, 1.0, 1.0], [2.0, -2.0],
                                   [0.3, 1.7, -0.2, 2.2, 0.9, 1.1, 0.4, 2.5, -0.6, 1.3, 0.8, 1.9]])
def test_exact_sign_flip_matches_scipy_permutation_test(diffs):
    d = np.array(diffs)
    expected = sps.permutation_test((d, np.zeros_like(d)), lambda a, b: np.mean(a - b), permutation_type="samples",
                                    n_resamples=np.inf, alternative="two-sided").pvalue
    assert sign_flip_p(d) == (pytest.approx(expected), "exact")


def test_beyond_twelve_pairs_the_p_value_is_a_seeded_monte_carlo_estimate():
    d = np.array([0.3, 1.7, -0.2, 2.2, 0.9, 1.1, 0.4, 2.5, -0.6, 1.3, 0.8, 1.9, -1.4, 0.1])
    assert len(d) == EXACT_MAX_PAIRS + 2
    exact = sps.permutation_test((d, np.zeros_like(d)), lambda a, b: np.mean(a - b), permutation_type="samples",
                                 n_resamples=np.inf, alternative="two-sided", vectorized=False).pvalue
    p, method = sign_flip_p(d)
    assert method.startswith("monte-carlo") and "seed" in method
    assert p == pytest.approx(exact, abs=0.005)  # 100k draws: s.e. of p below 0.001 here
    assert sign_flip_p(d) == (p, method)  # fixed seed: the same estimate every time


def test_unpaired_seeds_are_flagged(toy, tmp_path):
    report = write_report(toy, tmp_path / "out", {"mvm.targets": []}, rows=["mvm.targets"])
    messages = [f.message for f in report.flags if f.kind == "unpaired"]
    assert messages == ["Δ of target=hog against target=none uses 3 pairs: seed 4 only in target=hog; "
                        "seed 3 only in target=none"]
    by_label = write_report(toy, tmp_path / "labelled", {"target": "none"}, rows=["target"])
    assert [f.message for f in by_label.flags if f.kind == "unpaired"] == messages
    assert by_label.card.base == "target=none (baseline, 5 runs)"
    summary = pd.read_csv(tmp_path / "out" / "summary.csv")
    assert {"ci95_low", "ci95_high", "delta_ci95_low", "delta_ci95_high", "p_signflip", "p_method", "n_pairs",
            "only_in_cell", "only_in_baseline"} <= set(summary.columns)


def test_bootstrap_is_deterministic_and_close_to_scipy(tmp_path):
    rng = np.random.default_rng(7)
    base = {seed: [float(v)] for seed, v in enumerate(rng.normal(20, 3, 8).round(2))}
    hog = {seed: [v[0] + float(rng.normal(2, 1))] for seed, v in base.items()}
    df = load_runs([build(tmp_path / "runs", {"none": base, "hog": hog})])
    first = summarize(df, ["mvm.targets"], {"mvm.targets": []}, [R1], bootstrap=20000)
    again = summarize(df, ["mvm.targets"], {"mvm.targets": []}, [R1], bootstrap=20000)
    pd.testing.assert_frame_equal(first, again)
    got = row(first, "hog")
    x, y = paired(hog, base)
    for (low, high), sample in (((got["mean_boot95_low"], got["mean_boot95_high"]), x),
                                ((got["delta_boot95_low"], got["delta_boot95_high"]), x - y)):
        ref = sps.bootstrap((sample,), np.mean, n_resamples=20000, method="percentile",
                            random_state=np.random.default_rng(1)).confidence_interval
        width = ref.high - ref.low
        assert low == pytest.approx(ref.low, abs=0.05 * width) and high == pytest.approx(ref.high, abs=0.05 * width)


def test_interquartile_mean_pools_seeds_and_metrics(tmp_path):
    # two metrics x four seeds: scores 1..8; the IQM drops 1, 2 and 7, 8 -> mean(3, 4, 5, 6) = 4.5
    root = tmp_path / "runs"
    for seed, (r1, r5) in enumerate([(1, 8), (5, 3), (2, 6), (7, 4)]):
        run = make_run(root, f"none{seed}", [], seed, r1)
        final = run / "final.json"
        final.write_text(final.read_text().replace('"retrieval/MdR": 4', f'"retrieval/R@5": {r5}'))
    df = load_runs([root])
    iqm = interquartile_means(df, ["mvm.targets"], [R1, "retrieval/R@5"], draws=2000)
    assert iqm.loc[0, "iqm"] == pytest.approx(4.5) and iqm.loc[0, "n_scores"] == 8
    assert iqm.loc[0, "iqm_boot95_low"] <= 4.5 <= iqm.loc[0, "iqm_boot95_high"]
    assert interquartile_means(df, ["mvm.targets"], [R1, "retrieval/R@5"], draws=2000).equals(iqm)


def ablate_report(*args: str | Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ablations.cli", "report", *map(str, args)], capture_output=True,
                          text=True, cwd=REPO, timeout=120)


def test_cli_errors_are_one_line(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    result = ablate_report(empty, "--out", tmp_path / "out", "--bootstrap", "50")  # the option parses
    assert result.returncode == 2 and result.stderr.strip() == f"error: no run directories in {empty}"

    runs = build(tmp_path / "runs", {"none": {0: [1.0]}, "hog": {0: [2.0]}})
    result = ablate_report(runs, "--out", tmp_path / "out", "--baseline", "mvm.targets=[vq]")
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1
    assert result.stderr.strip() == ("error: baseline target=vq matches no cell of these runs "
                                     "(cells: target=hog; target=none)")
    files = report_main([runs], tmp_path / "out", bootstrap=200)  # what `--bootstrap 200` calls
    assert (tmp_path / "out" / "iqm.csv") in files


def test_a_metric_only_the_target_cell_logs_is_not_an_unpaired_baseline(tmp_path):
    # an MVM cell logs its own loss (pretrain/mvm_hog); the no-MVM baseline cannot have it, and that
    # is not a missing baseline: only seeds missing from one of two cells that share a metric are.
    root = tmp_path / "runs"
    for seed in (0, 1, 2):
        make_run(root, f"none{seed}", [], seed, 10 + seed)
        run = make_run(root, f"hog{seed}", ["hog"], seed, 12 + seed)
        final = json.loads((run / "final.json").read_text())
        final["metrics"]["pretrain/mvm_hog"] = 0.5
        (run / "final.json").write_text(json.dumps(final))
    report = write_report(load_runs([root]), tmp_path / "out", {"mvm.targets": []}, rows=["mvm.targets"])
    assert [f for f in report.flags if f.kind == "unpaired"] == []
