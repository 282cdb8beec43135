"""Stated limits for `benchmarks.robustness`: a request at a limit must finish within it
(plus a grace for this machine), one past it must be refused, and while a large solve
runs the service must keep answering (`/health` within a second).

The limits come from the service's own `GET /settings`; each check counts in
`limit_checks`, each miss in `limit_overruns`.
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx

from benchmarks._robust_common import Service, Tally, log, short, wait_jobs

GRACE_S = 5.0  # process start-up, a loaded 2-core machine
HEALTH_LIMIT_S = 1.0
HEALTH_GRACE_S = 0.5
REFUSAL_LIMIT_S = 5.0  # a refusal on size or shape should not take longer than this
ALL_BITS = (2, 3, 4, 5, 6, 7, 8)


def _problem(n_layers: int, *, seed: int = 0, bits: tuple[int, ...] = ALL_BITS) -> dict:
    from allocator.testing_problems import random_problem

    return random_problem(n_layers, bits, seed=seed).to_dict()


class HealthProbe:
    """Polls `/health` (and optionally submits a small job) in a thread while a big
    request runs; keeps the slowest answer."""

    def __init__(self, svc: Service, job_body: dict | None = None):
        self.svc = svc
        self.job_body = job_body
        self.worst_s = 0.0
        self.job_s: float | None = None
        self.errors: list[str] = []
        self._stop = threading.Event()

    @contextlib.contextmanager
    def running(self) -> Iterator[HealthProbe]:
        """Polls in a thread for the duration of the `with` block."""
        thread = threading.Thread(target=self._run, daemon=True)
        thread.start()
        try:
            yield self
        finally:
            self._stop.set()
            thread.join(timeout=30)

    def _run(self) -> None:
        with httpx.Client(base_url=self.svc.base, headers=self.svc.headers,
                          timeout=30) as client:
            time.sleep(0.3)
            if self.job_body is not None:
                t0 = time.perf_counter()
                try:
                    r = client.post("/jobs", content=json.dumps(self.job_body),
                                    headers={"Content-Type": "application/json"})
                    self.job_s = time.perf_counter() - t0
                    if r.status_code != 202:
                        self.errors.append(f"POST /jobs {r.status_code}")
                except httpx.HTTPError as e:
                    self.job_s = time.perf_counter() - t0
                    self.errors.append(f"POST /jobs {type(e).__name__}")
            while not self._stop.is_set():
                t0 = time.perf_counter()
                try:
                    client.get("/health")
                except httpx.HTTPError as e:
                    self.errors.append(f"/health {type(e).__name__}")
                self.worst_s = max(self.worst_s, time.perf_counter() - t0)
                self._stop.wait(0.25)


class Limits:
    """The checks, against one running service."""

    def __init__(self, svc: Service, tally: Tally, *, front_points: int):
        self.svc = svc
        self.front_points = front_points
        self.tally = tally
        self.results: dict[str, Any] = {}
        with svc.client() as client:
            self.settings = client.get("/settings").json()
        self.limits = self.settings["limits"]

    def _timed(self, method: str, path: str, body: Any = None, *, timeout_s: float,
               **kwargs: Any) -> tuple[httpx.Response | str, float]:
        if body is not None:
            kwargs["content"] = json.dumps(body).encode()
            kwargs["headers"] = {"Content-Type": "application/json"} | kwargs.get("headers", {})
        t0 = time.perf_counter()
        try:
            with self.svc.client(timeout_s=timeout_s) as client:
                r = client.request(method, path, **kwargs)
            return r, time.perf_counter() - t0
        except httpx.HTTPError as e:
            return f"no answer within {timeout_s:.0f} s ({type(e).__name__})", \
                time.perf_counter() - t0

    def check(self, name: str, where: str, sent: str, ok: bool, happened: str) -> None:
        self.tally.add("limit_checks")
        self.results[name] = happened
        if not ok:
            self.tally.fail("limit_overruns", where, sent, happened)
        else:
            log(f"  ok   {name}: {happened}")

    def at_limit(self, name: str, where: str, path: str, body: Any, limit_s: float,
                 sent: str, probe_job: dict | None = None) -> httpx.Response | None:
        """A request at a limit: answered (2xx, or a 4xx naming the limit) within
        `limit_s` + grace, and `/health` answering within a second meanwhile."""
        with HealthProbe(self.svc, probe_job).running() as probe:
            answer, took = self._timed("POST", path, body, timeout_s=limit_s + 60)
        bound = limit_s + GRACE_S
        if isinstance(answer, str):
            self.check(name, where, sent, False, answer)
            return None
        good = answer.status_code < 500 and took <= bound
        self.check(name, where, sent, good,
                   f"HTTP {answer.status_code} in {took:.1f} s (limit {limit_s:.0f} s + "
                   f"{GRACE_S:.0f} s grace): {short(answer.text, 100)}")
        self.check(f"{name}: /health meanwhile", "GET /health", f"during {sent}",
                   probe.worst_s <= HEALTH_LIMIT_S + HEALTH_GRACE_S and not probe.errors,
                   f"slowest /health {probe.worst_s:.2f} s; errors {probe.errors[:3]}")
        if probe_job is not None:
            job_s = -1.0 if probe.job_s is None else probe.job_s
            self.check(f"{name}: POST /jobs meanwhile", "POST /jobs", f"during {sent}",
                       0 <= job_s <= 2.0 + HEALTH_GRACE_S,
                       f"POST /jobs answered in {job_s:.2f} s (-1: no answer)")
        return answer

    def over_limit(self, name: str, where: str, method: str, path: str, body: Any, sent: str,
                   *, expect: Callable[[int], bool] = lambda s: 400 <= s < 500,
                   limit_s: float = REFUSAL_LIMIT_S, **kwargs: Any) -> None:
        """A request past a limit: refused (4xx) within `limit_s` + grace."""
        answer, took = self._timed(method, path, body, timeout_s=limit_s + 60, **kwargs)
        if isinstance(answer, str):
            self.check(name, where, sent, False, answer)
            return
        self.check(name, where, sent,
                   expect(answer.status_code) and took <= limit_s + GRACE_S,
                   f"HTTP {answer.status_code} in {took:.1f} s: {short(answer.text, 120)}")

    # -- the checks ----------------------------------------------------------------------

    def run(self, *, quick: bool) -> dict[str, Any]:
        lim = self.limits
        n_sync, sync_s = lim["sync_max_layers"], lim["sync_time_limit_s"]
        job_s = lim["job_time_limit_s"]
        log(f"  limits: {lim}")
        small_job = {"problem": _problem(4, seed=7), "budgets": ["4bits"], "solver": "greedy"}
        big = _problem(n_sync, seed=1)
        self.at_limit("solve greedy at max layers", "POST /solve", "/solve",
                      {"problem": big, "budgets": ["4bits"], "solver": "greedy"}, sync_s,
                      f"{n_sync} layers x 7 bits, greedy", probe_job=small_job)
        if not quick:
            self.at_limit("solve ilp at max layers", "POST /solve", "/solve",
                          {"problem": big, "budgets": ["4bits"], "solver": "ilp"}, sync_s,
                          f"{n_sync} layers x 7 bits, ilp")
        over = _problem(n_sync + 1, seed=2)
        self.over_limit("solve past max layers", "POST /solve", "POST", "/solve",
                        {"problem": over, "budgets": ["4bits"]}, f"{n_sync + 1} layers")
        self.over_limit("budgets past max", "POST /solve", "POST", "/solve",
                        {"problem": _problem(4), "budgets": ["4bits", "1MB", "1GBOPs", "2ms",
                                                             "5bits"][: lim["max_budgets"] + 1]},
                        f"{lim['max_budgets'] + 1} budgets")
        self.over_limit("page size past max", "GET /jobs", "GET", "/jobs", None,
                        f"limit={lim['max_page_size'] + 1}",
                        params={"limit": lim["max_page_size"] + 1})
        self.over_limit("page size at max", "GET /jobs", "GET", "/jobs", None,
                        f"limit={lim['max_page_size']}", expect=lambda s: s == 200,
                        params={"limit": lim["max_page_size"]})
        upload = lim["max_upload_bytes"]
        self.over_limit("body past max upload", "POST /jobs", "POST", "/jobs", None,
                        f"{upload + 1} byte body", expect=lambda s: s == 413, limit_s=10,
                        content=b" " * (upload + 1),
                        headers={"Content-Type": "application/json"})
        self.over_limit("upload past max", "POST /jobs/upload", "POST", "/jobs/upload", None,
                        f"{upload + 1} byte file", expect=lambda s: s == 413, limit_s=10,
                        files={"file": ("p.json", b" " * (upload + 1), "application/json")},
                        data={"budgets": "4bits"})
        self._validation_cost(n_layers=20_000)
        self._job_limits(job_s, n_sync, quick=quick)
        return self.results

    def _validation_cost(self, n_layers: int) -> None:
        """Duplicate names and a huge tie group: refused or accepted in linear time, three
        at once too."""
        same = _problem(n_layers, seed=3, bits=(2, 4, 8))
        for layer in same["layers"]:
            layer["name"] = "same"
        body = {"problem": same, "budgets": ["4bits"], "solver": "greedy"}
        self.over_limit("20000 layers named alike", "POST /jobs", "POST", "/jobs", body,
                        f"{n_layers} layers all named 'same'")
        results: list[tuple[httpx.Response | str, float]] = []

        def one() -> None:
            results.append(self._timed("POST", "/jobs", body, timeout_s=REFUSAL_LIMIT_S + 60))

        threads = [threading.Thread(target=one) for _ in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        worst = max(took for _, took in results)
        codes = [a.status_code if not isinstance(a, str) else a for a, _ in results]
        self.check("3 x 20000 layers named alike at once", "POST /jobs",
                   "3 concurrent requests", all(isinstance(c, int) and 400 <= c < 500
                                                for c in codes)
                   and worst <= 2 * REFUSAL_LIMIT_S + GRACE_S,
                   f"answers {codes}, slowest {worst:.1f} s")
        tied = _problem(n_layers, seed=4, bits=(2, 4, 8))
        tied["ties"] = [[layer["name"] for layer in tied["layers"]]]
        answer, took = self._timed("POST", "/jobs", {"problem": tied, "budgets": ["4bits"],
                                                     "solver": "greedy"},
                                   timeout_s=REFUSAL_LIMIT_S + 60)
        code = answer if isinstance(answer, str) else answer.status_code
        self.check("tie group of 20000 layers", "POST /jobs", f"{n_layers} layers in one tie",
                   isinstance(code, int) and code < 500 and took <= REFUSAL_LIMIT_S + GRACE_S,
                   f"HTTP {code} in {took:.1f} s")

    def _job_limits(self, job_s: float, n_sync: int, *, quick: bool) -> None:
        """A problem job with twice the synchronous layer limit, greedy: it must end within
        the job's solver limit for each of its solves (the answer and the front's points)
        plus grace; one past the job layer limit is refused; a re-solve of the big job's
        problem is held to the synchronous limit."""
        n_job = 2500 if quick else 2 * n_sync
        front = self.front_points
        bound = job_s * (1 + front) + GRACE_S
        body = {"problem": _problem(n_job, seed=5), "budgets": ["4bits"], "solver": "greedy"}
        answer, _ = self._timed("POST", "/jobs", body, timeout_s=60)
        if isinstance(answer, str) or answer.status_code != 202:
            code = answer if isinstance(answer, str) else answer.status_code
            self.check("problem job, greedy, large", "POST /jobs", f"{n_job} layers", False,
                       f"not accepted: {code}")
            return
        job_id = answer.json()["id"]
        t0 = time.monotonic()
        with self.svc.client() as client:
            state = wait_jobs(client, [job_id], bound + 60)[job_id]
        took = time.monotonic() - t0
        self.results["large_problem_job_s"] = round(took, 1)
        self.check("problem job, greedy, large", "POST /jobs", f"{n_job} layers greedy",
                   state.get("status") in ("succeeded", "failed") and took <= bound,
                   f"{state.get('status')} after {took:.1f} s (bound {bound:.0f} s = job limit "
                   f"{job_s:.0f} s x {1 + front} solves + grace); error "
                   f"{short(state.get('error'), 80)}")
        if state.get("status") == "succeeded" and n_job > n_sync:
            self.over_limit("re-solve past sync max layers", "POST /jobs/{id}/solve", "POST",
                            f"/jobs/{job_id}/solve", {"budgets": ["4bits"], "solver": "greedy"},
                            f"re-solve of a {n_job}-layer job")
        if not quick:
            self.over_limit("problem job past max layers", "POST /jobs", "POST", "/jobs",
                            {"problem": _problem(10 * n_sync + 1, seed=6, bits=(2, 4, 8)),
                             "budgets": ["4bits"], "solver": "greedy"},
                            f"{10 * n_sync + 1} layers")
