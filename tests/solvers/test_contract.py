"""Every registered solver against each line of the BaseSolver contract, and the exact ones
against brute force."""

from __future__ import annotations

import copy
import dataclasses
import time

import pytest

from allocator._budget import parse_budgets
from allocator._problem import Problem
from allocator.solvers import SOLVERS, SolverTimeoutError, get_solver, solve
from allocator.testing_problems import random_problem

FAST_OPTIONS = {"ddpg": {"episodes": 30}}
# Far above what the solves need, so that a loaded machine cannot cut one short (the time
# limit has a test of its own).
LIMIT_S = 300.0
# Solvers that learn on a model (fracbits) are checked on a real model in test_fracbits.py.
NAMES = [n for n in SOLVERS.names(only_available=True) if not SOLVERS.get(n).needs_model]


def _solver(name: str, **options):
    return get_solver(name, **(FAST_OPTIONS.get(name, {}) | options))


def _restricted(problem: Problem) -> Problem:
    """`problem` with layer2 limited to (2, 4, 8) and layer3 fixed at 4 bits."""
    layers = list(problem.layers)
    layers[2] = dataclasses.replace(layers[2], allowed_bits=(2, 4, 8))
    layers[3] = dataclasses.replace(layers[3], fixed_bits=4)
    return dataclasses.replace(problem, layers=tuple(layers))


def _budgets(problem, frac_bits=0.5, with_latency=False):
    lo, hi = min(problem.bits), max(problem.bits)
    texts = [f"{lo + frac_bits * (hi - lo):.3f}bits"]
    if with_latency:
        lat_lo = sum(min(x.latency_us.values()) for x in problem.layers)
        lat_hi = sum(max(x.latency_us.values()) for x in problem.layers)
        texts.append(f"{lat_lo + 0.6 * (lat_hi - lat_lo):.3f}us")
    return parse_budgets(texts)


def _check_assignment(problem: Problem, bits: dict[str, int]) -> None:
    """One bit-width per layer, in model order, from its choices; tied layers share it."""
    assert list(bits) == [x.name for x in problem.layers]
    for layer in problem.layers:
        assert bits[layer.name] in problem.layer_choices(layer), layer.name
    for group in problem.ties:
        assert len({bits[n] for n in group}) == 1, group


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("seed", range(3))
def test_contract_on_a_feasible_problem(name, seed):
    problem = _restricted(random_problem(6, seed=seed, ties=1))
    before = copy.deepcopy(problem)
    cls = SOLVERS.get(name)
    budgets = _budgets(problem, 0.4, with_latency=cls.max_budgets is None)
    sol = _solver(name).solve(problem, budgets, seed=seed, time_limit_s=LIMIT_S)
    assert problem == before  # not modified
    _check_assignment(problem, sol.bits)
    assert sol.bits["layer3"] == 4  # fixed
    assert sol.status == ("optimal" if cls.exact else "feasible")
    assert sol.solver == name and not sol.diagnosis
    for b in budgets:  # every budget holds
        assert b.holds(problem.cost_of(b, sol.cost))
    assert (sol.objective, sol.cost) == problem.evaluate(sol.bits)
    again = _solver(name).solve(problem, budgets, seed=seed, time_limit_s=LIMIT_S)
    assert (again.bits, again.status, again.objective) == (sol.bits, sol.status, sol.objective)


@pytest.mark.parametrize("name", NAMES)
def test_infeasible_is_returned_with_the_least_cost_assignment_and_a_diagnosis(name):
    problem = random_problem(5, seed=1)
    budgets = parse_budgets(["1.5bits"])
    sol = _solver(name).solve(problem, budgets, time_limit_s=LIMIT_S)
    assert sol.status == "infeasible"
    assert sol.bits == {x.name: min(problem.bits) for x in problem.layers}
    assert sol.diagnosis == {"1.5bits": "2bits"}


def _slow_case(name: str) -> tuple[Problem, list, dict]:
    """A problem, budgets and options on which `name` would run well past a second."""
    if name == "brute":  # 5**9 = 1.95 million assignments
        problem = random_problem(9, seed=0, latency=False)
        return problem, _budgets(problem, 0.5), {}
    if name == "dp":  # 20 units x ~150,000 states of budget slack
        problem = random_problem(20, seed=0, latency=False)
        return problem, _budgets(problem, 0.5), {}
    if name == "ddpg":
        problem = random_problem(6, seed=0)
        return problem, _budgets(problem, 0.5, with_latency=True), {"episodes": 10**6}
    problem = random_problem(60, seed=0, ties=5)
    return problem, _budgets(problem, 0.5, with_latency=True), {}


@pytest.mark.parametrize("name", NAMES)
def test_time_limit_is_honoured(name):
    problem, budgets, options = _slow_case(name)
    solver = get_solver(name, **options)
    solver.solve(random_problem(3), parse_budgets(["4bits"]), time_limit_s=0.2)  # imports
    limit_s, slack_s = 0.5, 2.5
    start = time.perf_counter()
    try:
        sol = solver.solve(problem, budgets, time_limit_s=limit_s)
    except SolverTimeoutError as e:  # no answer in time: a named timeout, also in time
        assert time.perf_counter() - start < limit_s + slack_s
        assert "time_limit_s" in str(e)
        return
    assert time.perf_counter() - start < limit_s + slack_s
    _check_assignment(problem, sol.bits)
    if sol.status != "infeasible":
        assert all(b.holds(problem.cost_of(b, sol.cost)) for b in budgets)


@pytest.mark.parametrize("seed", range(150))
def test_ilp_equals_brute_force(seed):
    n = 3 + seed % 5
    problem = random_problem(n, seed=seed, ties=seed % 2)
    budgets = _budgets(problem, 0.2 + 0.6 * ((seed * 37) % 100) / 100, with_latency=seed % 3 == 0)
    ilp = solve(problem, budgets, "ilp")
    brute = solve(problem, budgets, "brute")
    assert ilp.status == brute.status
    if brute.status == "optimal":
        assert ilp.objective == pytest.approx(brute.objective, rel=1e-7, abs=1e-12)


@pytest.mark.parametrize("seed", range(40))
def test_dp_equals_ilp_on_single_budget(seed):
    problem = random_problem(4 + seed % 8, seed=1000 + seed)
    budgets = _budgets(problem, ((seed * 13) % 100) / 100)
    dp = solve(problem, budgets, "dp")
    ilp = solve(problem, budgets, "ilp")
    assert dp.status == ilp.status
    if ilp.status == "optimal":
        assert dp.objective == pytest.approx(ilp.objective, rel=1e-7, abs=1e-12)


@pytest.mark.parametrize("seed", range(10))
def test_greedy_and_uniform_never_beat_ilp(seed):
    problem = random_problem(12, seed=seed)
    budgets = _budgets(problem, 0.45)
    best = solve(problem, budgets, "ilp").objective
    for name in ("greedy", "uniform"):
        assert solve(problem, budgets, name).objective >= best - 1e-12


def test_infeasible_joint_budgets_report_minimal_values():
    problem = random_problem(5, seed=3)
    lat_min = sum(min(x.latency_us.values()) for x in problem.layers)
    budgets = parse_budgets(["2bits", f"{lat_min * 0.5:.3f}us"])
    sol = solve(problem, budgets, "ilp")
    assert sol.status == "infeasible"
    # with 2 bits forced, latency can go no lower than every layer at 2 bits
    at2 = sum(x.latency_us[2] for x in problem.layers)
    assert float(sol.diagnosis[budgets[1].text].removesuffix("us")) == pytest.approx(at2, rel=1e-5)
