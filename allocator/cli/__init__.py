"""The `allocator` command line (typer).

`main(argv) -> int` runs it in-process (errors become one stderr line and an exit code:
0 ok, 1 runtime, 2 bad input, 3 infeasible); `run()` is the console script.

Modules: `_app` (the typer app, `main`, exit codes), `_options` (every flag, declared once),
`_render` (tables, JSON, the infeasible exit), the commands (`_commands`, `_config`, `_profile`,
`_serve`), each registered on the app when imported here, and `_demo` (what `allocator demo`
measures).
"""

from __future__ import annotations

from allocator.cli import _commands, _config, _profile, _serve  # noqa: F401  (register the commands)
from allocator.cli._app import ExitCode, app, main, run

__all__ = ["ExitCode", "app", "main", "run"]
