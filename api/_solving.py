"""Synchronous solves (`POST /solve`, `POST /jobs/{id}/solve`) off the event loop, in a few
solver processes with a hard deadline.

Why processes: a solve is CPU-bound Python that holds the GIL, so in a thread a big one
slows every other request; and a solver that overruns its own `time_limit_s` can only be
stopped from outside. Each request borrows one of `sync_solve_workers` long-lived children
("spawn", torch-free: they import only `allocator.solvers`, like the API process), sends the
validated problem, and waits at most `sync_time_limit_s + sync_grace_s`; past that the child
is killed (a fresh one starts) and the client gets a 422 naming the limit. With every child
busy, a request is answered 503 with `Retry-After` at once: there is no queue.

Answers a client sees (besides the 200 BitConfig):
    422 `body.solver`: the solve did not finish within `sync_time_limit_s` (the solver found
        no answer in time, or its process was stopped at the hard deadline); the detail
        says to submit a job instead (`POST /jobs`, `job_time_limit_s`).
    422 `body.solver` / `body.problem`: the solver refused or failed on this problem.
    503 (`Retry-After`): every solver process is busy, or none could be started.
"""

from __future__ import annotations

import atexit
import logging
import math
import multiprocessing
import os
import signal
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any

from api._errors import ApiError
from api._settings import Settings

log = logging.getLogger("allocator.api")

# How long a fresh solver process may take to import the solvers before it counts as failed.
START_TIMEOUT_S = 60.0

# What a child sends back: ("ok", bitconfig dict) or (kind, message) with kind one of
# "timeout", "refused" (an AllocatorError), "crashed" (anything else).
Reply = tuple[str, Any]


