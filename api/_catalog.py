"""What can be asked for: solvers (in process) and models, estimators and hardware
profiles (from a `python -m api._probe` subprocess, because listing them imports torch).

The probe runs once in the background when the app starts and again when its answer is
older than `ttl_s`; callers get the last answer, waiting for the first one if need be.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from typing import Any

from engine import StoreError


def solvers() -> list[dict[str, Any]]:
    """Every registered solver with its availability and what it needs (class flags: no
    torch is imported)."""
    from allocator.solvers import SOLVERS

    return [{"name": e.name, "available": bool(e.available()), "description": e.description,
             "extra": e.extra, "needs_model": e.target.needs_model,
             "needs_torch": e.target.needs_torch, "runs_in_api": e.target.runs_in_api}
            for e in SOLVERS]


class Catalog:
    """The torch-side catalog, probed in a subprocess and cached.

    Args:
        env: Extra environment for the probe (the data folder).
        ttl_s: Age after which the next read triggers a background refresh.
        timeout_s: Longest wait for the probe.
    """

    def __init__(self, env: dict[str, str] | None = None, *, ttl_s: float = 300.0,
                 timeout_s: float = 180.0) -> None:
        self._env = {**os.environ, **(env or {})}
        self._ttl_s, self._timeout_s = ttl_s, timeout_s
        self._data: dict[str, Any] | None = None
        self._stamp = 0.0
        self._error: str | None = None
        self._lock = threading.Lock()
        self._ready = threading.Event()
        self._running = False

    def start(self) -> None:
        """Starts a background probe unless one is running."""
        with self._lock:
            if self._running:
                return
            self._running = True
        threading.Thread(target=self._probe, name="catalog-probe", daemon=True).start()

    def _probe(self) -> None:
        try:
            proc = subprocess.run([sys.executable, "-m", "api._probe"], capture_output=True,
                                  text=True, timeout=self._timeout_s, env=self._env, check=False)
            if proc.returncode != 0:
                tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
                raise RuntimeError(f"exit {proc.returncode}: {tail}")
            data = json.loads(proc.stdout.strip().splitlines()[-1])
            with self._lock:
                self._data, self._stamp, self._error = data, time.monotonic(), None
        except Exception as e:  # noqa: BLE001  (reported through `get`)
            with self._lock:
                self._error = f"listing models failed: {e}"
        finally:
            with self._lock:
                self._running = False
            self._ready.set()

    def get(self) -> dict[str, Any]:
        """The catalog; raises `StoreError` (HTTP 503) when it cannot be had."""
        if self._data is None or time.monotonic() - self._stamp > self._ttl_s:
            self.start()
        if self._data is None:
            self._ready.wait(self._timeout_s)
        with self._lock:
            if self._data is None:
                if not self._ready.is_set() or self._running:
                    raise StoreError("the model catalog is still loading; retry in a moment.")
                error, self._ready = self._error, threading.Event()
                raise StoreError(error or "the model catalog is unavailable.")
            return self._data

    def model_names(self) -> dict[str, bool]:
        return {m["name"]: m["available"] for m in self.get()["models"]}

    def estimator_names(self) -> dict[str, bool]:
        return {e["name"]: e["available"] for e in self.get()["estimators"]}
