"""Every registered solver against the BaseSolver contract, and the exact ones against
brute force."""

from __future__ import annotations

import copy

import pytest

from allocator._budget import parse_budgets
from allocator.solvers import SOLVERS, get_solver, solve
from allocator.testing_problems import random_problem

FAST_OPTIONS = {"ddpg": {"episodes": 30}}
# Solvers that learn on a model (fracbits) are checked on a real model in test_fracbits.py.
NAMES = [n for n in SOLVERS.names(only_available=True)
         if not getattr(SOLVERS.get(n), "needs_model", False)]


def _budgets(problem, frac_bits=0.5, with_latency=False):
    lo, hi = min(problem.bits), max(problem.bits)
    texts = [f"{lo + frac_bits * (hi - lo):.3f}bits"]
    if with_latency:
        units = problem.units()
        lat_lo = sum(min(x.latency_us.values()) for x in problem.layers)
        lat_hi = sum(max(x.latency_us.values()) for x in problem.layers)
        texts.append(f"{lat_lo + 0.6 * (lat_hi - lat_lo):.3f}us")
        assert units
    return parse_budgets(texts)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("seed", range(3))
def test_contract(name, seed):
    problem = random_problem(6, seed=seed, ties=1)
    before = copy.deepcopy(problem)
    solver_cls = SOLVERS.get(name)
    budgets = _budgets(problem, 0.4, with_latency=solver_cls.max_budgets is None)
    sol = get_solver(name, **FAST_OPTIONS.get(name, {})).solve(problem, budgets, seed=seed,
                                                               time_limit_s=30)
    assert problem == before
    assert set(sol.bits) == {x.name for x in problem.layers}
    for layer in problem.layers:
        assert sol.bits[layer.name] in problem.layer_choices(layer)
    assert sol.bits["layer0"] == sol.bits["layer1"]  # tied
    assert sol.status in ("optimal", "feasible")
    for b in budgets:
        assert b.holds(sol.cost[b.cost_key])
    again = get_solver(name, **FAST_OPTIONS.get(name, {})).solve(problem, budgets, seed=seed,
                                                                 time_limit_s=30)
    assert again.bits == sol.bits


@pytest.mark.parametrize("name", NAMES)
def test_infeasible_is_returned_with_diagnosis(name):
    problem = random_problem(5, seed=1)
    budgets = parse_budgets(["1.5bits"])
    sol = get_solver(name, **FAST_OPTIONS.get(name, {})).solve(problem, budgets, time_limit_s=30)
    assert sol.status == "infeasible"
    assert sol.diagnosis == {"1.5bits": "2bits"}


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
