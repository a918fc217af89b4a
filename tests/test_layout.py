"""The `ablations` package by a run's life: no import cycles, one run discovery, one headline
metric, one override parser, a pinnable code version, and `ablate status --watch`."""

from __future__ import annotations

import ast
import io
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml

from ablations.launch.liveness import this_host
from ablations.metrics import format_metric, headline
from ablations.progress import step_progress
from ablations.report import load_runs
from ablations.rundir import RunStatus, find_run_dirs, now_iso, write_json_atomic, write_status
from ablations.status import collect_rows
from ablations.watch import grid_eta, watch
from violet_core.config_parsing import ConfigError, parse_overrides

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "ablations"
ENV = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def imported_modules(name: str, path: Path) -> set[str]:
    """`ablations` modules that `path` imports anywhere (top level or inside functions)."""
    found: set[str] = set()
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join(parent + ([base] if base else []))
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)  # `from pkg import submodule`
    return {m for m in found if m in MODULES and m != name}


def test_no_two_ablations_modules_import_each_other():
    graph = {name: imported_modules(name, path) for name, path in MODULES.items()}
    assert "ablations.rundir" in graph and "ablations.launch.slurm" in graph  # the walk found the layout
    assert "ablations.rundir" in graph["ablations.report.load"]  # report discovers runs through rundir
    pairs = sorted((a, b) for a in graph for b in graph[a] if a < b and a in graph[b])
    assert not pairs, f"modules importing each other: {pairs}"
    # and no longer cycle either: a depth-first search finds no back edge
    state: dict[str, int] = {}

    def visit(node: str, trail: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                pytest.fail(f"import cycle: {' -> '.join(trail + [node, nxt])}")
            if nxt not in state:
                visit(nxt, trail + [node])
        state[node] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name, [])


