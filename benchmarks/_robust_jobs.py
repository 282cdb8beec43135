"""Kill the service mid-job for `benchmarks.robustness`: jobs are submitted, the whole
process tree gets SIGKILL while some run, the service restarts on the same database, and
every job must end `succeeded` within a timeout. Repeated for a few cycles; a job that
ends otherwise, or never ends, is a lost or stuck job.
"""

from __future__ import annotations

import random
import time

from benchmarks._robust_common import Service, Tally, log, wait_jobs

RUNNING_WAIT_S = 30.0


def _submit(svc: Service, cycle: int, rng: random.Random) -> list[str]:
    from allocator.testing_problems import random_problem

    bodies = [{"model": "digits-mlp", "budgets": ["4bits"], "solver": "ilp", "seed": cycle,
               "measure": cycle % 2 == 0}]
    for k in range(3):
        doc = random_problem(rng.choice([300, 600, 900]), seed=100 * cycle + k).to_dict()
        bodies.append({"problem": doc, "budgets": [f"{rng.choice([3, 4, 5])}bits"],
                       "solver": rng.choice(["ilp", "greedy"]), "seed": k})
    ids = []
    with svc.client(timeout_s=60) as client:
        for body in bodies:
            r = client.post("/jobs", json=body)
            if r.status_code != 202:
                raise RuntimeError(f"POST /jobs answered {r.status_code}: {r.text[:300]}")
            ids.append(r.json()["id"])
    return ids


def _wait_running(svc: Service, ids: list[str]) -> str:
    deadline = time.monotonic() + RUNNING_WAIT_S
    with svc.client() as client:
        while time.monotonic() < deadline:
            states = [client.get(f"/jobs/{i}").json() for i in ids]
            running = [s for s in states if s["status"] == "running"]
            if running:
                return f"{len(running)} running ({running[0]['stage']})"
            time.sleep(0.2)
    return "none running yet"


def run_kill_cycles(svc: Service, tally: Tally, rng: random.Random, *, cycles: int,
                    timeout_s: float) -> dict[str, float]:
    """`cycles` rounds of submit, wait until a job runs, SIGKILL, restart; then waits for
    every job. Returns timings for the summary."""
    all_ids: list[str] = []
    t0 = time.monotonic()
    for cycle in range(cycles):
        ids = _submit(svc, cycle, rng)
        all_ids += ids
        tally.add("jobs_submitted_for_kills", len(ids))
        state = _wait_running(svc, ids)
        time.sleep(rng.uniform(0.3, 2.0))
        svc.kill()
        tally.add("kill_cycles")
        log(f"  cycle {cycle + 1}/{cycles}: killed with {state}; restarting")
        svc.start()
    with svc.client() as client:
        states = wait_jobs(client, all_ids, timeout_s)
    for job_id in all_ids:
        last = states.get(job_id, {})
        if last.get("status") != "succeeded":
            tally.fail("lost_or_stuck_jobs", "kill -9 / restart", f"job {job_id}",
                       f"status {last.get('status')!r} after {timeout_s:.0f} s, stage "
                       f"{last.get('stage')!r}, error {str(last.get('error'))[:160]!r}")
    return {"kill_cycles_s": round(time.monotonic() - t0, 1)}
