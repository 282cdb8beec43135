"""Fan-out benchmark: one job's measured sensitivity of MiniLM (36 layers, bits {4, 8}) on
one Celery worker and on two, each worker one process with one torch thread.

    python -m benchmarks.fanout [--redis redis://127.0.0.1:6379/11] [--model minilm]

Starts `allocator serve --workers 0` (the API, its reaper and outbox) and `allocator worker
--concurrency 1` processes over a fresh SQLite file and data dir (trained models and
latency tables linked from the shared data dir), on a Redis database of its own (emptied
first). The workers are warmed first (a fisher job each loads the model), as a running
service's are, then the same measured job runs with one worker and with two (the first
run's cached table moved aside). Then, with the workers stopped, the same table is
computed in this process, in one piece, with one torch thread.

Keys of the last line (one JSON object):
- `fanout_seconds_1_worker`, `fanout_seconds_2_workers`: the job's sensitivity stage (the
  fan-out, the merge and the caching), from its `timings_s.sensitivity_s`;
- `fanout_efficiency_2`: seconds on one worker / (2 x seconds on two);
- `fanout_table_identical`: both jobs' cached tables equal the one-process table byte for
  byte (all but `elapsed_s` and `created`);
- `fanout_overhead_seconds`: on two workers, planning and sending the chunks plus merging
  and caching the table (`fanout_dispatch_s` + `fanout_merge_s`).
The machine's CPU and ISA flags are printed first; on a 2-core machine the two workers
share the cores with everything else running there.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx

import engine

REPO = Path(__file__).resolve().parents[1]
TOKEN = "bench-token"
BITS = [4, 8]
CHUNK_LINE = re.compile(r"chunk (?P<chunk>\d+)/(?P<count>\d+): done .* in process (?P<pid>\d+)")


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _data_dir(path: Path) -> Path:
    """A data dir of its own: trained models and latency tables linked from the shared one,
    no sensitivity tables (every table here is computed)."""
    shared = engine.data_dir()
    path.mkdir(parents=True, exist_ok=True)
    for name in ("models", "hwprofiles"):
        (shared / name).mkdir(parents=True, exist_ok=True)
        (path / name).symlink_to(shared / name, target_is_directory=True)
    return path


class Cluster:
    """The API and its workers as subprocesses, each in its own process group."""

    def __init__(self, folder: Path, redis_url: str) -> None:
        self.folder = folder
        self.data = _data_dir(folder / "data")
        self.port = _free_port()
        self.env = {**os.environ, "ALLOCATOR_DATABASE_URL": f"sqlite:///{folder / 'jobs.sqlite'}",
                    "ALLOCATOR_BROKER_URL": redis_url, "ALLOCATOR_DATA_DIR": str(self.data),
                    "ALLOCATOR_API_TOKEN": TOKEN, "ALLOCATOR_JOB_TIME_LIMIT_S": "30",
                    "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
        self.procs: list[subprocess.Popen] = []
        self.worker_logs: list[Path] = []
        self.client = httpx.Client(base_url=f"http://127.0.0.1:{self.port}", timeout=60,
                                   headers={"Authorization": f"Bearer {TOKEN}"})

    def _spawn(self, args: list[str], log_path: Path) -> subprocess.Popen:
        proc = subprocess.Popen([sys.executable, "-m", "allocator.cli", *args], cwd=REPO,
                                env=self.env, stdout=open(log_path, "ab"),  # noqa: SIM115
                                stderr=subprocess.STDOUT, start_new_session=True)
        self.procs.append(proc)
        return proc

    def start_api(self) -> None:
        proc = self._spawn(["serve", "--port", str(self.port), "--workers", "0"],
                           self.folder / "api.log")
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            assert proc.poll() is None, (self.folder / "api.log").read_text()[-2000:]
            try:
                if self.client.get("/health").status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.3)
        raise RuntimeError("the API did not start")

    def start_worker(self) -> None:
        path = self.folder / f"worker-{len(self.worker_logs)}.log"
        self.worker_logs.append(path)
        self._spawn(["worker", "--concurrency", "1"], path)
        want = len(self.worker_logs)
        deadline = time.monotonic() + 180
        while len(self.client.get("/health").json()["checks"]["workers"]["items"]) < want:
            assert time.monotonic() < deadline, path.read_text()[-2000:]
            time.sleep(0.3)

    def run_jobs(self, bodies: list[dict[str, Any]], timeout_s: float = 1800) -> list[dict]:
        """Posts the jobs at once; their final states once every one has ended."""
        ids = [self.client.post("/jobs", json=b).json()["id"] for b in bodies]
        deadline = time.monotonic() + timeout_s
        out = []
        for job_id in ids:
            while (job := self.client.get(f"/jobs/{job_id}").json())["status"] in (
                    "queued", "running"):
                if time.monotonic() > deadline:
                    raise RuntimeError(f"job {job_id} still {job['status']} after {timeout_s} s")
                time.sleep(0.5)
            if job["status"] != "succeeded":
                raise RuntimeError(f"job {job_id} {job['status']}: {job.get('error')}")
            out.append(job)
        return out

    def chunks_by_process(self) -> dict[str, int]:
        """Chunks each worker process computed (from the workers' logs)."""
        counts: Counter[str] = Counter()
        for path in self.worker_logs:
            counts.update(m["pid"] for m in CHUNK_LINE.finditer(path.read_text(errors="replace")))
        return dict(counts)

    def stop(self) -> None:
        self.client.close()
        for proc in reversed(self.procs):
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)


