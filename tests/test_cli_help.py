"""Every option and argument of every `ablate` and `mvmtargets` command says what it is for in --help."""

from __future__ import annotations

from typing import Any, Iterator, Optional

import typer
from typer.main import get_command

from ablations.cli import app as ablate_app
from mvm_targets.cli import app as mvmtargets_app


def parameters(command: Any, path: str) -> Iterator[tuple[str, Any]]:
    """(command path, parameter) for `command` and every command under it, at any depth."""
    for param in command.params:
        yield path, param
    for name, sub in sorted((getattr(command, "commands", None) or {}).items()):
        yield from parameters(sub, f"{path} {name}")


def undocumented(app: typer.Typer, prog: str) -> list[str]:
    return [f"{path} {'/'.join(param.opts)}" for path, param in parameters(get_command(app), prog)
            if not (getattr(param, "help", None) or "").strip()]


def test_the_walk_reaches_every_command_and_flags_a_missing_help():
    ablate = {path for path, _ in parameters(get_command(ablate_app), "ablate")}
    assert {"ablate train", "ablate run", "ablate check", "ablate status", "ablate report"} <= ablate
    assert "mvmtargets extract" in {path for path, _ in parameters(get_command(mvmtargets_app), "mvmtargets")}
    probe = typer.Typer()

    @probe.command()
    def first(documented: int = typer.Option(1, "--documented", help="a count"),
              bare: Optional[str] = typer.Option(None, "--bare")) -> None:
        """Two options, one without help."""

    @probe.command()
    def second(where: str = typer.Argument(..., help=" ")) -> None:
        """One argument whose help is blank."""

    assert undocumented(probe, "probe") == ["probe first --bare", "probe second where"]


def test_every_ablate_option_has_help():
    assert undocumented(ablate_app, "ablate") == []


def test_every_mvmtargets_option_has_help():
    assert undocumented(mvmtargets_app, "mvmtargets") == []
