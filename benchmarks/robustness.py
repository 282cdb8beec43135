"""Robustness benchmark: bad inputs over HTTP and on the command line, corrupt caches,
stated limits, and SIGKILL of the service mid-job.

    python -m benchmarks.robustness [--quick] [--seed 0]

Starts `allocator serve` (SQLite, in-process workers, a temporary data dir, an API token)
on a free loopback port, checks its stated limits, then sends it generated bad inputs on
every route (multipart uploads, re-solves, budget validation, auth variants; surrogates,
deep nesting, overflowing and non-finite numbers, wrong types, non-ASCII digits, duplicate
layer names, oversize bodies) and reads back every job it accepted. Runs every CLI command
with bad flags, files and environment as subprocesses, a few at a time. Corrupts a cached
sensitivity table in many seeded ways and reruns the estimate each time. Kills a second
service with SIGKILL while jobs run, restarts it, and waits for every job. Where Redis
answers at 127.0.0.1:6379, takes the broker away from a Celery-mode service while jobs are
posted and kills its Celery worker mid-job (`broker`; skipped with a note otherwise).

Each failing case is printed on stdout as one line, `FAIL [counter] where | input | what
happened`; progress goes to stderr. The last line is one JSON object: `bad_inputs_tried`,
`server_errors`, `cli_tracebacks`, `wrong_answers_from_corrupt_cache`,
`lost_or_stuck_jobs`, `limit_overruns` (the goal: all zero but the first), with the detail
counters beside them. Generation is seeded (`--seed`); about 7 minutes on 2 busy cores,
`--quick` about 2; `--only cli,cache` runs some parts.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path

import engine
from benchmarks._robust_broker import run_broker_cycles
from benchmarks._robust_cache import run_cache_corruptions
from benchmarks._robust_cli import run_cli_cases
from benchmarks._robust_common import Service, Tally, log, wait_jobs
from benchmarks._robust_http import HttpFuzz
from benchmarks._robust_jobs import run_kill_cycles
from benchmarks._robust_limits import Limits

GOALS = ("server_errors", "cli_tracebacks", "wrong_answers_from_corrupt_cache",
         "lost_or_stuck_jobs", "limit_overruns")
CPU_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8")
SECTIONS = ("limits", "http", "cli", "cache", "kills", "broker")
FRONT_POINTS = 2  # the jobs' fronts: fewer solves, so the job time bound stays short
JOB_TIME_LIMIT_S = 10.0


def _reference_jobs(svc: Service) -> tuple[str, str]:
    """A model job that never ran (cancelled at once: no result, no cached problem) and a
    problem job that has succeeded, for the job routes' state checks."""
    from allocator.testing_problems import random_problem

    with svc.client() as client:
        done = client.post("/jobs", json={"problem": random_problem(6, seed=11).to_dict(),
                                          "budgets": ["4bits"], "solver": "greedy"}).json()["id"]
        state = wait_jobs(client, [done], 120)[done]
        if state.get("status") != "succeeded":
            raise RuntimeError(f"reference job did not succeed: {state}")
        never = client.post("/jobs", json={"model": "digits-cnn", "budgets": ["4bits"],
                                           "measure": True, "seed": 99}).json()["id"]
        client.post(f"/jobs/{never}/cancel")
    return never, done


