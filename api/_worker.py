"""The in-process worker pool: child processes ("spawn") that claim queued jobs.

`WorkerPool` (in the API process) starts `workers` children, restarts any that die, and
on shutdown stops them and returns their running jobs to the queue. Each child
(`worker_main`) imports torch, polls the database for queued jobs, claims one atomically
and runs it with a heartbeat. Dead workers' jobs are found by their stale heartbeat
(`Reaper`, also in the API process). Every worker process, in-process or Celery, also
writes a process heartbeat (`ProcessBeat`) that `/health` reads.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
import socket
import threading
import time
import uuid
from collections.abc import Callable

from api._settings import Settings
from api._store import JobStore

log = logging.getLogger("allocator.worker")

# Dead processes' heartbeat rows are deleted after this long (`Reaper`).
BEAT_RETENTION_S = 3600.0


def new_worker_id(prefix: str = "w") -> str:
    """A worker identity unique across hosts and restarts."""
    return f"{prefix}-{socket.gethostname()[:40]}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


def beat_interval_s(settings: Settings) -> float:
    """How often a worker process proves it is alive: well inside the heartbeat timeout,
    at most every 5 s (idle workers write too)."""
    return max(0.2, min(5.0, settings.heartbeat_timeout_s / 3))


class ProcessBeat:
    """Writes a process's heartbeat row (`JobStore.beat`) every `interval_s` from a daemon
    thread, with the job it runs (`set_job`, written at once); the row is removed on
    `stop`."""

    def __init__(self, store: JobStore, process_id: str, role: str,
                 interval_s: float) -> None:
        self._store, self.process_id, self._role = store, process_id, role
        self._interval_s = interval_s
        self.job_id: str | None = None
        self._stop, self._wake = threading.Event(), threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"beat-{role}", daemon=True)

    def set_job(self, job_id: str | None) -> None:
        """The job this process now runs (None: idle); the next beat is written now."""
        self.job_id = job_id
        self._wake.set()

    def start(self) -> ProcessBeat:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)
        try:
            self._store.forget(self.process_id)
        except Exception as e:  # noqa: BLE001  (a row left behind is pruned later)
            log.debug("heartbeat row of %s left behind: %s", self.process_id, e)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self._store.beat(self.process_id, self._role, self.job_id)
            except Exception as e:  # noqa: BLE001  (a missed beat is retried)
                log.warning("process heartbeat of %s failed: %s", self.process_id, e)
            self._wake.wait(self._interval_s)
            self._wake.clear()


def worker_main(env: dict[str, str], worker_id: str) -> None:
    """Entry point of a pool child: claim and run jobs until told to stop or orphaned."""
    os.environ.update(env)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    from api._db import make_engine
    from api._runner import run_claimed
    from engine import configure_runtime

    configure_runtime()  # the kernels' process settings, before any job runs
    # Ctrl-C reaches the whole process group: the parent shuts down and terminates us
    # (SIGTERM, default action); its shutdown returns our running job to the queue.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    stop = threading.Event()
    settings = Settings()
    store = JobStore(make_engine(settings.resolved_database_url()))
    beat = ProcessBeat(store, worker_id, "worker", beat_interval_s(settings)).start()
    parent = os.getppid()
    while not stop.is_set() and os.getppid() == parent:
        try:
            job = store.claim(worker_id)
        except Exception as e:  # noqa: BLE001  (database briefly away: retry)
            log.warning("worker %s: claim failed: %s", worker_id, e)
            job = None
        if job is None:
            stop.wait(settings.poll_interval_s)
            continue
        log.info("worker %s runs job %s", worker_id, job.id)
        beat.set_job(job.id)
        run_claimed(store, job, worker_id, settings, on_lost=exit_now)
        beat.set_job(None)
    beat.stop()


def exit_now() -> None:
    """Ends this worker process at once: its job was cancelled or given to another worker,
    so nothing is left to write (the pool starts a fresh process). Child processes the
    job started (a solver binary) are killed first, so no work outlives the job."""
    log.info("job no longer ours; worker process exits")
    kill_children()
    logging.shutdown()
    os._exit(0)


def kill_children() -> list[int]:
    """SIGKILLs this process's child processes (Linux `/proc`; elsewhere none found)."""
    pids: list[int] = []
    try:
        for task in os.scandir(f"/proc/{os.getpid()}/task"):
            with open(os.path.join(task.path, "children")) as f:
                pids += [int(p) for p in f.read().split()]
    except OSError:
        return []
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass
    return pids


