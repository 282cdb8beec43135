"""The ILP program built once and re-solved per budget value: a sweep answers every point
exactly as a solve from scratch does (bits, objective, cost, status, diagnosis), a front
builds one program, and the columns fixed before the backend runs are in no assignment
as good as the starting one."""

from __future__ import annotations

import itertools
import random
import time

import numpy as np
import pytest

from allocator._budget import BASE_UNITS, Budget, parse_budgets
from allocator._pareto import pareto_front
from allocator._problem import Problem
from allocator.solvers import IlpSolver, SolverTimeoutError, get_solver
from allocator.solvers import _ilp as ilp_module
from allocator.solvers._feasibility import fitting_choices
from allocator.solvers._ilp_bounds import fixable
from allocator.solvers._ilp_program import IlpProgram, available_backends
from allocator.testing_problems import random_problem
from engine import InvalidSpecError

pytestmark = pytest.mark.skipif(not available_backends(), reason="no ILP backend installed")


def _ilp(**options) -> IlpSolver:
    solver = get_solver("ilp", **options)
    assert isinstance(solver, IlpSolver)
    return solver


def _full_us(problem: Problem) -> float:
    return sum(max((x.latency_us or {}).values()) for x in problem.layers)


def _case(seed: int) -> tuple[Problem, list[Budget], str]:
    """A seeded problem (ties in some), fixed budgets (none, latency, size or bits) and
    the swept axis (bits or latency)."""
    rng = random.Random(seed)
    problem = random_problem(rng.randint(4, 30), seed=seed, ties=rng.randint(0, 3))
    axis = "latency" if seed % 3 == 0 else "bits"
    full_us = _full_us(problem)
    options = {"bits": [[], [f"{rng.uniform(0.4, 1.0) * full_us:.3f}us"],
                        [f"{rng.uniform(0.3, 1.0) * problem.total_params:.0f}B"]],
               "latency": [[], [f"{rng.uniform(2.5, 7.5):.2f}bits"]]}[axis]
    return problem, parse_budgets(rng.choice(options)), axis


def _values(problem: Problem, fixed: list[Budget], axis: str, points: int) -> list[Budget]:
    """The front's budget values (cheapest to dearest), and two below the cheapest."""
    units = problem.units([*fixed, Budget(axis, 1.0, f"1{BASE_UNITS[axis]}")])
    lo = sum(min(u.costs[axis].values()) for u in units)
    hi = sum(max(u.costs[axis].values()) for u in units)
    values = [problem.budget_value(axis, lo + (hi - lo) * i / (points - 1))
              for i in range(points)]
    values += [problem.budget_value(axis, 0.5 * lo), 1e-15]
    return [Budget(axis, v, f"{v:.9g}{BASE_UNITS[axis]}") for v in values]


def _same(a, b) -> None:
    assert (a.bits, a.status, a.objective, a.cost, a.diagnosis) == (
        b.bits, b.status, b.objective, b.cost, b.diagnosis)
    assert a.extra == b.extra and a.solver == b.solver


@pytest.mark.parametrize("seed", range(30))
def test_sweep_points_equal_solves_from_scratch(seed):
    problem, fixed, axis = _case(seed)
    solver = _ilp()
    sweep = solver.sweep(problem, fixed, axis)
    for budget in _values(problem, fixed, axis, 6):
        _same(sweep.solve(budget), solver.solve(problem, [*fixed, budget]))


@pytest.mark.parametrize("seed", range(30, 40))
def test_front_reusing_the_program_equals_the_front_rebuilt_per_point(seed):
    problem, fixed, axis = _case(seed)
    reused = pareto_front(problem, axis, 7, budgets=fixed)
    rebuilt = pareto_front(problem, axis, 7, budgets=fixed, reuse_program=False)
    assert reused.points and reused.to_dict() == rebuilt.to_dict()


def test_a_front_builds_one_program(monkeypatch):
    built = []

    class Counted(IlpProgram):
        def __init__(self, *args, **kwargs):
            built.append(1)
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(ilp_module, "IlpProgram", Counted)
    problem = random_problem(12, seed=5, ties=2)
    front = pareto_front(problem, "bits", 10)
    assert len(built) == 1 and len(front.points) >= 2
    built.clear()
    pareto_front(problem, "bits", 10, reuse_program=False)
    assert len(built) == 10


