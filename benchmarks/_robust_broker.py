"""Broker outages and Celery worker kills for `benchmarks.robustness` (needs Redis at
127.0.0.1:6379; skipped with a note without it).

An API (`allocator serve --workers 0`) reaches Redis only through a TCP forwarder this
module controls, and one `allocator worker` reaches it directly; both share a SQLite file.
Each outage cycle closes the forwarder (the broker is down for the API), posts a few
problem jobs (each must get its 202 within 2 s), reopens it, and waits until every job has
succeeded: the outbox must send them without a restart. One more cycle kills the worker
with SIGKILL mid-job and starts another: the reaper must re-queue the job and it must
succeed. A job that ends otherwise, or never ends, is a lost or stuck job.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

from api.testing import BrokerForwarder
from benchmarks._robust_common import REPO, Service, Tally, log, wait_jobs

REDIS_HOST, REDIS_PORT = "127.0.0.1", 6379
# A Redis database of the benchmark's own (the tests use 13 and 15): emptied at start and
# at the end, so no stale message reaches this worker and none is left for others.
BROKER_DB = 12
POST_LIMIT_S = 2.0  # a POST while the broker is down must answer within this
JOBS_PER_OUTAGE = 3
KILL_RUNNING_WAIT_S = 90.0
WORKER_READY_S = 120.0


def redis_unavailable() -> str | None:
    """None when Redis answers PING at 127.0.0.1:6379 within a second, else why not."""
    try:
        import redis
    except ImportError as e:
        return f"the redis package is not installed ({e})"
    client = redis.Redis(host=REDIS_HOST, port=REDIS_PORT, db=BROKER_DB,
                         socket_connect_timeout=1.0, socket_timeout=1.0)
    try:
        client.ping()
    except Exception as e:  # noqa: BLE001  (any failure means: no broker to test with)
        return f"no Redis at {REDIS_HOST}:{REDIS_PORT}: {type(e).__name__}: {e}"
    finally:
        client.close()
    return None


def _flush_broker_db() -> None:
    import redis

    client = redis.Redis(host=REDIS_HOST, port=REDIS_PORT, db=BROKER_DB,
                         socket_connect_timeout=2.0, socket_timeout=5.0)
    try:
        client.flushdb()
    finally:
        client.close()


class CeleryWorker:
    """`allocator worker --concurrency 1` (prefork) in its own process group."""

    def __init__(self, env: dict[str, str], data: Path) -> None:
        self.env, self.data = env, data
        self.proc: subprocess.Popen | None = None
        self.starts = 0

    @property
    def log_path(self) -> Path:
        return self.data / f"worker-{self.starts}.log"

    def start(self) -> None:
        self.starts += 1
        with open(self.log_path, "wb") as log_file:  # the child keeps its own copy
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "allocator.cli", "worker", "--concurrency", "1",
                 "--loglevel", "warning"], cwd=REPO, env=self.env, stdout=log_file,
                stderr=subprocess.STDOUT, start_new_session=True)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def _signal_group(self, sig: int) -> None:
        if self.proc is None:
            return
        try:
            os.killpg(self.proc.pid, sig)
        except ProcessLookupError:
            pass

    def kill(self) -> None:
        """SIGKILL to the worker and its pool process, as a crashed host would."""
        if self.proc is None:
            return
        self._signal_group(signal.SIGKILL)
        self.proc.wait(timeout=30)
        self.proc = None

    def stop(self) -> None:
        """SIGTERM (warm shutdown), then SIGKILL after 20 s."""
        if self.proc is None:
            return
        self._signal_group(signal.SIGTERM)
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self._signal_group(signal.SIGKILL)
            self.proc.wait(timeout=10)
        self.proc = None

    def log_tail(self, chars: int = 600) -> str:
        path = self.log_path
        return path.read_text(errors="replace")[-chars:] if path.exists() else ""


def _worker_pids(client: httpx.Client) -> set[int]:
    """Pids of the worker processes with a fresh heartbeat, from `/health`."""
    try:
        items = client.get("/health").json()["checks"]["workers"]["items"]
    except (httpx.HTTPError, ValueError, KeyError, TypeError):
        return set()
    return {int(w["pid"]) for w in items if w.get("pid") is not None}


def _wait_new_worker(client: httpx.Client, worker: CeleryWorker, seen: set[int]) -> set[int]:
    """Waits until a worker process not in `seen` sends a heartbeat; returns the live pids."""
    deadline = time.monotonic() + WORKER_READY_S
    while time.monotonic() < deadline:
        pids = _worker_pids(client)
        if pids - seen:
            return pids
        if not worker.alive():
            raise RuntimeError(f"allocator worker exited: {worker.log_tail()}")
        time.sleep(0.3)
    raise RuntimeError(f"allocator worker sent no heartbeat in {WORKER_READY_S:.0f} s: "
                       f"{worker.log_tail()}")


def _problem_body(rng: random.Random, seed: int) -> dict[str, Any]:
    from allocator.testing_problems import random_problem

    doc = random_problem(rng.choice([8, 16, 32]), seed=seed).to_dict()
    return {"problem": doc, "budgets": [f"{rng.choice([3, 4, 5])}bits"],
            "solver": rng.choice(["ilp", "greedy"]), "seed": seed}


def _report_unfinished(tally: Tally, where: str, ids: list[str],
                       states: dict[str, dict], timeout_s: float) -> int:
    """A `lost_or_stuck_jobs` failure for each job of `ids` not succeeded; their number."""
    bad = 0
    for job_id in ids:
        last = states.get(job_id, {})
        if last.get("status") != "succeeded":
            bad += 1
            tally.fail("lost_or_stuck_jobs", where, f"job {job_id}",
                       f"status {last.get('status')!r} after {timeout_s:.0f} s, stage "
                       f"{last.get('stage')!r}, attempts {last.get('attempts')!r}, "
                       f"error {str(last.get('error'))[:160]!r}")
    return bad


def _outage_cycle(api: Service, fwd: BrokerForwarder, tally: Tally, rng: random.Random,
                  cycle: int, timeout_s: float) -> None:
    """Broker down for the API; jobs posted; broker back; every job must succeed."""
    where = f"broker outage {cycle + 1}"
    fwd.close()
    ids: list[str] = []
    took_s: list[float] = []
    with api.client(timeout_s=30) as client:
        for k in range(JOBS_PER_OUTAGE):
            body = _problem_body(rng, seed=1000 * (cycle + 1) + k)
            sent = f"POST /jobs (broker down) {body['solver']} {body['budgets']}"
            t0 = time.monotonic()
            try:
                r = client.post("/jobs", json=body)
            except httpx.HTTPError as e:
                tally.fail("server_errors", where, sent, f"no answer: {type(e).__name__}: {e}")
                continue
            took = time.monotonic() - t0
            took_s.append(took)
            tally.add("limit_checks")
            if r.status_code >= 500:
                tally.fail("server_errors", where, sent, f"{r.status_code} {r.text[:200]}")
                continue
            if r.status_code != 202:
                tally.fail("lost_or_stuck_jobs", where, sent,
                           f"refused: {r.status_code} {r.text[:200]}")
                continue
            if took > POST_LIMIT_S:
                tally.fail("limit_overruns", where, sent,
                           f"202 after {took:.2f} s (limit {POST_LIMIT_S:g} s)")
            ids.append(r.json()["id"])
        tally.add("jobs_submitted_for_broker", len(ids))
        time.sleep(rng.uniform(1.0, 3.0))  # the outbox meets the down broker a few times
        early = [i for i in ids if client.get(f"/jobs/{i}").json().get("status") != "queued"]
        fwd.open()
        t0 = time.monotonic()
        states = wait_jobs(client, ids, timeout_s)
        waited_s = time.monotonic() - t0
    bad = _report_unfinished(tally, where, ids, states, timeout_s)
    tally.add("broker_cycles")
    slowest = max(took_s, default=0.0)
    log(f"  outage {cycle + 1}: {len(ids)} jobs posted (slowest 202 in {slowest:.2f} s); "
        f"{len(ids) - bad} succeeded {waited_s:.1f} s after the broker came back")
    if early:  # the outage did not hold: this cycle tested less than it says
        log(f"  outage {cycle + 1}: {len(early)} job(s) left `queued` while the broker was "
            f"down for the API")


def _worker_kill_cycle(api: Service, worker: CeleryWorker, tally: Tally, seed: int,
                       timeout_s: float) -> None:
    """SIGKILL of the Celery worker while a job runs; a new worker; the job must succeed."""
    where = "celery worker kill -9"
    body = {"model": "digits-mlp", "budgets": ["4bits"], "solver": "ilp", "seed": seed,
            "measure": True}
    with api.client(timeout_s=30) as client:
        before = _worker_pids(client)
        r = client.post("/jobs", json=body)
        if r.status_code != 202:
            tally.fail("lost_or_stuck_jobs", where, "POST /jobs digits-mlp",
                       f"refused: {r.status_code} {r.text[:200]}")
            return
        job_id = r.json()["id"]
        tally.add("jobs_submitted_for_broker")
        state: dict[str, Any] = {}
        deadline = time.monotonic() + KILL_RUNNING_WAIT_S
        while time.monotonic() < deadline:
            state = client.get(f"/jobs/{job_id}").json()
            if state.get("status") != "queued":
                break
            time.sleep(0.2)
        time.sleep(0.5)
        state = client.get(f"/jobs/{job_id}").json()
        running = state.get("status") == "running"
        worker.kill()
        log(f"  worker kill: killed with the job {state.get('status')} "
            f"({state.get('stage')}); starting a new worker")
        if not running:
            log("  worker kill: the job was not running at the kill; the cycle shows less")
        worker.start()
        _wait_new_worker(client, worker, before)
        states = wait_jobs(client, [job_id], timeout_s)
    bad = _report_unfinished(tally, where, [job_id], states, timeout_s)
    tally.add("broker_cycles")
    if not bad:
        log(f"  worker kill: the job succeeded (attempts {states[job_id].get('attempts')})")


def run_broker_cycles(root: Path, tally: Tally, rng: random.Random, *, env: dict[str, str],
                      cycles: int, timeout_s: float = 60.0,
                      kill_timeout_s: float = 180.0) -> dict[str, Any]:
    """`cycles` broker outages and one worker kill against a Celery-mode service under
    `root`; returns a note for the summary (`{"skipped": why}` without Redis)."""
    tally.add("broker_cycles", 0)
    reason = redis_unavailable()
    if reason is not None:
        log(f"broker: skipped ({reason})")
        return {"skipped": reason}
    data = root / "broker"
    data.mkdir(parents=True, exist_ok=True)
    _flush_broker_db()
    direct = f"redis://{REDIS_HOST}:{REDIS_PORT}/{BROKER_DB}"
    fwd = BrokerForwarder((REDIS_HOST, REDIS_PORT))
    api = Service(data, workers=0, env={**env, "ALLOCATOR_DISPATCH_INTERVAL_S": "1"})
    api.env["ALLOCATOR_BROKER_URL"] = fwd.url(BROKER_DB)  # Service drops any inherited one
    worker = CeleryWorker({**api.env, "ALLOCATOR_BROKER_URL": direct}, data)
    t0 = time.monotonic()
    try:
        fwd.open()
        worker.start()
        api.start()
        with api.client() as client:
            _wait_new_worker(client, worker, set())
        log(f"  API on {api.base} (broker via port {fwd.port}), worker ready in "
            f"{time.monotonic() - t0:.0f} s")
        for cycle in range(cycles):
            _outage_cycle(api, fwd, tally, rng, cycle, timeout_s)
        _worker_kill_cycle(api, worker, tally, seed=rng.randrange(1000), timeout_s=kill_timeout_s)
        if not api.alive():
            tally.fail("server_errors", "allocator serve (Celery mode)", "after the cycles",
                       f"the service died: {api.log_tail(300)}")
    finally:
        api.stop()
        worker.stop()
        fwd.close()
        try:
            _flush_broker_db()
        except Exception as e:  # noqa: BLE001  (cleanup must not hide the real error)
            log(f"  broker: could not empty Redis db {BROKER_DB}: {e}")
    return {"broker_s": round(time.monotonic() - t0, 1)}
