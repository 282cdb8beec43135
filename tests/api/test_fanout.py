"""One job across many Celery workers (real Redis, real `allocator worker` processes;
skipped cleanly without Redis): a model job's measured sensitivity is computed in chunks of
layers by every worker, and the table equals the one-process table byte for byte; a chunk
whose worker is killed is computed again exactly once; a cancelled job's chunks stop within
seconds; a restart of everything mid-stage keeps the chunks done before it; one worker with
one process finishes alone; the front's measured points fan out the same way. (The front in
chunks without Celery, against the front measured in order, needs no Redis.)"""

from __future__ import annotations

import dataclasses
import os
import re
import signal
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from api import Settings, create_app
from tests.api.conftest import (
    TOKEN,
    CeleryWorker,
    own_redis_db,
    problem_doc,
    process_gone,
    wait_for,
)
from tests.conftest import private_data_dir

# A Redis database of these tests' own (other suites' workers would take the tasks).
OWN_DB = 12
BITS = [2, 3, 4, 5, 6, 8]
JOB = {"model": "digits-cnn", "budgets": ["4bits"], "solver": "ilp", "estimator": "measured",
       "bits": BITS, "measure": False}
AUTH = {"Authorization": f"Bearer {TOKEN}"}
# Fast failure detection for the tests: leases lapse in 3 s, a silent job is re-queued 6 s
# after its last heartbeat.
FAST = {"ALLOCATOR_FANOUT_LEASE_S": "3", "ALLOCATOR_HEARTBEAT_INTERVAL_S": "1",
        "ALLOCATOR_HEARTBEAT_TIMEOUT_S": "6"}
CHUNK_LINE = re.compile(r"(?P<table>\S+) chunk (?P<chunk>\d+)/(?P<count>\d+): "
                        r"(?P<event>started|done|stopped)\b.* in process (?P<pid>\d+)")


@pytest.fixture
def broker(redis_url: str) -> str:
    return own_redis_db(redis_url, OWN_DB)


class Worker(CeleryWorker):
    def chunk_events(self) -> list[dict[str, str]]:
        return [m.groupdict() for m in CHUNK_LINE.finditer(self.log())]

    def kill(self) -> None:
        """SIGKILL to the worker and its pool process (a crash, not a shutdown)."""
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)


class Cluster:
    """Workers, and the API (in this process) over one database, data dir and broker."""

    def __init__(self, env: dict[str, str], tmp_path: Path) -> None:
        self.env, self.tmp_path = env, tmp_path
        self.workers: list[Worker] = []
        self.data_dir = Path(env["ALLOCATOR_DATA_DIR"])

    def start_worker(self) -> Worker:
        w = Worker(self.env, self.tmp_path / f"worker-{len(self.workers)}.log")
        self.workers.append(w)
        return w

    def app(self) -> Any:
        return create_app(Settings(
            database_url=self.env["ALLOCATOR_DATABASE_URL"],
            broker_url=self.env["ALLOCATOR_BROKER_URL"], api_token=TOKEN,
            data_dir=self.data_dir, dispatch_interval_s=0.5, heartbeat_interval_s=1,
            heartbeat_timeout_s=6))

    def events(self) -> list[dict[str, str]]:
        return [e for w in self.workers for e in w.chunk_events()]


