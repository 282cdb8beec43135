"""Browser-test fixtures: the real job service in a subprocess, Debian's Chromium via Playwright.

The tests skip (with the reason) where Chromium, Playwright or the service cannot be had:
`apt-get install -y chromium` provides `/usr/bin/chromium`; Playwright's own browser
download is never used.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import private_data_dir

REPO = Path(__file__).resolve().parents[2]
ARTIFACTS = REPO / "artifacts"
TOKEN = "dashboard-test-token"
CHROMIUM = os.environ.get("ALLOCATOR_TEST_CHROMIUM", "/usr/bin/chromium")
START_TIMEOUT_S = 120.0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _call(base: str, path: str, body: Any = None, *, token: str | None = TOKEN) -> Any:
    """One JSON request to the service (urllib: no extra client needed)."""
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(base + path, data=data, method="GET" if body is None else "POST")
    req.add_header("Content-Type", "application/json")
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    with urllib.request.urlopen(req, timeout=30) as resp:
        return json.loads(resp.read())


class Service:
    """The running service: its base URL and a JSON client with the write token."""

    def __init__(self, base: str, log_path: Path) -> None:
        self.base = base
        self.log_path = log_path

    def get(self, path: str) -> Any:
        return _call(self.base, path)

    def post(self, path: str, body: Any) -> Any:
        return _call(self.base, path, body)

    def submit(self, **spec: Any) -> str:
        return str(self.post("/jobs", spec)["id"])

    def wait(self, job_id: str, timeout_s: float = 300.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            job = self.get(f"/jobs/{job_id}")
            if job["status"] not in ("queued", "running"):
                return job
            time.sleep(0.5)
        raise AssertionError(f"job {job_id} still not finished after {timeout_s} s; "
                             f"service log: {self.log_tail()}")

    def log_tail(self, chars: int = 3000) -> str:
        return self.log_path.read_text(errors="replace")[-chars:]


@pytest.fixture(scope="session")
def chromium_path() -> str:
    pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
    if not (Path(CHROMIUM).is_file() and os.access(CHROMIUM, os.X_OK)):
        found = shutil.which("chromium")
        if not found:
            pytest.skip(f"Debian's chromium is not installed ({CHROMIUM} missing; "
                        "`apt-get install -y chromium`)")
        return found
    return CHROMIUM


@contextlib.contextmanager
def run_service(tmp: Path, **settings: str) -> Iterator[Service]:
    """`api.create_app` under uvicorn in its own process group, with a temporary database,
    a data dir of its own (`private_data_dir`: shared trained models, its own sensitivity
    tables), the write token and `settings` (env names without the ALLOCATOR_ prefix);
    stopped, workers included, on exit."""
    try:
        import api

        api.create_app  # noqa: B018
    except (ImportError, AttributeError) as e:
        pytest.skip(f"the job service (api.create_app) is not importable: {e}")
    port = _free_port()
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", HF_HUB_OFFLINE="1",
               ALLOCATOR_DATABASE_URL=f"sqlite:///{tmp / 'jobs.sqlite'}",
               ALLOCATOR_API_TOKEN=TOKEN, ALLOCATOR_WORKERS="1",
               ALLOCATOR_DATA_DIR=str(private_data_dir(tmp / "data")))
    env.pop("ALLOCATOR_BROKER_URL", None)
    env.pop("ALLOCATOR_READ_REQUIRES_TOKEN", None)
    env.update({f"ALLOCATOR_{k.upper()}": v for k, v in settings.items()})
    log_path = tmp / "service.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "uvicorn", "--factory", "api:create_app",
             "--host", "127.0.0.1", "--port", str(port)],
            cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    svc = Service(f"http://127.0.0.1:{port}", log_path)
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            if proc.poll() is not None:
                pytest.fail(f"the service exited with {proc.returncode}: {svc.log_tail()}")
            try:
                with urllib.request.urlopen(svc.base + "/health", timeout=5) as resp:
                    if resp.status == 200:
                        break
            except (urllib.error.URLError, ConnectionError):
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"the service did not answer /health in {START_TIMEOUT_S} s: "
                            f"{svc.log_tail()}")
            time.sleep(0.3)
        yield svc
    finally:
        # The whole group: uvicorn and any worker process it started.
        for sig, wait_s in ((signal.SIGTERM, 20), (signal.SIGKILL, 10)):
            if proc.poll() is not None:
                break
            try:
                os.killpg(proc.pid, sig)
                proc.wait(timeout=wait_s)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                pass


@pytest.fixture(scope="module")
def service(chromium_path: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    """The service with one in-process worker; reads open, writes need `TOKEN`. Module
    scope: stopped before the rest of a full test run."""
    with run_service(tmp_path_factory.mktemp("dashboard-service")) as svc:
        yield svc


@pytest.fixture(scope="module")
def browser(chromium_path: str) -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        try:
            launched = pw.chromium.launch(executable_path=chromium_path)
        except Exception as e:  # noqa: BLE001 - any launch failure means "no browser here"
            pytest.skip(f"chromium at {chromium_path} cannot be started: {e}")
        yield launched
        launched.close()


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    """A fresh page (empty localStorage: read-only until a token is saved); script errors
    on it fail the test."""
    context = browser.new_context(viewport={"width": 1300, "height": 1000},
                                  accept_downloads=True)
    pg = context.new_page()
    errors: list[str] = []
    pg.on("pageerror", lambda exc: errors.append(str(exc)))
    pg.set_default_timeout(20_000)
    yield pg
    context.close()
    assert not errors, f"script errors on the page: {errors}"
