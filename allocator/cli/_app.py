"""The typer application and its entry point: errors become one stderr line and an exit code."""

from __future__ import annotations

import os
import sys
import traceback
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


DEBUG_ENV = "ALLOCATOR_DEBUG"


def _debug(args: list[str]) -> bool:
    """Tracebacks wanted: `--debug`, or `ALLOCATOR_DEBUG=1` (for errors typer parses out)."""
    return "--debug" in args or os.environ.get(DEBUG_ENV, "").strip() not in ("", "0")


def _one_line(text: object) -> str:
    """A message on one line: the lines of a multi-line one joined, control characters shown
    escaped, long ones cut (a stray `\\r` or a page of text must not garble a terminal)."""
    flat = " ".join(part.strip() for part in str(text).splitlines() if part.strip())
    flat = "".join(c if c.isprintable() else repr(c)[1:-1] for c in flat)
    return flat if len(flat) <= 2000 else flat[:2000] + "..."


def _say(message: str) -> None:
    try:
        typer.echo(_one_line(message), err=True)
    except (OSError, ValueError):  # stderr closed or a broken pipe: nowhere left to say it
        pass


def main(argv: list[str] | None = None) -> int:
    """Runs the command line on `argv` (default `sys.argv[1:]`) and returns its exit code.

    Never raises and never prints a traceback (unless `--debug` or `ALLOCATOR_DEBUG=1`):
    an `AllocatorError` becomes one `error: ...` line on stderr with exit 2 (bad input) or
    1; click's usage errors keep their own exit code (2); an `OSError` is a runtime error
    (1); anything else is a bug, one `internal error: ...` line and exit 1.
    """
    args = sys.argv[1:] if argv is None else argv
    debug = _debug(args)
    try:
        result = app(args=args, prog_name="allocator", standalone_mode=False)
    except AllocatorError as err:
        if debug:
            traceback.print_exc()
        _say(f"error: {err}")
        return _exit_code(err)
    except typer.Exit as e:
        return e.exit_code
    except typer.Abort:
        _say("aborted")
        return ExitCode.RUNTIME
    except KeyboardInterrupt:
        _say("interrupted")
        return ExitCode.INTERRUPTED
    except SystemExit as e:  # a library (uvicorn, celery) or user code calling sys.exit
        # Our own exits are typer.Exit; this status is foreign, so only 0, 1 and 2 keep
        # their meaning (ok, failure, usage); 3 would claim an infeasible budget.
        if e.code in (None, 0, ExitCode.RUNTIME, ExitCode.BAD_INPUT):
            return int(e.code or 0)
        _say(f"error: stopped with exit status {e.code!r}")
        return ExitCode.RUNTIME
    except Exception as e:  # noqa: BLE001  (the last resort: no traceback reaches a user)
        # click's usage/parameter errors (typer vendors click; matched by shape, not class)
        code = getattr(e, "exit_code", None)
        if hasattr(e, "format_message") and isinstance(code, int):
            message = e.format_message()
            if message:  # empty after `allocator` alone: click printed the help
                _say(f"error: {message}")
            return code
        if debug:
            traceback.print_exc()
        if isinstance(e, OSError):
            where = f" {e.filename!r}" if e.filename else ""
            _say(f"error: {e.strerror or type(e).__name__}{where}")
            return ExitCode.RUNTIME
        _say(f"internal error: {type(e).__name__}: {e} (please report; "
             f"{DEBUG_ENV}=1 shows the traceback)")
        return ExitCode.RUNTIME
    return result if isinstance(result, int) else ExitCode.OK


def run() -> None:
    """The console script `allocator` (pyproject `[project.scripts]`)."""
    try:
        configure_runtime()  # the kernels' process settings: this process is the CLI's own
    except Exception:  # noqa: BLE001, S110  (a tuning step: the CLI works without it)
        pass
    code = main()
    try:
        sys.stdout.flush()
    except (OSError, ValueError):  # `allocator ... | head`: the reader left; say nothing more
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        code = code or ExitCode.RUNTIME
    sys.exit(code)
