"""Job-service benchmark: request latency under an open-loop load on loopback (SQLite).

    python -m benchmarks.service [--rate 50] [--duration 20] [--workers 0]

Starts `allocator serve` in a subprocess over a fresh SQLite file, seeds a few jobs, then
sends `--rate` requests per second for `--duration` seconds on a fixed schedule (half
`GET /jobs/{id}`, half `POST /jobs` with a small problem document) as asyncio tasks on
pooled keep-alive connections, so a slow answer does not slow the schedule.
Latency is measured from the scheduled send time (queueing in the client counts). The
last line printed is one JSON object: `get_job_p99_ms`, `post_job_p99_ms`, `errors`, ...
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from allocator.testing_problems import random_problem

REPO = Path(__file__).resolve().parents[1]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    k = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[k]


def _start(port: int, data: Path, workers: int, token: str) -> subprocess.Popen:
    env = {**os.environ, "ALLOCATOR_DATABASE_URL": f"sqlite:///{data / 'jobs.sqlite'}",
           "ALLOCATOR_API_TOKEN": token, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "allocator.cli", "serve", "--port",
                             str(port), "--workers", str(workers)], cwd=REPO, env=env,
                            stdout=subprocess.DEVNULL, stderr=open(data / "serve.log", "wb"),  # noqa: SIM115
                            start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if httpx.get(base + "/health", timeout=1).status_code == 200:
                return proc
        except httpx.HTTPError:
            time.sleep(0.1)
    os.killpg(proc.pid, signal.SIGKILL)
    raise RuntimeError("service did not start: " + (data / "serve.log").read_text()[-2000:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=float, default=50.0, help="requests per second")
    parser.add_argument("--duration", type=float, default=20.0, help="seconds of load")
    parser.add_argument("--workers", type=int, default=0,
                        help="in-process workers running the submitted jobs meanwhile")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    token = "bench-token"
    rng = random.Random(args.seed)
    doc = random_problem(8, seed=args.seed).to_dict()
    data = Path(tempfile.mkdtemp(prefix="allocator-bench-"))
    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    proc = _start(port, data, args.workers, token)
    headers = {"Authorization": f"Bearer {token}"}
    try:
        with httpx.Client(base_url=base, headers=headers, timeout=120) as warm:
            warm.get("/models")  # the service is ready once its model catalog is loaded
            ids = [warm.post("/jobs", json={"problem": doc, "budgets": ["4bits"]}).json()["id"]
                   for _ in range(20)]
        lat: dict[str, list[float]] = {"get": [], "post": []}
        errors: list[str] = []
        n = int(args.rate * args.duration)
        plan = [("get" if i % 2 == 0 else "post", i / args.rate,
                 f"{rng.choice([3, 4, 5])}bits", rng.choice(ids)) for i in range(n)]

        async def one(client: httpx.AsyncClient, kind: str, due: float, budget: str,
                      job_id: str) -> None:
            await asyncio.sleep(max(0.0, due - time.perf_counter()))
            try:
                if kind == "get":
                    r = await client.get(f"/jobs/{job_id}")
                    ok = r.status_code == 200
                else:
                    r = await client.post("/jobs", json={"problem": doc, "budgets": [budget],
                                                         "solver": "greedy"})
                    ok = r.status_code == 202
                lat[kind].append((time.perf_counter() - due) * 1e3)
                if not ok:
                    errors.append(f"{kind} {r.status_code}")
            except httpx.HTTPError as e:
                errors.append(f"{kind} {type(e).__name__}")

        async def load() -> float:
            limits = httpx.Limits(max_connections=64, max_keepalive_connections=64)
            async with httpx.AsyncClient(base_url=base, headers=headers, timeout=10,
                                         limits=limits) as client:
                t0 = time.perf_counter() + 0.5
                await asyncio.gather(*(one(client, kind, t0 + at, budget, job_id)
                                       for kind, at, budget, job_id in plan))
                return t0

        start = asyncio.run(load())
        wall_s = time.perf_counter() - start
        result = {
            "benchmark": "service",
            "database": "sqlite",
            "workers": args.workers,
            "rate_rps": args.rate,
            "duration_s": args.duration,
            "requests": n,
            "achieved_rps": round(n / wall_s, 2),
            "get_job_p50_ms": round(_percentile(lat["get"], 50), 2),
            "get_job_p99_ms": round(_percentile(lat["get"], 99), 2),
            "post_job_p50_ms": round(_percentile(lat["post"], 50), 2),
            "post_job_p99_ms": round(_percentile(lat["post"], 99), 2),
            "errors": len(errors),
            "error_kinds": sorted(set(errors)),
            "goal_met": (_percentile(lat["get"], 99) <= 50 and _percentile(lat["post"], 99) <= 50
                         and not errors),
        }
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
    print(f"GET /jobs/{{id}} p50 {result['get_job_p50_ms']} ms, p99 {result['get_job_p99_ms']} ms;"
          f" POST /jobs p50 {result['post_job_p50_ms']} ms, p99 {result['post_job_p99_ms']} ms;"
          f" {result['errors']} errors")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