def test_sweep_answers_a_tiny_budget_infeasible_with_its_smallest_value():
    problem = random_problem(6, seed=2)
    sweep = _ilp().sweep(problem, parse_budgets(["2000us"]), "bits")
    tiny = sweep.solve(Budget("bits", 1e-15, "1e-15bits"))
    assert tiny.status == "infeasible" and tiny.diagnosis["1e-15bits"] == "2bits"
    quiet = sweep.solve(Budget("bits", 1e-15, "1e-15bits"), diagnose_infeasible=False)
    assert quiet.status == "infeasible" and quiet.diagnosis == {}
    assert quiet.bits == tiny.bits
    assert sweep.solve(parse_budgets(["8bits"])[0]).status == "optimal"  # still usable


def test_sweep_checks_its_axis_and_time_limit():
    sweep = _ilp().sweep(random_problem(5, seed=1), [], "bits")
    with pytest.raises(InvalidSpecError, match="along 'bits'"):
        sweep.solve(parse_budgets(["100us"])[0])
    with pytest.raises(InvalidSpecError, match="time_limit_s"):
        sweep.solve(parse_budgets(["4bits"])[0], time_limit_s=0)


def test_sweep_out_of_time_is_marked_or_named():
    problem = random_problem(2000, (2, 3, 4, 5, 6, 7, 8), seed=1)
    full_us = _full_us(problem)
    fixed = parse_budgets([f"{0.8 * full_us:.3f}us"])
    sweep = _ilp().sweep(problem, fixed, "bits")
    budget = parse_budgets(["4.37bits"])[0]
    start = time.perf_counter()
    try:
        sol = sweep.solve(budget, time_limit_s=0.2)
    except SolverTimeoutError as e:
        assert "time_limit_s" in str(e)
    else:
        assert sol.status in ("optimal", "feasible")
        assert sol.status == "optimal" or sol.extra["time_limit_reached"]
        assert all(b.holds(sol.cost[b.cost_key]) for b in [*fixed, budget])
    assert time.perf_counter() - start < 0.2 + 5.0


@pytest.mark.skipif("PULP_CBC_CMD" not in available_backends(), reason="no CBC")
@pytest.mark.filterwarnings("ignore:PULP_CBC_CMD is deprecated:DeprecationWarning")
@pytest.mark.parametrize("seed", range(3))
def test_cbc_sweep_equals_solves_from_scratch(seed):
    problem, fixed, axis = _case(seed)
    solver = _ilp(backend="PULP_CBC_CMD")
    sweep = solver.sweep(problem, fixed, axis)
    for budget in _values(problem, fixed, axis, 3):
        _same(sweep.solve(budget), solver.solve(problem, [*fixed, budget]))


@pytest.mark.parametrize("seed", range(25))
def test_fixed_columns_are_in_no_assignment_as_good_as_the_start(seed):
    """Every assignment within the program's limits and at most the starting objective,
    enumerated, uses only open columns; the bound is below the optimum."""
    rng = random.Random(seed)
    problem = random_problem(rng.randint(3, 6), seed=seed, ties=rng.randint(0, 1))
    texts = [f"{rng.uniform(2.5, 7):.3f}bits"]
    if seed % 2:
        full_us = _full_us(problem)
        texts.append(f"{rng.uniform(0.6, 1.0) * full_us:.3f}us")
    budgets = parse_budgets(texts)
    units = problem.units(budgets)
    rhs = [(b, problem.budget_rhs(b)) for b in budgets]
    program = IlpProgram(units, [b.kind for b in budgets])
    fitted = fitting_choices(units, rhs)
    assert fitted is not None
    cols = program._columns(rhs, fitted)
    start, start_value, bound = program._incumbent(fitted, rhs, cols, time.monotonic() + 60,
                                                   60.0)
    if start is None:
        return
    fixed = fixable(cols, bound, start_value)
    columns = [range(s, e) for s, e in zip(cols.starts[:-1], cols.starts[1:], strict=True)]
    best = np.inf
    for combo in itertools.product(*columns):
        x = np.zeros(len(cols.objective))
        x[list(combo)] = 1.0
        if not (cols.upper @ x == len(combo) and cols.meets(x)):
            continue
        value = float(cols.objective @ x)
        best = min(best, value)
        if value <= start_value:
            assert not (fixed @ x), (combo, value, start_value)
    assert bound.value <= best * (1 + 1e-9) + 1e-15 and best <= start_value * (1 + 1e-12)