def _child_main(conn: Connection) -> None:
    """A solver process: answers solve requests until its pipe closes (the API process
    ended or closed the pool)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
    from allocator.solvers import get_solver  # noqa: F401  (imported once, before "ready")

    conn.send(("ready", os.getpid()))
    while True:
        try:
            request = conn.recv()
        except (EOFError, OSError):
            return
        if request is None:
            return
        try:
            conn.send(_solve_now(*request))
        except (BrokenPipeError, OSError):
            return


def _solve_now(problem: Any, budgets: Sequence[Any], solver: str, seed: int,
               time_limit_s: float) -> Reply:
    """One solve in the child, as a reply the parent turns into an HTTP answer."""
    from allocator.solvers import get_solver
    from allocator.solvers._base import SolverTimeoutError
    from engine import AllocatorError

    try:
        solution = get_solver(solver).solve(problem, budgets, seed=seed,
                                            time_limit_s=time_limit_s)
        return "ok", solution.to_bitconfig(problem, budgets).to_dict()
    except SolverTimeoutError as e:
        return "timeout", str(e)
    except AllocatorError as e:
        return "refused", str(e)
    except Exception as e:  # noqa: BLE001  (a solver crash on client data is a 422, logged)
        return "crashed", f"{type(e).__name__}: {e}"


@dataclass
class _Slot:
    """One solver process and its pipe; `busy` while a request holds it."""

    proc: Any = None
    conn: Connection | None = None
    ready: bool = False
    busy: bool = False
    deadline: float = 0.0  # monotonic time its current solve is killed at


class SolvePool:
    """`size` solver processes, started on first use and reused.

    Args:
        size: How many solves may run at once (`sync_solve_workers`).
    """

    def __init__(self, size: int) -> None:
        self._ctx = multiprocessing.get_context("spawn")
        self._slots = [_Slot() for _ in range(size)]
        self._lock = threading.Lock()

    @property
    def pids(self) -> list[int]:
        """Pids of the live solver processes."""
        return [s.proc.pid for s in self._slots if s.proc is not None and s.proc.is_alive()]

    def run(self, problem: Any, budgets: Sequence[Any], *, solver: str, seed: int,
            time_limit_s: float, grace_s: float) -> dict[str, Any]:
        """Solves in a free process; the BitConfig as a dict, or an `ApiError`."""
        slot = self._acquire()
        try:
            self._ensure_started(slot)
            hard_s = time_limit_s + grace_s
            request = (problem, list(budgets), solver, seed, time_limit_s)
            try:
                assert slot.conn is not None
                slot.conn.send(request)
            except (BrokenPipeError, OSError):  # it died while idle: a fresh one takes it
                self._kill(slot)
                self._ensure_started(slot)
                assert slot.conn is not None
                slot.conn.send(request)
            slot.deadline = time.monotonic() + hard_s
            if not slot.conn.poll(hard_s):
                self._kill(slot)
                self._start(slot)  # warm again for the next request
                raise _too_slow(solver, time_limit_s, f"its process was stopped after "
                                                      f"{hard_s:g} s")
            try:
                kind, payload = slot.conn.recv()
            except (EOFError, OSError):
                proc = slot.proc
                self._kill(slot)
                code = proc.exitcode if proc is not None else None
                log.warning("solver process for %r died (exit code %s)", solver, code)
                raise ApiError(422, f"`body.problem`: solver {solver!r} stopped without an "
                                    f"answer on this problem (its process exited, code "
                                    f"{code}).", "body.problem", None) from None
        finally:
            with self._lock:
                slot.busy = False
        if kind == "ok":
            return payload
        if kind == "timeout":
            raise _too_slow(solver, time_limit_s, "it found no answer in time")
        if kind == "refused":
            raise ApiError(422, f"`body.solver`: {solver} cannot solve this problem: "
                                f"{payload}", "body.solver", solver)
        log.warning("solver %s failed: %s", solver, payload)
        raise ApiError(422, f"`body.problem`: solver {solver!r} failed on this problem: "
                            f"{payload}", "body.problem", None)

    def warm(self) -> None:
        """Starts every idle slot's process now, without waiting for it (a service calls
        this at start, so that its first solve does not pay for the imports)."""
        with self._lock:
            idle = [s for s in self._slots if not s.busy and s.proc is None]
            for slot in idle:
                slot.busy = True
        try:
            for slot in idle:
                self._start(slot)
        finally:
            with self._lock:
                for slot in idle:
                    slot.busy = False

    def _acquire(self) -> _Slot:
        with self._lock:
            for slot in self._slots:
                if not slot.busy:
                    slot.busy = True
                    return slot
            wait_s = min(s.deadline for s in self._slots) - time.monotonic()
        retry_s = max(1, math.ceil(wait_s))
        raise ApiError(503, f"all {len(self._slots)} synchronous solver processes are busy "
                            f"(`sync_solve_workers`); retry in {retry_s} s, or submit a job "
                            "(POST /jobs).", None, None, headers={"Retry-After": str(retry_s)})

    def _start(self, slot: _Slot) -> None:
        parent, child = self._ctx.Pipe()
        proc = self._ctx.Process(target=_child_main, args=(child,), name="allocator-solve",
                                 daemon=True)
        proc.start()
        child.close()  # the child holds its end: a dead parent is an EOF there
        slot.proc, slot.conn, slot.ready = proc, parent, False

    def _ensure_started(self, slot: _Slot) -> None:
        """A live process that has imported the solvers (started now if needed)."""
        if slot.proc is None or not slot.proc.is_alive():
            self._kill(slot)
            self._start(slot)
        if slot.ready:
            return
        assert slot.conn is not None
        try:
            ok = slot.conn.poll(START_TIMEOUT_S) and slot.conn.recv()[0] == "ready"
        except (EOFError, OSError):
            ok = False
        if not ok:
            self._kill(slot)
            raise ApiError(503, "no solver process could be started; retry later.", None, None,
                           headers={"Retry-After": "5"})
        slot.ready = True

    @staticmethod
    def _kill(slot: _Slot) -> None:
        if slot.proc is not None and slot.proc.is_alive():
            slot.proc.kill()
        if slot.proc is not None:
            slot.proc.join(timeout=5)
        if slot.conn is not None:
            slot.conn.close()
        slot.proc, slot.conn, slot.ready = None, None, False

    def close(self) -> None:
        """Stops every solver process (they also end on their own when this process does)."""
        with self._lock:
            for slot in self._slots:
                self._kill(slot)


def _too_slow(solver: str, time_limit_s: float, how: str) -> ApiError:
    return ApiError(422, f"`body.solver`: {solver!r} did not finish within the synchronous "
                         f"time limit `sync_time_limit_s`={time_limit_s:g} s ({how}); submit "
                         "the problem as a job (POST /jobs, limit `job_time_limit_s`) or "
                         "choose a faster solver such as 'greedy'.", "body.solver", solver)


# One pool per size in this process: every app (tests build many) shares the processes.
_POOLS: dict[int, SolvePool] = {}
_POOLS_LOCK = threading.Lock()


def pool(size: int) -> SolvePool:
    """The process-wide pool of `size` solver processes (created on first use)."""
    with _POOLS_LOCK:
        if size not in _POOLS:
            _POOLS[size] = SolvePool(size)
        return _POOLS[size]


@atexit.register
def close_pools() -> None:
    """Stops every pool's processes."""
    with _POOLS_LOCK:
        for p in _POOLS.values():
            p.close()


def warm_up(settings: Settings) -> None:
    """Starts the service's solver processes in the background (see `SolvePool.warm`)."""
    pool(settings.sync_solve_workers).warm()


def solve_sync(settings: Settings, problem: Any, budgets: Sequence[Any], *, solver: str,
               seed: int) -> dict[str, Any]:
    """A synchronous solve under the service's limits (see the module docstring)."""
    return pool(settings.sync_solve_workers).run(
        problem, budgets, solver=solver, seed=seed, time_limit_s=settings.sync_time_limit_s,
        grace_s=settings.sync_grace_s)


__all__ = ["SolvePool", "close_pools", "pool", "solve_sync", "warm_up"]
