"""A succeeded model job's BitConfig exported to a deployment format, for download.

The API process never imports torch: the export runs in a child process (`python -m
allocator.cli export ... --json`) that writes under the data folder, one folder per job
and format (`exports/<job id>/<format>/`). A marker file created with `O_EXCL` makes the
first request start the export and every other one (concurrent or later) see it running;
the child's exit is recorded by a thread of the API process: the published file (a
compressed-tensors folder zipped), or the exporter's one-line error and its exit status.
A marker whose process is gone without a result (the API restarted meanwhile) is stale and
the next request starts the export again.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import threading
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

FORMATS = ("onnx", "compressed-tensors", "gguf")
"""The formats `GET /jobs/{id}/export` serves (`allocator export --format`)."""
ARTIFACTS = {"onnx": "model.onnx", "gguf": "model.gguf",
             "compressed-tensors": "compressed-tensors.zip"}
MEDIA_TYPES = {"onnx": "application/octet-stream", "gguf": "application/octet-stream",
               "compressed-tensors": "application/zip"}
MARKER = "started.json"
ERROR = "error.json"
RETRY_AFTER_S = 5
# The exporter's exit status for bad input (`allocator` exit 2): a 422, anything else a 500.
BAD_INPUT_EXIT = 2


@dataclass(frozen=True)
class ExportState:
    """Where one job's export in one format stands.

    Attributes:
        status: `done` (`path` is the file to send), `exporting`, or `failed` (`error`
            is the exporter's one-line message, `exit_code` its exit status).
    """

    status: str
    path: Path | None = None
    error: str | None = None
    exit_code: int | None = None

    @property
    def http_status(self) -> int:
        """422 for an export the job's config cannot have (bad input), else 500."""
        return 422 if self.exit_code == BAD_INPUT_EXIT else 500


def export_dir(data_dir: Path, job_id: str, fmt: str) -> Path:
    return data_dir / "exports" / job_id / fmt


def download_name(job_id: str, fmt: str) -> str:
    """The file name a browser saves: the job id and the format's own extension."""
    return f"{job_id}-{ARTIFACTS[fmt]}"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process holds the id: not ours, not running
        return False
    return True


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def state(folder: Path, fmt: str) -> ExportState | None:
    """The export's state in `folder`, or None when none was started (or a stale one was
    cleared)."""
    artifact = folder / ARTIFACTS[fmt]
    if artifact.is_file():
        return ExportState("done", path=artifact)
    error = _read_json(folder / ERROR)
    if error is not None:
        return ExportState("failed", error=str(error.get("error") or "export failed"),
                           exit_code=int(error.get("exit_code") or 1))
    marker = folder / MARKER
    if not marker.exists():
        return None
    started = _read_json(marker) or {}
    pid = started.get("pid")
    if isinstance(pid, int) and not _alive(pid) and started.get("host") == os.uname().nodename:
        # its recorder thread died with the API process that started it: start again
        with contextlib.suppress(OSError):
            if not (folder / ARTIFACTS[fmt]).is_file() and not (folder / ERROR).exists():
                marker.unlink()
                return None
    return ExportState("exporting")


def export_command(model: str, config_path: Path, fmt: str, out: Path) -> list[str]:
    """The child's command line: the CLI's `export`, with the job's model and config."""
    return [sys.executable, "-m", "allocator.cli", "export", "--model", model,
            "--config", str(config_path), "--format", fmt, "--out", str(out), "--json"]


def _last_error(stderr: str) -> str:
    """The exporter's one-line error: its last `error:` line, else its last line."""
    lines = [x.strip() for x in stderr.splitlines() if x.strip()]
    errors = [x for x in lines if x.startswith(("error:", "internal error:"))]
    line = (errors or lines or ["the exporter stopped without a message"])[-1]
    return line.removeprefix("error:").strip()[:2000]


def _write_json(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data), encoding="utf-8")
    tmp.replace(path)


def _zip_folder(folder: Path, out: Path) -> None:
    """`folder`'s files into the zip `out` (written beside it, then renamed)."""
    tmp = out.with_name(out.name + ".tmp")
    with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as z:
        for p in sorted(folder.rglob("*")):
            if p.is_file():
                z.write(p, Path(folder.name) / p.relative_to(folder))
    tmp.replace(out)


def _record(proc: subprocess.Popen[bytes], folder: Path, fmt: str, out: Path) -> None:
    """Waits for the child and records its outcome (the published file or the error)."""
    _, stderr = proc.communicate()
    try:
        if proc.returncode == 0:
            if out.is_dir():  # compressed-tensors: a folder, sent as one zip
                _zip_folder(out, folder / ARTIFACTS[fmt])
                shutil.rmtree(out, ignore_errors=True)
            elif out != folder / ARTIFACTS[fmt]:
                out.replace(folder / ARTIFACTS[fmt])
            return
        _write_json(folder / ERROR, {"error": _last_error(stderr.decode("utf-8", "replace")),
                                     "exit_code": proc.returncode})
    except OSError as e:
        _write_json(folder / ERROR, {"error": f"cannot publish the export: {e}",
                                     "exit_code": 1})


def start(folder: Path, fmt: str, model: str, config: dict[str, Any],
          env: dict[str, str]) -> ExportState:
    """Starts the export unless one is already started (`O_EXCL` marker); returns its
    state (`exporting`, or what another request's export reached meanwhile)."""
    folder.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(folder / MARKER, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        return state(folder, fmt) or ExportState("exporting")
    config_path = folder / "bitconfig.json"
    config_path.write_text(json.dumps(config), encoding="utf-8")
    out = folder / ("checkpoint" if fmt == "compressed-tensors" else ARTIFACTS[fmt])
    try:
        proc = subprocess.Popen(export_command(model, config_path, fmt, out),
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                stdin=subprocess.DEVNULL, env=os.environ | env)
    except OSError as e:
        os.close(fd)
        _write_json(folder / ERROR, {"error": f"cannot start the exporter: {e}",
                                     "exit_code": 1})
        return state(folder, fmt) or ExportState("failed", error=str(e), exit_code=1)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        json.dump({"pid": proc.pid, "host": os.uname().nodename, "model": model}, f)
    threading.Thread(target=_record, args=(proc, folder, fmt, out), daemon=True,
                     name=f"export-{folder.parent.name}-{fmt}").start()
    return ExportState("exporting")