@pytest.fixture
def cluster(broker: str, tmp_path: Path) -> Iterator[Cluster]:
    env = {**os.environ, **FAST, "ALLOCATOR_BROKER_URL": broker,
           "ALLOCATOR_DATABASE_URL": f"sqlite:///{tmp_path / 'jobs.sqlite'}",
           "ALLOCATOR_DATA_DIR": str(private_data_dir(tmp_path / "data")),
           "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    c = Cluster(env, tmp_path)
    yield c
    for w in c.workers:
        w.stop()


def _ready(client: TestClient, count: int, workers: list[Worker],
           timeout_s: float = 120) -> list[dict[str, Any]]:
    """Until `count` worker processes have sent a heartbeat (ready for tasks)."""
    deadline = time.monotonic() + timeout_s
    while True:
        alive = client.get("/health").json()["checks"]["workers"]["items"]
        if len(alive) >= count:
            return alive
        for w in workers:
            assert w.proc.poll() is None, w.log()[-3000:]
        assert time.monotonic() < deadline, [w.log()[-2000:] for w in workers]
        time.sleep(0.3)


def _warm(client: TestClient, workers: list[Worker]) -> None:
    """Both workers load digits-cnn (a fisher job each, at once), as warm workers have."""
    ids = [client.post("/jobs", json=JOB | {"estimator": "fisher", "seed": 100 + i}).json()["id"]
           for i in range(len(workers))]
    for job_id in ids:
        done = wait_for(client, job_id, timeout_s=180)
        assert done["status"] == "succeeded", (done, [w.log()[-2000:] for w in workers])


def _runner_pid(client: TestClient, job_id: str) -> int:
    """The pid of the process running the job (its heartbeat names the job)."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        busy = [w for w in client.get("/health").json()["checks"]["workers"]["items"]
                if w["job_id"] == job_id]
        if busy:
            return int(busy[0]["pid"])
        time.sleep(0.1)
    raise AssertionError(f"no process runs job {job_id}")


def _table(data_dir: Path) -> Any:
    """The one measured digits-cnn table cached in the data dir."""
    from sensitivity import SensitivityTable

    [path] = (data_dir / "sensitivity").glob("digits-cnn-measured-*.json")
    return SensitivityTable.load(path)


def table_bytes(table: Any) -> bytes:
    """The table's JSON but its wall and creation times (which no two runs share)."""
    return dataclasses.replace(table, elapsed_s=0.0, created=0.0).to_json().encode()


def _one_process(table: Any) -> bytes:
    """The same table computed here in one piece, with one torch thread as the workers."""
    import torch

    import sensitivity
    import zoo

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        ref = sensitivity.estimate(zoo.get_model("digits-cnn"), "measured", bits=table.bits,
                                   seed=table.seed, options=dict(table.config),
                                   use_cache=False)
    finally:
        torch.set_num_threads(before)
    return table_bytes(ref)


def _wait_events(cluster: Cluster, until: Callable[[list[dict[str, str]]], bool],
                 timeout_s: float = 120) -> list[dict[str, str]]:
    deadline = time.monotonic() + timeout_s
    while True:
        events = cluster.events()
        if until(events):
            return events
        assert time.monotonic() < deadline, [w.log()[-2000:] for w in cluster.workers]
        time.sleep(0.02)


def _count(events: list[dict[str, str]], event: str) -> Counter[int]:
    return Counter(int(e["chunk"]) for e in events if e["event"] == event)


@pytest.mark.slow  # over 10 s; `make test-all` runs it
def test_two_workers_compute_the_one_process_table(cluster: Cluster) -> None:
    workers = [cluster.start_worker(), cluster.start_worker()]
    with TestClient(cluster.app(), headers=AUTH) as client:
        _ready(client, 2, workers)
        _warm(client, workers)
        job = client.post("/jobs", json=JOB | {"seed": 1}).json()
        progress: list[float] = []
        deadline = time.monotonic() + 180
        while (state := client.get(f"/jobs/{job['id']}").json())["status"] in ("queued",
                                                                              "running"):
            if state["stage"] == "sensitivity":
                progress.append(state["progress"])
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert state["status"] == "succeeded", (state, [w.log()[-3000:] for w in workers])
        assert state["timings_s"]["fanout_dispatch_s"] < 2.0
        assert "fanout_merge_s" in state["timings_s"]
    events = cluster.events()
    started, done = _count(events, "started"), _count(events, "done")
    count = int(events[0]["count"])
    assert count == 5  # one chunk per layer: 5 layers, 2 workers x 4 chunks each
    assert started == done == Counter(range(1, count + 1))  # each chunk once
    # every worker computed chunks (the job's worker while it waited, the other from the queue)
    assert all(w.chunk_events() for w in workers), [w.log()[-2000:] for w in workers]
    assert progress == sorted(progress) and 0.03 <= progress[0] and progress[-1] <= 0.35
    table = _table(cluster.data_dir)
    assert table_bytes(table) == _one_process(table)
    assert not list((cluster.data_dir / "sensitivity-chunks").glob("*.json"))


@pytest.mark.slow  # over 10 s; `make test-all` runs it
def test_one_worker_with_one_process_finishes_alone(cluster: Cluster) -> None:
    """The job's process computes every chunk while it waits: no deadlock on a queue it
    cannot serve; the chunk tasks it sent find their chunks done and return at once."""
    worker = cluster.start_worker()
    with TestClient(cluster.app(), headers=AUTH) as client:
        _ready(client, 1, [worker])
        job = client.post("/jobs", json=JOB | {"seed": 2}).json()
        done = wait_for(client, job["id"], timeout_s=240)
        assert done["status"] == "succeeded", (done, worker.log()[-3000:])
        follow = client.post("/jobs", json={"problem": problem_doc(), "budgets": ["4bits"]})
        assert wait_for(client, follow.json()["id"], timeout_s=120)["status"] == "succeeded"
    events = worker.chunk_events()
    count = int(events[0]["count"])
    assert count == 4  # one live worker: 4 chunks
    assert _count(events, "started") == _count(events, "done") == Counter(range(1, count + 1))
    assert len({e["pid"] for e in events}) == 1
    table = _table(cluster.data_dir)
    assert table_bytes(table) == _one_process(table)


@pytest.mark.slow  # over 10 s; `make test-all` runs it
def test_a_killed_workers_chunk_runs_again_exactly_once(cluster: Cluster) -> None:
    workers = [cluster.start_worker(), cluster.start_worker()]
    with TestClient(cluster.app(), headers=AUTH) as client:
        _ready(client, 2, workers)
        _warm(client, workers)
        job = client.post("/jobs", json=JOB | {"seed": 3}).json()
        runner = _runner_pid(client, job["id"])
        # the first chunk the other worker starts: kill that worker mid-chunk
        other = _wait_events(cluster, lambda ev: any(
            e["event"] == "started" and int(e["pid"]) != runner for e in ev))
        victim_event = next(e for e in other if e["event"] == "started"
                            and int(e["pid"]) != runner)
        [victim] = [w for w in workers
                    if any(e["pid"] == victim_event["pid"] for e in w.chunk_events())]
        victim.kill()
        killed = int(victim_event["chunk"])
        done = wait_for(client, job["id"], timeout_s=180)
        assert done["status"] == "succeeded", (done, [w.log()[-3000:] for w in workers])
        assert done["attempts"] == 1  # the job itself never stopped
    events = cluster.events()
    assert not any(e["event"] == "done" and e["pid"] == victim_event["pid"]
                   and int(e["chunk"]) == killed for e in events), "killed too late"
    started, finished = _count(events, "started"), _count(events, "done")
    assert started[killed] == 2  # killed once, computed again once
    assert all(started[c] == 1 for c in started if c != killed), started
    assert finished == Counter(range(1, int(events[0]["count"]) + 1))
    table = _table(cluster.data_dir)
    assert table_bytes(table) == _one_process(table)


def _settled(cluster: Cluster, job_id: str, runner: int,
             running: set[tuple[str, str]]) -> bool:
    """Every chunk that ran at the cancel has ended (done, stopped, or its process gone),
    and the job's own process let go of the job (or is gone)."""
    ended = {(e["pid"], e["chunk"]) for e in cluster.events() if e["event"] != "started"}
    chunks = all(c in ended or process_gone(int(c[0])) for c in running)
    job = process_gone(runner) or any(f"job {job_id} stopped" in w.log() for w in cluster.workers)
    return chunks and job


@pytest.mark.slow  # over 10 s; `make test-all` runs it
def test_cancel_stops_every_chunk_within_seconds(cluster: Cluster) -> None:
    workers = [cluster.start_worker(), cluster.start_worker()]
    with TestClient(cluster.app(), headers=AUTH) as client:
        _ready(client, 2, workers)
        _warm(client, workers)
        job = client.post("/jobs", json=JOB | {"seed": 4}).json()
        runner = _runner_pid(client, job["id"])
        # both workers compute chunks: the job's and the other
        events = _wait_events(cluster, lambda ev: any(
            e["event"] == "started" and int(e["pid"]) != runner for e in ev))
        r = client.post(f"/jobs/{job['id']}/cancel")
        assert r.status_code == 200 and r.json()["status"] == "cancelled"
        t0 = time.monotonic()
        at_cancel = cluster.events()
        running = {(e["pid"], e["chunk"]) for e in at_cancel if e["event"] == "started"} - {
            (e["pid"], e["chunk"]) for e in at_cancel if e["event"] != "started"}
        assert {int(pid) for pid, _ in running} - {runner}, at_cancel  # the other worker too
        while not _settled(cluster, job["id"], runner, running):
            assert time.monotonic() - t0 < 5, [w.log()[-3000:] for w in workers]
            time.sleep(0.1)
        stopped_after_s = time.monotonic() - t0
        count = int(events[0]["count"])
        assert sum(_count(cluster.events(), "done").values()) < count  # stopped mid-stage
        started = _count(cluster.events(), "started")
        time.sleep(3)  # nothing starts again: queued chunks were revoked or find the job over
        assert _count(cluster.events(), "started") == started, cluster.events()
        follow = client.post("/jobs", json={"problem": problem_doc(), "budgets": ["4bits"]})
        assert wait_for(client, follow.json()["id"], timeout_s=120)["status"] == "succeeded"
        assert client.get(f"/jobs/{job['id']}").json()["status"] == "cancelled"
        assert all(w.proc.poll() is None for w in workers)  # the workers live on
    assert stopped_after_s < 5
    assert not list((cluster.data_dir / "sensitivity").glob("digits-cnn-measured-*.json"))


@pytest.mark.slow  # over 10 s; `make test-all` runs it
def test_a_restart_of_everything_keeps_finished_chunks(cluster: Cluster) -> None:
    workers = [cluster.start_worker(), cluster.start_worker()]
    with TestClient(cluster.app(), headers=AUTH) as client:
        _ready(client, 2, workers)
        _warm(client, workers)
        job = client.post("/jobs", json=JOB | {"seed": 5}).json()
        before = _wait_events(cluster, lambda ev: sum(e["event"] == "done" for e in ev) >= 2)
        for w in workers:  # the whole cluster dies at once, mid-stage
            w.kill()
    before = cluster.events()
    done_before = set(_count(before, "done"))
    count = int(before[0]["count"])
    assert 2 <= len(done_before) < count, before
    restarted = [cluster.start_worker(), cluster.start_worker()]
    with TestClient(cluster.app(), headers=AUTH) as client:
        _ready(client, 2, restarted)
        done = wait_for(client, job["id"], timeout_s=240)
        assert done["status"] == "succeeded", (done, [w.log()[-3000:] for w in restarted])
        assert done["attempts"] == 2
    after = [e for w in restarted for e in w.chunk_events()]
    assert not done_before & set(_count(after, "started")), (before, after)  # kept
    assert set(_count(after, "done")) == set(range(1, count + 1)) - done_before
    table = _table(cluster.data_dir)
    assert table_bytes(table) == _one_process(table)


def _front_metrics(front: dict[str, Any]) -> tuple[list[Any], list[Any]]:
    """The deterministic part of a front document's measurements (latency is a timing)."""
    points = [None if m is None else (m["metrics"], m["size_bytes"]) for m in front["measured"]]
    return points, [row["metrics"] for row in front["uniform"]]


def test_front_in_chunks_equals_the_front_in_order(tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """A model job's front measured in keyed chunks (any process may take one) gives the
    metrics the points measured one after the other give, in the same order."""
    import torch

    import allocator
    from sensitivity import InProcessChunkExecutor, use_chunk_executor

    monkeypatch.setenv("ALLOCATOR_DATA_DIR", str(private_data_dir(tmp_path / "data")))
    limits = allocator.JobLimits(time_limit_s=30, front_points=4,
                                 measure_front_max_params=10**7)
    stages: list[tuple[str, float]] = []
    kw: dict[str, Any] = {"budgets": ["4bits"], "solver": "ilp", "estimator": "measured",
                          "seed": 0, "bits": [2, 4, 8], "measure": True, "limits": limits}
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        plain = allocator.run_model_job("digits-mlp", on_stage=lambda s, f: None, **kw)
        executor = InProcessChunkExecutor(chunks=3)
        with use_chunk_executor(executor):
            chunked = allocator.run_model_job(
                "digits-mlp", on_stage=lambda s, f: stages.append((s, f)), **kw)
    finally:
        torch.set_num_threads(before)
    assert executor.computed == [0, 1, 2]  # the front's chunks (the table was cached)
    points, uniform = _front_metrics(chunked.front)
    assert all(p is not None for p in points) and all(m is not None for m in uniform)
    assert (points, uniform) == _front_metrics(plain.front)
    assert all(m["latency_us"] > 0 for m in chunked.front["measured"])
    pareto = [f for s, f in stages if s == "pareto"]
    assert pareto == sorted(pareto)
    assert not list((tmp_path / "data" / "front-chunks").glob("*.json"))  # cleared


@pytest.mark.slow  # over 10 s; `make test-all` runs it
def test_front_measurements_fan_out_over_workers(cluster: Cluster) -> None:
    """With `measure`, the front points and uniform rows are measured by both workers,
    with the metrics this process measures for the same points."""
    import dataclasses as dc

    import torch

    import zoo
    from allocator._evaluate import measure_config
    from engine import BitConfig

    workers = [cluster.start_worker(), cluster.start_worker()]
    with TestClient(cluster.app(), headers=AUTH) as client:
        _ready(client, 2, workers)
        _warm(client, workers)
        job = client.post("/jobs", json=JOB | {"estimator": "fisher", "seed": 6,
                                               "measure": True}).json()
        done = wait_for(client, job["id"], timeout_s=240)
        assert done["status"] == "succeeded", (done, [w.log()[-3000:] for w in workers])
        front = client.get(f"/jobs/{job['id']}/pareto").json()
        config = client.get(f"/jobs/{job['id']}/result").json()["config"]
    front_events = [e for e in cluster.events() if "-front-" in e["table"]]
    count = int(front_events[0]["count"])
    assert _count(front_events, "done") == Counter(range(1, count + 1))
    assert all(any("-front-" in e["table"] for e in w.chunk_events()) for w in workers)
    spec = zoo.get_model("digits-cnn")
    settings = dc.replace(BitConfig.from_dict(config), bits={})
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for point, m in zip(front["points"], front["measured"], strict=True):
            here = measure_config(spec, dc.replace(settings, bits=point["bits"]), latency=False)
            assert m["metrics"] == here.metrics and m["size_bytes"] == here.size_bytes
    finally:
        torch.set_num_threads(before)


def test_leases_are_exclusive_renewed_and_lapse(broker: str) -> None:
    from api._fanout import Leases

    mine, theirs = Leases(broker, 1.0), Leases(broker, 1.0)
    lease = mine.take("test:table:0")
    assert lease is not None
    with lease:
        assert theirs.take("test:table:0") is None
        time.sleep(1.5)  # past the lease time: renewed meanwhile, still held
        assert theirs.take("test:table:0") is None
    released = theirs.take("test:table:0")
    assert released is not None
    with released:
        pass
    dead = mine.take("test:table:1")  # taken, never renewed: its holder died
    assert dead is not None and theirs.take("test:table:1") is None
    time.sleep(1.3)
    assert theirs.take("test:table:1") is not None  # lapsed: taken over
    assert Leases(None, 1.0).take("test:table:2") is not None  # no Redis: unguarded


def test_a_worker_keeps_its_latest_models() -> None:
    import zoo
    from api._fanout import _Models

    models = _Models()
    mlp = models.get("digits-mlp", keep=1)
    assert models.get("digits-mlp", keep=1) is mlp  # loaded once
    models.get("digits-cnn", keep=1)  # the least recently used goes, from zoo too
    assert zoo.get_model("digits-mlp") is not mlp