def _http_section(svc: Service, tally: Tally, rng: random.Random, quick: bool) -> None:
    unfinished, done = _reference_jobs(svc)
    fuzz = HttpFuzz(svc, tally, rng)
    cases = fuzz.cases(unfinished, done)
    if quick:
        cases = rng.sample(cases, min(len(cases), 220))
    log(f"HTTP: {len(cases)} bad requests...")
    t0 = time.monotonic()
    fuzz.run(cases)
    fuzz.follow_up(timeout_s=60 if quick else 150)
    log(f"  HTTP done in {time.monotonic() - t0:.0f} s")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer cases (about 2 minutes)")
    parser.add_argument("--seed", type=int, default=0, help="seed of every generated case")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder")
    parser.add_argument("--only", default=",".join(SECTIONS),
                        help=f"comma-separated parts to run (default all: {','.join(SECTIONS)})")
    args = parser.parse_args()

    start = time.monotonic()
    rng = random.Random(args.seed)
    tally = Tally()
    root = Path(tempfile.mkdtemp(prefix="allocator-robustness-"))
    timings: dict[str, float] = {}
    extra: dict[str, object] = {}
    flags = sorted(engine.cpu_flags() & set(CPU_FLAGS))
    log(f"CPU: {engine.cpu_model()}; flags {flags}; root {root}")
    service_env = {"ALLOCATOR_WORKERS": "2", "ALLOCATOR_FRONT_POINTS": str(FRONT_POINTS),
                   "ALLOCATOR_JOB_TIME_LIMIT_S": str(JOB_TIME_LIMIT_S),
                   "ALLOCATOR_HEARTBEAT_INTERVAL_S": "1", "ALLOCATOR_HEARTBEAT_TIMEOUT_S": "6",
                   "ALLOCATOR_MAX_ATTEMPTS": "5"}
    a = Service(root / "service-a", env=service_env)
    (root / "service-a").mkdir()

    only = {part.strip() for part in args.only.split(",") if part.strip()}
    if only - set(SECTIONS):
        parser.error(f"--only: unknown parts {sorted(only - set(SECTIONS))}")

    def section(name: str, run: Callable[[], object]) -> None:
        """Runs one part; a crash of the benchmark itself is reported, and the rest runs."""
        if name not in only:
            return
        t0 = time.monotonic()
        try:
            run()
        except Exception as e:  # noqa: BLE001  (one broken part must not hide the others)
            traceback.print_exc(file=sys.stderr)
            tally.fail("benchmark_errors", name, "-", f"{type(e).__name__}: {e}")
        timings[f"{name}_s"] = time.monotonic() - t0

    def limits() -> None:
        log("limits...")
        a.start()
        extra["limits"] = Limits(a, tally, front_points=FRONT_POINTS).run(quick=args.quick)

    def http() -> None:
        if not a.alive():
            a.start()
        _http_section(a, tally, rng, args.quick)
        if not a.alive():
            tally.fail("server_errors", "allocator serve", "after the HTTP cases",
                       f"the service died: {a.log_tail(300)}")
        a.stop()

    def cli() -> None:
        log("CLI...")
        run_cli_cases(root / "cli", tally, rng, per_command=8 if args.quick else 60,
                      parallel=3)

    def cache() -> None:
        n_corruptions = 40 if args.quick else 220
        log(f"cache: {n_corruptions} corruptions...")
        run_cache_corruptions(root / "cache-data", tally, rng, n=n_corruptions)

    def kills() -> None:
        log("kill -9 cycles...")
        b = Service(root / "service-b", env=service_env)
        (root / "service-b").mkdir()
        b.start()
        try:
            run_kill_cycles(b, tally, rng, cycles=1 if args.quick else 3,
                            timeout_s=150 if args.quick else 240)
        finally:
            b.stop()

    def broker() -> None:
        log("broker outages and Celery worker kills...")
        note = run_broker_cycles(root, tally, rng, env=service_env,
                                 cycles=2 if args.quick else 3)
        if "skipped" in note:
            extra["skipped"] = {"broker": note["skipped"]}

    try:
        section("limits", limits)
        section("http", http)
        section("cli", cli)
        section("cache", cache)
        section("kills", kills)
        section("broker", broker)
    finally:
        a.stop()
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)

    for failure in tally.failures:
        print(failure.line())
    by_counter: dict[str, int] = {}
    for failure in tally.failures:
        by_counter[failure.counter] = by_counter.get(failure.counter, 0) + 1
    summary = {
        "benchmark": "robustness",
        "quick": args.quick,
        "seed": args.seed,
        **tally.counts,
        "goals_met": all(tally.counts.get(k, 0) == 0 for k in GOALS)
        and tally.counts["bad_inputs_tried"] >= (500 if only == set(SECTIONS) and not args.quick
                                                 else 0),
        "failures_by_counter": by_counter,
        "timings_s": {k: round(v, 1) for k, v in timings.items()},
        "total_s": round(time.monotonic() - start, 1),
        "limits": extra.get("limits", {}),
        **({"skipped": extra["skipped"]} if "skipped" in extra else {}),
        "cpu": engine.cpu_model(),
        "cpu_flags": flags,
        "python": sys.version.split()[0],
    }
    print(json.dumps(summary, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
