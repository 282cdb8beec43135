"""The `allocator` command line (typer). Errors become one stderr line and an exit code."""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from allocator import __version__
from engine._errors import (
    AllocatorError,
    CLIUsageError,
    InvalidSpecError,
    UnknownComponentError,
)

EXIT_OK, EXIT_RUNTIME, EXIT_BAD_INPUT, EXIT_INFEASIBLE = 0, 1, 2, 3

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
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version.")
    ] = False,
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks on errors.")] = False,
) -> None:
    """Mixed-precision bit allocation for PyTorch models."""


@app.command()
def demo(
    seed: Annotated[int, typer.Option(help="Seed of the demo weights and inputs.")] = 0,
) -> None:
    """Quantize a small model on the engine; print measured speed, size and error."""
    from rich.console import Console
    from rich.table import Table

    from allocator._demo import run_demo

    console = Console()
    with console.status("measuring fp32, int8, int4 and mixed on the engine..."):
        rows = run_demo(seed=seed)
    table = Table(title="DemoMLP 1024-4096-1024, measured on this machine")
    for col in ("config", "rows", "latency", "speed-up", "SQNR", "size", "kernels"):
        table.add_column(col, justify="left" if col in ("config", "kernels") else "right")
    for r in rows:
        table.add_row(r.config, str(r.rows), f"{r.latency_us:,.0f} us", f"{r.speedup:.2f}x",
                      "-" if r.config == "fp32" else f"{r.sqnr_db:.1f} dB",
                      f"{r.size_bytes / 2**20:.2f} MiB", r.kernels)
    console.print(table)


def _exit_code(err: AllocatorError) -> int:
    if isinstance(err, InvalidSpecError | UnknownComponentError | CLIUsageError):
        return EXIT_BAD_INPUT
    return EXIT_RUNTIME


def main(argv: list[str] | None = None) -> int:
    """Entry point: runs the typer app, mapping `AllocatorError` to a message and exit code."""
    args = sys.argv[1:] if argv is None else argv
    debug = "--debug" in args
    try:
        result = app(args=args, prog_name="allocator", standalone_mode=False)
    except AllocatorError as err:
        if debug:
            raise
        typer.echo(f"error: {err}", err=True)
        return _exit_code(err)
    except typer.Exit as e:
        return e.exit_code
    except typer.Abort:
        typer.echo("aborted", err=True)
        return EXIT_RUNTIME
    except KeyboardInterrupt:
        typer.echo("interrupted", err=True)
        return 130
    except Exception as e:
        # click's usage/parameter errors (typer vendors click; matched by shape, not class)
        if hasattr(e, "format_message") and isinstance(getattr(e, "exit_code", None), int):
            typer.echo(f"error: {e.format_message()}", err=True)
            return e.exit_code
        raise
    return result if isinstance(result, int) else EXIT_OK


def run() -> None:
    """Console-script entry point."""
    sys.exit(main())


if __name__ == "__main__":
    run()
