"""The typer application and its entry point: errors become one stderr line and an exit code."""

from __future__ import annotations

import sys
from enum import IntEnum
from typing import Annotated

import typer

from allocator import __version__
from engine import (
    AllocatorError,
    CLIUsageError,
    InvalidSpecError,
    UnknownComponentError,
    configure_runtime,
)


class ExitCode(IntEnum):
    """The exit statuses of every command (DESIGN.md, Contracts)."""

    OK = 0
    RUNTIME = 1
    BAD_INPUT = 2
    INFEASIBLE = 3
    INTERRUPTED = 130


app = typer.Typer(
    name="allocator",
    help="Mixed-precision bit allocation for PyTorch models, measured on real int8/int4 kernels.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"allocator {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                          help="Print the version.")] = False,
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks on errors.")] = False,
) -> None:
    """Mixed-precision bit allocation for PyTorch models."""


def _exit_code(err: AllocatorError) -> ExitCode:
    if isinstance(err, InvalidSpecError | UnknownComponentError | CLIUsageError):
        return ExitCode.BAD_INPUT
    return ExitCode.RUNTIME


def main(argv: list[str] | None = None) -> int:
    """Runs the command line on `argv` (default `sys.argv[1:]`) and returns its exit code.

    An `AllocatorError` becomes one `error: ...` line on stderr (its traceback with
    `--debug`); click's usage errors keep their own exit code (2).
    """
    args = sys.argv[1:] if argv is None else argv
    try:
        result = app(args=args, prog_name="allocator", standalone_mode=False)
    except AllocatorError as err:
        if "--debug" in args:
            raise
        typer.echo(f"error: {err}", err=True)
        return _exit_code(err)
    except typer.Exit as e:
        return e.exit_code
    except typer.Abort:
        typer.echo("aborted", err=True)
        return ExitCode.RUNTIME
    except KeyboardInterrupt:
        typer.echo("interrupted", err=True)
        return ExitCode.INTERRUPTED
    except Exception as e:
        # click's usage/parameter errors (typer vendors click; matched by shape, not class)
        if hasattr(e, "format_message") and isinstance(getattr(e, "exit_code", None), int):
            typer.echo(f"error: {e.format_message()}", err=True)
            return e.exit_code
        raise
    return result if isinstance(result, int) else ExitCode.OK


def run() -> None:
    """The console script `allocator` (pyproject `[project.scripts]`)."""
    configure_runtime()  # the kernels' process settings: this process is the CLI's own
    sys.exit(main())