def table_bytes(table: Any) -> bytes:
    return dataclasses.replace(table, elapsed_s=0.0, created=0.0).to_json().encode()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--redis", default=os.environ.get("ALLOCATOR_BENCH_REDIS_URL",
                                                          "redis://127.0.0.1:6379/11"),
                        help="a Redis database for the benchmark alone (it is emptied)")
    parser.add_argument("--model", default="minilm")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder")
    args = parser.parse_args()
    log(f"cpu: {engine.cpu_model()} ({os.cpu_count()} cores) flags: "
        f"{' '.join(sorted(engine.cpu_flags()))[:300]}")
    import redis

    redis.Redis.from_url(args.redis).flushdb()
    folder = Path(tempfile.mkdtemp(prefix="allocator-fanout-"))
    cluster = Cluster(folder, args.redis)
    job = {"model": args.model, "budgets": ["6bits"], "solver": "ilp", "estimator": "measured",
           "bits": BITS, "seed": 0, "measure": False}
    warm = job | {"estimator": "fisher"}
    out: dict[str, Any] = {"benchmark": "fanout", "model": args.model, "bits": BITS,
                           "cpu": engine.cpu_model(), "cores": os.cpu_count(),
                           "python": platform.python_version()}
    try:
        cluster.start_api()
        cluster.start_worker()
        log("one worker: warming (a fisher job loads the model and its latency table)")
        cluster.run_jobs([warm | {"seed": 100}])
        log("one worker: the measured job")
        [one] = cluster.run_jobs([job])
        chunks_one = cluster.chunks_by_process()
        tables = list((cluster.data / "sensitivity").glob(f"{args.model}-measured-*.json"))
        first = folder / "one-worker.json"
        shutil.move(tables[0], first)
        engine.sidecar_path(tables[0]).unlink()
        cluster.start_worker()
        log("two workers: warming (a fisher job each, at once)")
        cluster.run_jobs([warm | {"seed": 101}, warm | {"seed": 102}])
        log("two workers: the measured job")
        [two] = cluster.run_jobs([job])
        [second] = (cluster.data / "sensitivity").glob(f"{args.model}-measured-*.json")
        both = Counter(cluster.chunks_by_process())
        out["chunks_per_process_1_worker"] = chunks_one
        out["chunks_per_process_2_workers"] = dict(both - Counter(chunks_one))
    finally:
        cluster.stop()

    log("one process: the same table in one piece, one torch thread")
    import torch

    import sensitivity
    import zoo
    from sensitivity import SensitivityTable

    torch.set_num_threads(1)
    engine.configure_runtime()
    table_one, table_two = SensitivityTable.load(first), SensitivityTable.load(second)
    t0 = time.perf_counter()
    ref = sensitivity.estimate(zoo.get_model(args.model), "measured", bits=table_two.bits,
                               seed=int(table_two.seed or 0), options=dict(table_two.config),
                               use_cache=False)
    reference_s = time.perf_counter() - t0
    if not args.keep:
        shutil.rmtree(folder, ignore_errors=True)

    t1 = one["timings_s"]["sensitivity_s"]
    t2 = two["timings_s"]["sensitivity_s"]
    overhead = two["timings_s"].get("fanout_dispatch_s", 0.0) + \
        two["timings_s"].get("fanout_merge_s", 0.0)
    out |= {
        "layers": len(ref.layers),
        "one_process_seconds": round(reference_s, 2),
        "fanout_seconds_1_worker": round(t1, 2),
        "fanout_seconds_2_workers": round(t2, 2),
        "fanout_efficiency_2": round(t1 / (2 * t2), 3),
        "fanout_table_identical": table_bytes(table_one) == table_bytes(ref)
        and table_bytes(table_two) == table_bytes(ref),
        "fanout_overhead_seconds": round(overhead, 3),
        "fanout_idle_seconds_2_workers": round(two["timings_s"].get("fanout_idle_s", 0.0), 2),
        "timings_1_worker": {k: round(v, 3) for k, v in one["timings_s"].items()},
        "timings_2_workers": {k: round(v, 3) for k, v in two["timings_s"].items()},
    }
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