def test_every_ablations_module_imports_on_its_own():
    """Each module in a fresh interpreter, so an import that works only after another one fails here."""
    names = [n for n in MODULES if n != "ablations.cli"] + ["ablations.cli"]
    code = ("import importlib, sys\nfailed = []\nfor name in sys.argv[1:]:\n"
            "    for loaded in [m for m in sys.modules if m.startswith('ablations')]:\n"
            "        del sys.modules[loaded]\n"
            "    try:\n        importlib.import_module(name)\n"
            "    except Exception as error:\n        failed.append(f'{name}: {error!r}')\n"
            "print('\\n'.join(failed)); sys.exit(1 if failed else 0)")
    result = subprocess.run([sys.executable, "-c", code, *names], env=ENV, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr


def test_one_override_parser():
    assert parse_overrides(["mvm.targets=[sif]", "mask.ratio=0.5", " name = a=b"]) == \
        {"mvm.targets": ["sif"], "mask.ratio": 0.5, "name": "a=b"}
    with pytest.raises(ConfigError, match=r"^--set 'ratio' is not KEY=VALUE$"):
        parse_overrides(["ratio"])
    with pytest.raises(ConfigError, match=r"^--baseline 'x=\[1': the value is not valid YAML"):
        parse_overrides(["x=[1"], "--baseline")
    # the trainer and the harness import it rather than define their own (read from source: cheap)
    trainer = ast.parse((REPO / "violet_core" / "train.py").read_text())
    assert any(isinstance(n, ast.ImportFrom) and n.module == "violet_core.config_parsing"
               and "parse_overrides" in {a.name for a in n.names} for n in ast.walk(trainer))
    sources = [("violet_core.train", REPO / "violet_core" / "train.py"), *MODULES.items()]
    defined = [(name, n.name) for name, path in sources
               for n in ast.walk(ast.parse(Path(path).read_text()))
               if isinstance(n, ast.FunctionDef) and n.name in ("parse_overrides", "parse_sets")]
    assert not defined, defined


def test_code_version_is_pinned_by_the_environment_and_shared_by_the_store():
    code = ("from mvm_targets.provenance import code_version; from mvm_targets.store import schema; "
            "print(code_version(), schema.code_version is code_version)")
    pinned = subprocess.run([sys.executable, "-c", code], env={**ENV, "MVM_TARGETS_CODE_VERSION": "1.2.3+x"},
                            capture_output=True, text=True, timeout=60)
    assert pinned.stdout.split() == ["1.2.3+x", "True"], pinned.stderr
    free = subprocess.run([sys.executable, "-c", code], env={**ENV, "MVM_TARGETS_CODE_VERSION": ""},
                          capture_output=True, text=True, timeout=60)
    assert free.stdout.split()[0].startswith("0.") and "1.2.3" not in free.stdout, free.stderr


def test_headline_prefers_retrieval_then_downstream_then_the_pretraining_loss():
    assert headline({"pretrain/loss": 2.0, "qa_mc/acc": 30.0, "retrieval/R@1": 12.5}) == ("retrieval/R@1", 12.5)
    assert headline({"pretrain/loss": 2.0, "qa_mc/acc": 30.0, "qa_oe/acc": 20.0}) == ("qa_oe/acc", 20.0)
    assert headline({"pretrain/loss": 2.0, "custom/score": 4}) == ("custom/score", 4.0)
    assert headline({"pretrain/loss": 2.0, "pretrain/mvm": 1.0}) == ("pretrain/loss", 2.0)
    assert headline({"flag": True}) is None and format_metric(None) == ""
    assert format_metric(("retrieval/R@1", 12.3456)) == "retrieval/R@1=12.35"


# ----------------------------------------------------------------------------------------------
# Run directories written by hand: 4 pretraining steps and 2 retrieval steps each (6 in all)

CONFIG = {"pretrain": {"optim": {"steps": 4}}, "downstream": {"tasks": ["retrieval"], "optim": {"steps": 2}}}


def make_run(root: Path, run_id: str, alias: str, grid: str = "g") -> Path:
    run_dir = root / run_id
    run_dir.mkdir(parents=True)
    write_json_atomic(run_dir / "run.json", {"run_id": run_id, "alias": alias, "grid": grid, "factors": {"seed": 0}})
    (run_dir / "config.yaml").write_text(yaml.safe_dump(CONFIG))
    return run_dir


def log_step(run_dir: Path, phase: str, step: int) -> None:
    with open(run_dir / "metrics.jsonl", "a") as handle:
        handle.write(json.dumps({"phase": phase, "step": step, "loss": 1.0}) + "\n")


def test_step_progress_counts_each_phase_up_to_its_own_total(tmp_path):
    run_dir = make_run(tmp_path, "r1", "a")
    assert (step_progress(run_dir).step, step_progress(run_dir).total) == (0, 6)
    for step in (1, 2, 3):
        log_step(run_dir, "pretrain", step)
    log_step(run_dir, "pretrain", 2)  # a resumed run logs a step again: the highest counts
    progress = step_progress(run_dir)
    assert (progress.step, progress.total) == (3, 6)
    assert progress.eta_s(30.0) == pytest.approx(30.0)  # 3 steps in 30 s, 3 to go
    log_step(run_dir, "pretrain", 4)
    log_step(run_dir, "retrieval", 2)
    log_step(run_dir, "qa_mc", 9)  # not a task of this config: not counted
    with open(run_dir / "metrics.jsonl", "a") as handle:
        handle.write('{"phase": "retrieval", "st')  # a line being written
    assert step_progress(run_dir).step == 6 and step_progress(tmp_path / "absent") is None


def test_status_and_report_find_the_same_runs(tmp_path):
    """One discovery: a run directory, a grid's runs folder, or a root of grids (two levels)."""
    root = tmp_path / "runs"
    a = make_run(root / "g1", "aaa", "x=1")
    b = make_run(root / "g2", "bbb", "x=2", grid="g2")
    (root / "g2" / ".archive" / "old").mkdir(parents=True)
    write_json_atomic(root / "g2" / ".archive" / "old" / "run.json", {"run_id": "old"})  # archived: not a run
    (root / "notes").mkdir()
    alone = tmp_path / "trained"  # made by `ablate train` alone: only final.json
    alone.mkdir()
    write_json_atomic(alone / "final.json", {"metrics": {"retrieval/R@1": 3.0}})
    assert find_run_dirs(root) == [a, b]
    assert find_run_dirs([root / "g1", a, alone]) == [a, alone]  # each once
    assert sorted(load_runs([root])["path"]) == sorted(str(p.resolve()) for p in (a, b))
    _, rows = collect_rows(root)
    assert sorted(r.path for r in rows) == sorted(str(p) for p in (a, b))
    _, [row] = collect_rows(alone)
    assert (row.state, row.metric) == ("done", "retrieval/R@1=3")
    with pytest.raises(FileNotFoundError, match="no such run directory or runs root"):
        find_run_dirs(tmp_path / "absent")


@pytest.fixture()
def trainer():
    """A live process whose command line reads as a trainer's, to own the runs written by hand."""
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)", "violet_core.train"])
    yield proc
    proc.kill()
    proc.wait()


def start(run_dir: Path, pid: int) -> None:
    write_status(run_dir, RunStatus(state="running", attempts=1, pid=pid, started=now_iso(), host=this_host()))


