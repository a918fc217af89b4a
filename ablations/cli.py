"""`ablate`: train one run, run grids of runs, show their status and report them."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Callable, Optional

import typer

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Run grids of VIOLET trainings over MVM targets and report them (train, run, check, status, report).")


def _version(value: bool) -> None:
    if value:
        from importlib.metadata import PackageNotFoundError, version

        try:
            typer.echo(f"ablate {version('mvm-targets')}")
        except PackageNotFoundError:
            typer.echo("ablate (version unknown: the package is not installed)")
        raise typer.Exit(0)


def _number(command: str, option: str, kind: type, minimum: float, above: bool = False) -> Callable[[Any], Any]:
    """A parser for a numeric option of `ablate COMMAND`: a value that is not a (finite) number of
    `kind`, or one below `minimum` (at most `minimum` with `above`), ends as one line naming the
    option, e.g. `ablate run: --jobs must be at least 1, got 0` (exit 2)."""

    def parse(value: Any) -> Any:
        from mvm_targets.errors import InputError

        where = f"ablate {command}: {option}"
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            number = value  # a default, already a number
        else:
            try:
                number = kind(str(value).strip())
            except ValueError:
                noun = "a whole number" if kind is int else "a number"
                raise InputError(f"{where} must be {noun}, got '{value}'") from None
        if not math.isfinite(number):
            raise InputError(f"{where} must be a finite number, got {number}")
        if number < minimum or (above and number == minimum):
            bound = f"more than {minimum:g}" if above else f"at least {minimum:g}"
            raise InputError(f"{where} must be {bound}, got {number:g}")
        return number

    return parse


@app.callback()
def _options(
    version: Optional[bool] = typer.Option(None, "--version", callback=_version, is_eager=True,
                                           help="print the version and exit"),
    debug: bool = typer.Option(False, "--debug",
                               help="print the full traceback of an unexpected error (also MVM_DEBUG=1)"),
) -> None:
    """Run grids of VIOLET trainings over MVM targets and report them (train, run, check, status, report)."""


@app.command()
def train(config: Path = typer.Argument(..., help="run config YAML (e.g. violet_core/configs/tiny.yaml)"),
          run_dir: Optional[Path] = typer.Option(None, "--run-dir", help="default: <out_dir>/<name> from the config"),
          overrides: list[str] = typer.Option([], "--set", help="KEY=VALUE, value parsed as YAML; repeatable")) -> None:
    """Pretrain, finetune and evaluate one run; rerunning the same command resumes it."""
    from mvm_targets.errors import is_known, report_error
    from mvm_targets.store.layout import open_clip_cache
    from violet_core.config import load_config
    from violet_core.config_parsing import parse_overrides as parse_sets

    resolved = load_config(config, parse_sets(overrides))  # a bad config or --set fails in a blink, before torch loads
    # a missing cache is named here, before the trainer creates the run folder
    open_clip_cache(Path(resolved.data.cache), resolved.data.dataset, resolved.data.frames_id)
    from violet_core.loop import NonFiniteLossError
    from violet_core.train import existing_run_dir, parse_overrides, summary_line, train as train_run

    # only rank 0 writes the run folder (violet_core.run_dir), so only rank 0 may take back what it made
    made = _missing_folders(run_dir or Path(resolved.out_dir) / resolved.name) if _is_rank_zero() else []
    try:
        record = train_run(config, run_dir, parse_overrides(overrides))
    except NonFiniteLossError as error:
        typer.echo(f"error: {error}", err=True)
        raise typer.Exit(3)
    except Exception as error:  # noqa: BLE001 - unexpected: one line, the traceback in <run dir>/error.log
        _remove_if_untrained(made)
        if is_known(error):
            raise  # one line from main()
        raise typer.Exit(report_error(error, "ablate train", existing_run_dir(config, run_dir, overrides)))
    typer.echo(summary_line(record))


# What the trainer writes once training has begun; a run folder holding any of them is kept.
_TRAINING_OUTPUTS = ("metrics.jsonl", "final.json", "failure.json", "downstream.json", "checkpoints/last.pt",
                     "checkpoints/pretrained.pt")


def _is_rank_zero() -> bool:
    import os

    return os.environ.get("RANK", "0") == "0"


def _missing_folders(run_dir: Path) -> list[Path]:
    """`run_dir` and those of its parents that do not exist yet, deepest first: what training will create."""
    missing = []
    for folder in (Path(run_dir), *Path(run_dir).parents):
        if folder.exists():
            break
        missing.append(folder)
    return missing


def _remove_if_untrained(made: list[Path]) -> None:
    """Take back the folders this command created (`made`, from `_missing_folders`) when it failed
    before training began: the run folder then holds only what set-up wrote (the resolved config,
    the tokenizer, an empty checkpoints folder). A folder that existed before is never in `made`."""
    import shutil

    if not made or not made[0].is_dir() or any((made[0] / name).exists() for name in _TRAINING_OUTPUTS):
        return
    shutil.rmtree(made[0], ignore_errors=True)
    for parent in made[1:]:
        try:
            parent.rmdir()  # only while empty: anything another process put there stays
        except OSError:
            return


@app.command()
def run(grid: Path = typer.Argument(..., help="grid YAML (e.g. ablations/grids/demo.yaml)"),
        jobs: Optional[int] = typer.Option(None, "--jobs", "-j", parser=_number("run", "--jobs", int, 1),
                                           help="runs at once (default 1; with --gpus-per-run: every GPU slot)"),
        gpus_per_run: int = typer.Option(0, "--gpus-per-run", parser=_number("run", "--gpus-per-run", int, 0),
                                         help="k > 0: pack runs onto the local GPUs, one torchrun over k GPUs each"),
        dry_run: bool = typer.Option(False, "--dry-run",
                                     help="check every run (as `ablate check`), print the expansion and what would "
                                          "run; touch nothing"),
        retry_failed: bool = typer.Option(False, "--retry-failed", help="rerun failed runs too"),
        rerun_changed: bool = typer.Option(False, "--rerun-changed",
                                           help="rerun done runs whose grid file or code version changed"),
        launcher: str = typer.Option("local", "--launcher", help="local, or slurm (needs submitit: the slurm extra)"),
        runs_dir: Optional[Path] = typer.Option(None, "--runs-dir", help="default: runs/<grid name>"),
        overrides: list[str] = typer.Option([], "--set", help="KEY=VALUE over the grid's base (YAML), or cache.KEY=VALUE "
                                                             "over its cache section; repeatable"),
        timeout: Optional[float] = typer.Option(None, "--timeout",
                                                parser=_number("run", "--timeout", float, 0, above=True),
                                                help="per-run limit in seconds (local launcher)"),
        slurm_partition: Optional[str] = typer.Option(None, "--slurm-partition",
                                                      help="partition to submit to (default: the cluster's)"),
        slurm_time: int = typer.Option(24 * 60, "--slurm-time", parser=_number("run", "--slurm-time", int, 1),
                                       help="minutes per attempt; time-outs are requeued"),
        slurm_cpus: Optional[int] = typer.Option(None, "--slurm-cpus", parser=_number("run", "--slurm-cpus", int, 1),
                                                 help="CPUs per run"),
        slurm_mem_gb: Optional[int] = typer.Option(None, "--slurm-mem-gb",
                                                   parser=_number("run", "--slurm-mem-gb", int, 1),
                                                   help="memory per run, in GB"),
        slurm_parallelism: int = typer.Option(64, "--slurm-parallelism",
                                              parser=_number("run", "--slurm-parallelism", int, 1),
                                              help="runs of the array at once"),
        slurm_params: list[str] = typer.Option([], "--slurm-param",
                                               help="KEY=VALUE submitit parameter, e.g. slurm_account=abc"),
        ) -> None:
    """Extract the grid's targets once, then run every run that is not done (resumable).

    Before anything is extracted or trained, the runs to run are checked as `ablate check` does.
    Exit codes: 0 every run is done or running in another process; 1 some run failed; 2 bad input
    (grid, options, or a failed check); 130 interrupted (committed work is kept; runs that were
    running go back to pending and resume on the next `ablate run`).
    """
    from ablations.check import check_grid
    from ablations.grid import InvalidRun, load_grid
    from ablations.launch.slurm import SlurmOptions, SlurmUnavailable
    from ablations.plan import RunOptions, plan_runs
    from ablations.rundir import default_runs_dir
    from ablations.runner import EXIT_BAD_INPUT, run_grid
    from mvm_targets.interrupts import interrupted, report_interrupt
    from mvm_targets.provenance import code_version
    from violet_core.config_parsing import parse_overrides as parse_sets

    if launcher not in ("local", "slurm"):
        raise ValueError(f"--launcher must be local or slurm, got '{launcher}'")
    invalid: list[InvalidRun] = []
    spec = load_grid(grid, parse_sets(overrides) or None, invalid if dry_run else None)
    slurm = SlurmOptions(partition=slurm_partition, time_min=slurm_time, cpus_per_run=slurm_cpus, mem_gb=slurm_mem_gb,
                         array_parallelism=slurm_parallelism, params=parse_sets(slurm_params, "--slurm-param"))
    options = RunOptions(runs_dir=runs_dir, jobs=jobs, gpus_per_run=gpus_per_run, dry_run=dry_run,
                         retry_failed=retry_failed, rerun_changed=rerun_changed, timeout_s=timeout, launcher=launcher,
                         slurm=slurm)
    # a dry run checks every run; a real one the runs it would start (a done run needs nothing more)
    to_check = None if dry_run else [d.spec for d in plan_runs(spec, Path(runs_dir or default_runs_dir(spec.name)),
                                                                code_version(), options) if d.runs]
    report = check_grid(spec, invalid, to_check)
    if not report.ok:
        for line in report.error_lines():
            typer.echo(f"error: {line}", err=True)
        raise typer.Exit(EXIT_BAD_INPUT)
    try:
        code = run_grid(spec, options)
    except SlurmUnavailable as error:
        typer.echo(f"error: {error}", err=True)
        raise typer.Exit(EXIT_BAD_INPUT)
    except KeyboardInterrupt:
        raise typer.Exit(report_interrupt(lambda line: typer.echo(line, err=True)))
    if interrupted():  # swallowed somewhere (see mvm_targets.interrupts), yet it must not end as success
        raise typer.Exit(report_interrupt(lambda line: typer.echo(line, err=True)))
    raise typer.Exit(code)


@app.command()
def check(grid: Path = typer.Argument(..., help="grid YAML (e.g. ablations/grids/paper_table1.yaml)"),
          overrides: list[str] = typer.Option([], "--set", help="as given to `ablate run`; repeatable")) -> None:
    """Verify every cell of a grid before anything trains: config, targets, caches, frame counts, weights, files.

    Prints one line per bad cell and exits 2, or a summary line and exits 0. Reads only.
    """
    from ablations.check import check_grid_file
    from ablations.runner import EXIT_BAD_INPUT
    from violet_core.config_parsing import parse_overrides as parse_sets

    report = check_grid_file(grid, parse_sets(overrides) or None)
    if not report.ok:
        for line in report.error_lines():
            typer.echo(f"error: {line}", err=True)
        raise typer.Exit(EXIT_BAD_INPUT)
    typer.echo(report.summary())


@app.command()
def status(target: Path = typer.Argument(Path("runs"), help="a runs directory, or a grid YAML"),
           runs_dir: Optional[Path] = typer.Option(None, "--runs-dir", help="with a grid: default runs/<grid name>"),
           overrides: list[str] = typer.Option([], "--set", help="with a grid: as given to `ablate run`"),
           watch: bool = typer.Option(False, "--watch",
                                      help="redraw every --interval, with steps and ETA, until every run is done or "
                                           "failed (exit 0 all done, 1 some failed, 130 Ctrl-C)"),
           interval: float = typer.Option(2.0, "--interval",
                                          parser=_number("status", "--interval", float, 0, above=True),
                                          help="seconds between redraws with --watch")) -> None:
    """Table of runs: alias, run id, state, failure, duration, headline metric."""
    from ablations.status import collect_rows, format_table, summarize_states
    from violet_core.config_parsing import parse_overrides as parse_sets

    chosen = parse_sets(overrides) or None
    if watch:
        from ablations.watch import watch as watch_runs
        from mvm_targets.interrupts import report_interrupt

        try:
            code = watch_runs(target, runs_dir, chosen, interval)
        except KeyboardInterrupt:
            raise typer.Exit(report_interrupt(lambda line: typer.echo(line, err=True)))
        raise typer.Exit(code)
    title, rows = collect_rows(target, runs_dir, chosen)
    if not rows:
        typer.echo(f"{title}: no runs")
        return
    typer.echo(title)
    typer.echo(format_table(rows))
    typer.echo(summarize_states(rows))


@app.command()
def report(runs: list[Path] = typer.Argument(None, help="run directories or runs roots (default: runs/)"),
           out: Path = typer.Option(Path("report"), "--out", help="folder for the CSVs, markdown and charts"),
           baseline: list[str] = typer.Option([], "--baseline", help="KEY=VALUE of the baseline cell; repeatable"),
           grid: Optional[Path] = typer.Option(None, "--grid", help="grid YAML: flags cells that never ran"),
           bootstrap: int = typer.Option(0, "--bootstrap", parser=_number("report", "--bootstrap", int, 0),
                                         help="N > 0: bootstrap intervals (N resamples of seeds) and the IQM")) -> None:
    """Protocol card, then per cell over seeds mean with 95 % t-interval and the paired Δ to the baseline
    (t-interval, sign-flip p-value), as CSV, markdown and charts."""
    from ablations.report import report_main
    from violet_core.config_parsing import parse_overrides as parse_sets

    chosen = parse_sets(baseline, "--baseline") if baseline else None
    written = report_main(list(runs) if runs else [Path("runs")], out, chosen, grid=grid, bootstrap=bootstrap)
    for path in written:
        typer.echo(str(path))


def main() -> None:
    """Entry point: known errors end as one line (see `mvm_targets.errors.run_typer_app`)."""
    from mvm_targets.errors import run_typer_app

    run_typer_app(app, "ablate")


if __name__ == "__main__":
    main()
