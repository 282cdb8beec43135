"""Shared parts of `benchmarks.robustness`: the tally of cases and failures, and the
`allocator serve` process it attacks (started, killed with SIGKILL, restarted on the same
database).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from api.testing import free_port

REPO = Path(__file__).resolve().parents[1]
TOKEN = "robustness-token"


def log(message: str) -> None:
    """Progress on stderr (stdout holds the failing cases and the summary)."""
    print(message, file=sys.stderr, flush=True)


def short(value: object, limit: int = 90) -> str:
    """A one-line, bounded, escaped rendering of an input or an answer."""
    text = repr(value) if not isinstance(value, str) else value
    text = text.encode("unicode_escape", "backslashreplace").decode("ascii")
    return text if len(text) <= limit else text[: limit - 3] + "..."


@dataclass
class Failure:
    """One failing case: where (route or command), what was sent, what happened."""

    counter: str
    where: str
    sent: str
    happened: str

    def line(self) -> str:
        return f"FAIL [{self.counter}] {self.where} | {self.sent} | {self.happened}"


@dataclass
class Tally:
    """Counts of the summary's keys and the failures behind them."""

    counts: dict[str, int] = field(default_factory=lambda: {
        "bad_inputs_tried": 0, "http_inputs_tried": 0, "cli_inputs_tried": 0,
        "cli_subprocess_cases": 0, "server_errors": 0, "cli_tracebacks": 0,
        "cli_internal_errors": 0, "cli_multiline_errors": 0,
        "accepted_bad_inputs": 0, "errors_without_detail": 0,
        "cache_corruptions_tried": 0, "wrong_answers_from_corrupt_cache": 0,
        "jobs_submitted_for_kills": 0, "kill_cycles": 0, "lost_or_stuck_jobs": 0,
        "limit_checks": 0, "limit_overruns": 0, "benchmark_errors": 0})
    failures: list[Failure] = field(default_factory=list)

    def add(self, key: str, n: int = 1) -> None:
        self.counts[key] = self.counts.get(key, 0) + n

    def fail(self, counter: str, where: str, sent: object, happened: object) -> None:
        """Counts one failure under `counter` and keeps it for the report."""
        self.add(counter)
        failure = Failure(counter, where, short(sent), short(happened, 240))
        self.failures.append(failure)
        log(failure.line())


class Service:
    """`allocator serve` in its own process group over one data dir and SQLite file."""

    def __init__(self, data: Path, *, workers: int = 2, env: dict[str, str] | None = None):
        self.data = data
        self.workers = workers
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.env = {**os.environ, "ALLOCATOR_DATA_DIR": str(data),
                    "ALLOCATOR_DATABASE_URL": f"sqlite:///{data / 'jobs.sqlite'}",
                    "ALLOCATOR_API_TOKEN": TOKEN, "OMP_NUM_THREADS": "1",
                    "HF_HUB_OFFLINE": "1", **(env or {})}
        self.env.pop("ALLOCATOR_BROKER_URL", None)
        self.proc: subprocess.Popen | None = None
        self.starts = 0

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {TOKEN}"}

    def start(self, timeout_s: float = 90.0) -> None:
        """Starts the service and waits until `/health` and `/models` answer."""
        self.starts += 1
        log_file = open(self.data / f"serve-{self.starts}.log", "wb")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "allocator.cli", "serve", "--port", str(self.port),
             "--workers", str(self.workers)], cwd=REPO, env=self.env,
            stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                break
            try:
                if httpx.get(self.base + "/health", timeout=2).status_code == 200:
                    httpx.get(self.base + "/models", headers=self.headers, timeout=60)
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        self.kill()
        tail = (self.data / f"serve-{self.starts}.log").read_text(errors="replace")[-2000:]
        raise RuntimeError(f"allocator serve did not start: {tail}")

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        """SIGKILL to the whole process tree (API and in-process workers)."""
        if self.proc is None:
            return
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait(timeout=30)
        self.proc = None

    def stop(self) -> None:
        """SIGTERM, then SIGKILL after 20 s."""
        if self.proc is None:
            return
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(timeout=20)
        except ProcessLookupError:
            pass
        except subprocess.TimeoutExpired:
            self.kill()
        self.proc = None

    def client(self, timeout_s: float = 30.0) -> httpx.Client:
        return httpx.Client(base_url=self.base, headers=self.headers, timeout=timeout_s)

    def log_tail(self, chars: int = 1500) -> str:
        path = self.data / f"serve-{self.starts}.log"
        return path.read_text(errors="replace")[-chars:] if path.exists() else ""


def wait_jobs(client: httpx.Client, ids: list[str], timeout_s: float,
              poll_s: float = 0.5) -> dict[str, dict]:
    """Polls jobs until each is finished or `timeout_s` passes; the last state of each
    (`{"status": "unreachable"}` where it could not be read)."""
    finished = {"succeeded", "failed", "cancelled"}
    last: dict[str, dict] = {}
    deadline = time.monotonic() + timeout_s
    pending = list(ids)
    while pending and time.monotonic() < deadline:
        for job_id in list(pending):
            try:
                r = client.get(f"/jobs/{job_id}")
                last[job_id] = r.json() if r.status_code == 200 else {
                    "status": f"http {r.status_code}"}
            except (httpx.HTTPError, ValueError) as e:
                last[job_id] = {"status": "unreachable", "error": type(e).__name__}
            if last[job_id].get("status") in finished:
                pending.remove(job_id)
        if pending:
            time.sleep(poll_s)
    return last