def finish(run_dir: Path, state: str, failure: str | None = None, message: str = "") -> None:
    status = RunStatus(state=state, failure=failure, message=message, attempts=1, exit_code=0 if state == "done" else 3,
                       started=now_iso(), finished=now_iso(), host=this_host())
    if state == "done":
        write_json_atomic(run_dir / "final.json", {"metrics": {"retrieval/R@1": 42.0}})
    write_status(run_dir, status)


def test_watch_follows_a_grid_until_every_run_is_done(tmp_path, trainer):
    runs = [make_run(tmp_path, f"r{i}", f"seed={i}") for i in range(2)]
    for run_dir in runs:
        start(run_dir, trainer.pid)
    seen_partial = threading.Event()

    def train() -> None:  # the two runs advance one step at a time, then finish
        for step in range(1, 5):
            for run_dir in runs:
                log_step(run_dir, "pretrain", step)
            time.sleep(0.05)
        seen_partial.wait(10)
        for run_dir in runs:
            log_step(run_dir, "retrieval", 2)
            finish(run_dir, "done")

    out = io.StringIO()
    writer = threading.Thread(target=train)
    writer.start()

    def sleep(seconds: float) -> None:
        if "4/6" in out.getvalue():
            seen_partial.set()
        time.sleep(seconds)

    began = time.monotonic()
    code = watch(tmp_path, interval_s=0.05, out=out, sleep=sleep)
    writer.join(10)
    assert code == 0 and time.monotonic() - began < 20
    frames = [f for f in out.getvalue().split("\n\n") if f.strip()]
    assert len(frames) >= 2 and frames[0].startswith("-- ")  # not a terminal: one table per interval
    assert " running " in frames[0] and "steps" in frames[0] and "ETA" in frames[0]
    assert "4/6" in out.getvalue()  # progress from metrics.jsonl while the runs were running
    last = frames[-1]
    assert last.count(" done ") == 2 and "6/6" in last and "retrieval/R@1=42" in last and "2 done" in last


def test_watch_ends_with_exit_1_and_the_failure_when_a_run_fails(tmp_path, trainer):
    ok, bad = make_run(tmp_path, "ok", "lr=1"), make_run(tmp_path, "bad", "lr=1e30")
    finish(ok, "done")
    start(bad, trainer.pid)
    timer = threading.Timer(0.3, finish, (bad, "failed", "nan", "non-finite loss at step 2"))
    timer.start()
    out = io.StringIO()
    assert watch(tmp_path, interval_s=0.05, out=out) == 1
    timer.join()
    assert "lr=1e30 FAILED (nan): non-finite loss at step 2 [log: " in out.getvalue().split("\n\n")[-2]


def test_grid_eta_from_the_running_pace_and_finished_runs():
    from ablations.status import StatusRow

    def row(state: str, duration_s: float | None = None, eta_s: float | None = None) -> StatusRow:
        return StatusRow("a", "r", state, "", "-", "", "g", "p", eta_s=eta_s, duration_s=duration_s)

    # one running run 60 s from its end, two waiting runs of 100 s (the finished run's length) on one slot
    assert grid_eta([row("done", 100.0), row("running", 40.0, 60.0), row("pending"), row("pending")]) == 260.0
    assert grid_eta([row("done", 100.0), row("failed")]) is None  # nothing left
    assert grid_eta([row("pending")]) is None  # nothing to estimate from yet


def test_watch_stops_on_ctrl_c_with_exit_130(tmp_path, trainer):
    run_dir = make_run(tmp_path, "r", "seed=0")
    start(run_dir, trainer.pid)
    proc = subprocess.Popen([sys.executable, "-m", "ablations.cli", "status", str(tmp_path), "--watch",
                             "--interval", "0.1"], env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    first = proc.stdout.readline()  # the first frame's time line: the watch loop is running
    assert first.startswith("-- ") and time.monotonic() < deadline
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=30)
    assert proc.returncode == 130, stderr
    assert stderr.strip().splitlines()[-1] == "interrupted: committed work is kept; rerun the same command to continue"
    assert "Traceback" not in stderr


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_watch_redraws_in_place_on_a_terminal_and_checks_its_interval(tmp_path):
    ok = make_run(tmp_path, "ok", "seed=0")
    finish(ok, "done")
    screen = Terminal()
    assert watch(tmp_path, interval_s=0.05, out=screen) == 0
    assert screen.getvalue().startswith("\x1b[H\x1b[2J") and "-- " not in screen.getvalue()
    with pytest.raises(ValueError, match=r"^--interval must be a positive number of seconds, got 0"):
        watch(tmp_path, interval_s=0)