class WorkerPool:
    """`size` worker processes, restarted when they die.

    Args:
        settings: The service settings (the children read the same environment).
        store: Used to hand running jobs back to the queue on shutdown.
        size: Number of children.
    """

    def __init__(self, settings: Settings, store: JobStore, size: int) -> None:
        self._settings, self._store, self._size = settings, store, size
        self._ctx = multiprocessing.get_context("spawn")
        self._procs: dict[str, multiprocessing.process.BaseProcess] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def pids(self) -> dict[str, int]:
        """Worker id -> pid of the live children."""
        return {w: p.pid for w, p in self._procs.items() if p.is_alive() and p.pid}

    def _spawn(self) -> None:
        worker_id = new_worker_id("inproc")
        env = self._settings.worker_env()
        proc = self._ctx.Process(target=worker_main, args=(env, worker_id), name=worker_id,
                                 daemon=True)
        proc.start()
        self._procs[worker_id] = proc

    def start(self) -> None:
        for _ in range(self._size):
            self._spawn()
        self._thread = threading.Thread(target=self._supervise, name="worker-pool", daemon=True)
        self._thread.start()

    def _supervise(self) -> None:
        while not self._stop.wait(1.0):
            for worker_id, proc in list(self._procs.items()):
                if not proc.is_alive():
                    log.log(logging.INFO if proc.exitcode == 0 else logging.WARNING,
                            "worker %s exited (%s); starting another", worker_id,
                            proc.exitcode)
                    del self._procs[worker_id]
                    self._spawn()

    def stop(self, timeout_s: float = 10.0) -> None:
        """Stops the children; their unfinished jobs go back to the queue."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        for proc in self._procs.values():
            if proc.is_alive():
                proc.terminate()
        deadline = time.monotonic() + timeout_s
        for proc in self._procs.values():
            proc.join(timeout=max(0.1, deadline - time.monotonic()))
            if proc.is_alive():
                proc.kill()
                proc.join(timeout=2)
        for worker_id in self._procs:
            try:
                self._store.release(worker_id)
                self._store.forget(worker_id)
            except Exception as e:  # noqa: BLE001
                log.warning("could not re-queue the jobs of %s: %s", worker_id, e)
        self._procs.clear()


class Reaper:
    """Periodically re-queues (or fails) running jobs whose heartbeat went stale.

    Args:
        store: The job store.
        settings: `heartbeat_timeout_s`, `max_attempts`, and the check interval.
        on_requeue: Called with each re-queued job id (the Celery dispatcher re-sends it).
    """

    def __init__(self, store: JobStore, settings: Settings,
                 on_requeue: Callable[[str], None] | None = None) -> None:
        self._store, self._settings, self._on_requeue = store, settings, on_requeue
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="reaper", daemon=True)
        self._pruned_at = 0.0

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def sweep(self) -> tuple[list[str], list[str]]:
        requeued, failed = self._store.requeue_stale(
            timeout_s=self._settings.heartbeat_timeout_s,
            max_attempts=self._settings.max_attempts)
        for job_id in requeued:
            log.warning("job %s: worker lost; re-queued", job_id)
            if self._on_requeue is not None:
                self._on_requeue(job_id)
        for job_id in failed:
            log.warning("job %s: worker lost too often; failed", job_id)
        if time.monotonic() - self._pruned_at > 60:
            self._pruned_at = time.monotonic()
            self._store.prune_beats(BEAT_RETENTION_S)
        return requeued, failed

    def _run(self) -> None:
        interval = max(0.5, min(self._settings.heartbeat_interval_s,
                                self._settings.heartbeat_timeout_s / 3))
        while not self._stop.wait(interval):
            try:
                self.sweep()
            except Exception as e:  # noqa: BLE001
                log.warning("reaper: %s", e)
