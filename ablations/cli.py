"""`ablate`: the grid runner's command line. Commands are registered by the modules that own them."""

from __future__ import annotations

import sys

import typer

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Run grids of VIOLET trainings over MVM targets and report them (train, run, status, report).")


def main() -> None:
    try:
        app()
    except (ValueError, OSError) as error:
        typer.echo(f"error: {error}", err=True)
        sys.exit(2)


if __name__ == "__main__":
    main()
