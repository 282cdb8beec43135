"""Solvers under their time limits: the heap greedy is fast and chooses exactly what a scan
of every move would; out of time a solver returns its best feasible answer marked
`time_limit_reached` or raises `SolverTimeoutError`, never a false "infeasible"."""

from __future__ import annotations

import dataclasses
import math
import random
import time

import pytest

from allocator._budget import REL_TOL, parse_budgets
from allocator._problem import Problem, ProblemLayer, Unit
from allocator.solvers import SOLVERS, get_solver
from allocator.solvers._base import SolverTimeoutError
from allocator.solvers._feasibility import Rhs, feasible
from allocator.solvers._repair import RepairTimeout, fill, lower_until_feasible, repair
from allocator.testing_problems import random_problem

SEVEN_BITS = (2, 3, 4, 5, 6, 7, 8)


# -- the reference: one full scan of every unit's move per step ------------------------------


def _scan(units: list[Unit], rhs: Rhs, picks: list[int], *, up: bool, score) -> tuple | None:
    best, best_score = None, math.inf
    for i, u in enumerate(units):
        options = [c for c in u.choices if (c > picks[i] if up else c < picks[i])]
        if not options:
            continue
        nxt = min(options) if up else max(options)
        d = [(u.costs[b.kind][nxt] - u.costs[b.kind][picks[i]]) / max(lim, 1e-12)
             for b, lim in rhs]
        value = score(u, picks[i], nxt, d)
        if value is not None and value < best_score:
            best, best_score = (i, nxt, d), value
    return best


def _totals(units: list[Unit], rhs: Rhs, picks: list[int]) -> list[float]:
    return [sum(u.costs[b.kind][c] for u, c in zip(units, picks, strict=True)) / max(lim, 1e-12)
            for b, lim in rhs]


def _lower_by_scan(units: list[Unit], rhs: Rhs, picks: list[int]) -> list[int] | None:
    picks, totals = list(picks), _totals(units, rhs, picks)

    def score(u, old, new, d):
        saved = -sum(di for di, t in zip(d, totals, strict=True) if t > 1 + REL_TOL)
        return (u.omega[new] - u.omega[old]) / saved if saved > 0 else None

    while any(t > 1 + REL_TOL for t in totals):
        move = _scan(units, rhs, picks, up=False, score=score)
        if move is None:
            return None
        i, nxt, d = move
        picks[i] = nxt
        totals = [t + di for t, di in zip(totals, d, strict=True)]
    return picks


def _fill_by_scan(units: list[Unit], rhs: Rhs, picks: list[int]) -> list[int]:
    picks, totals = list(picks), _totals(units, rhs, picks)

    def score(u, old, new, d):
        gain = u.omega[old] - u.omega[new]
        if gain <= 0 or any(t + di > 1 + REL_TOL for t, di in zip(totals, d, strict=True)):
            return None
        return -gain / max(sum(d), 1e-12)

    while (move := _scan(units, rhs, picks, up=True, score=score)):
        i, nxt, d = move
        picks[i] = nxt
        totals = [t + di for t, di in zip(totals, d, strict=True)]
    return picks


def _odd_latency_problem(n: int, seed: int) -> Problem:
    """Latency that falls with bits for some layers (dequantized widths are slower), so a
    move can raise one budget's total while lowering another's."""
    rng = random.Random(seed)
    base = random_problem(n, seed=seed)
    layers = [dataclasses.replace(x, latency_us={b: rng.uniform(5, 50) for b in base.bits})
              for x in base.layers]
    return dataclasses.replace(base, layers=tuple(layers))


def _case(seed: int) -> tuple[list[Unit], Rhs, random.Random]:
    rng = random.Random(seed)
    n = rng.randint(1, 30)
    problem = (_odd_latency_problem(n, seed) if seed % 2
               else random_problem(n, seed=seed, ties=rng.randint(0, 3)))
    texts = [f"{rng.uniform(2, 8):.2f}bits"]
    if rng.random() < 0.6:
        full = sum(max(x.latency_us.values()) for x in problem.layers)
        texts.append(f"{rng.uniform(0.3, 1.1) * full:.3f}us")
    budgets = parse_budgets(texts)
    return problem.units(budgets), [(b, problem.budget_rhs(b)) for b in budgets], rng


@pytest.mark.parametrize("seed", range(120))
def test_heap_moves_equal_a_full_scan(seed):
    units, rhs, rng = _case(seed)
    top = [max(u.choices) for u in units]
    assert lower_until_feasible(units, rhs, top) == _lower_by_scan(units, rhs, top)
    start = [rng.choice(u.choices) for u in units]
    lowered = _lower_by_scan(units, rhs, start)
    expected = None
    if lowered is not None:
        filled = _fill_by_scan(units, rhs, lowered)
        expected = filled if feasible(units, rhs, filled) else None
    assert repair(units, rhs, start) == expected
    low = [min(u.choices) for u in units]
    if feasible(units, rhs, low):
        assert fill(units, rhs, low) == _fill_by_scan(units, rhs, low)


def test_greedy_2000_layers_by_7_bits_is_fast():
    """It took 96.8 s as a scan of every move per step; the limit of a synchronous solve
    is 10 s."""
    problem = random_problem(2000, SEVEN_BITS, seed=0)
    budgets = parse_budgets(["4.5bits"])
    start = time.perf_counter()
    sol = get_solver("greedy").solve(problem, budgets, time_limit_s=10.0)
    assert time.perf_counter() - start < 10.0
    assert sol.status == "feasible" and sol.cost["avg_bits"] <= 4.5 + 1e-9


def test_greedy_out_of_time_is_a_named_timeout():
    problem = random_problem(2000, SEVEN_BITS, seed=0)
    units = problem.units(parse_budgets(["3bits"]))
    rhs = [(b, problem.budget_rhs(b)) for b in parse_budgets(["3bits"])]
    with pytest.raises(RepairTimeout):
        lower_until_feasible(units, rhs, [max(u.choices) for u in units],
                             deadline=time.monotonic() - 1)
    with pytest.raises(SolverTimeoutError, match="time_limit_s"):
        get_solver("greedy").solve(problem, parse_budgets(["3bits"]), time_limit_s=1e-9)


def test_fill_out_of_time_keeps_a_feasible_answer():
    problem = random_problem(300, SEVEN_BITS, seed=3)
    budgets = parse_budgets(["4bits"])
    units = problem.units(budgets)
    rhs = [(b, problem.budget_rhs(b)) for b in budgets]
    low = [min(u.choices) for u in units]
    stopped = fill(units, rhs, low, deadline=time.monotonic() - 1)
    assert feasible(units, rhs, stopped)


def test_exact_solvers_out_of_time():
    # brute: the first assignment (all lowest) meets the budget, so it has an answer
    problem = random_problem(9, seed=0, latency=False)
    sol = get_solver("brute").solve(problem, parse_budgets(["5bits"]), time_limit_s=0.2)
    assert sol.status == "feasible" and sol.extra["time_limit_reached"]
    assert sol.cost["avg_bits"] <= 5 + 1e-9
    # no answer yet: brute before it has seen every assignment of an infeasible problem,
    # dp before its last unit; "infeasible" would claim what was not proven
    with pytest.raises(SolverTimeoutError, match="'brute'"):
        get_solver("brute").solve(problem, parse_budgets(["1.5bits"]), time_limit_s=1e-6)
    big = random_problem(20, seed=0, latency=False)
    with pytest.raises(SolverTimeoutError, match="'dp'"):
        get_solver("dp").solve(big, parse_budgets(["5bits"]), time_limit_s=1e-3)


def test_ilp_out_of_time_is_marked_or_named():
    problem = random_problem(2000, SEVEN_BITS, seed=1)
    full = sum(max(x.latency_us.values()) for x in problem.layers)
    budgets = parse_budgets(["4.37bits", f"{0.8 * full:.3f}us"])
    start = time.perf_counter()
    try:
        sol = get_solver("ilp").solve(problem, budgets, time_limit_s=0.5)
    except SolverTimeoutError as e:
        assert "time_limit_s" in str(e)
    else:
        assert sol.status in ("optimal", "feasible")
        if sol.status == "feasible":
            assert sol.extra["time_limit_reached"]
        assert all(b.holds(problem.cost_of(b, sol.cost)) for b in budgets)
    assert time.perf_counter() - start < 0.5 + 5.0  # building the program is not free


def test_uniform_out_of_time():
    problem = random_problem(50, seed=0)
    with pytest.raises(SolverTimeoutError):
        get_solver("uniform").solve(problem, parse_budgets(["4bits"]), time_limit_s=1e-9)


@pytest.mark.skipif("ddpg" not in SOLVERS.names(only_available=True), reason="no rl extra")
def test_ddpg_out_of_time_returns_a_feasible_answer_marked():
    problem = random_problem(30, seed=0)
    budgets = parse_budgets(["4bits"])
    solver = get_solver("ddpg", episodes=10**6, report_gap=False)
    start = time.perf_counter()
    sol = solver.solve(problem, budgets, time_limit_s=1.0)
    assert time.perf_counter() - start < 1.0 + 10.0  # imports and one last episode
    assert sol.status == "feasible" and sol.extra["time_limit_reached"]
    assert sol.cost["avg_bits"] <= 4 + 1e-9


@pytest.mark.slow
def test_greedy_problem_job_of_4000_layers_within_the_job_limit():
    """The job: greedy solve, then the front along bits (8 ILP solves), within 60 s."""
    from allocator._job import JobLimits, run_problem_job

    doc = random_problem(4000, SEVEN_BITS, seed=0).to_dict()
    start = time.perf_counter()
    result = run_problem_job(doc, ["4.5bits"], solver="greedy", seed=0, bits=None,
                             limits=JobLimits(60.0, 8, 5_000_000),
                             on_stage=lambda stage, fraction: None)
    assert time.perf_counter() - start < 60.0
    assert result.report.config.status == "feasible"


def test_odd_latency_problems_have_latency_falling_with_bits():
    """The reference cases above include moves that lower one total and raise another."""
    problem = _odd_latency_problem(30, seed=1)
    assert isinstance(problem.layers[0], ProblemLayer)
    assert any(x.latency_us[8] < x.latency_us[2] for x in problem.layers)
