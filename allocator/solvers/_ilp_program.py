"""The allocation as an integer linear program (HAWQ-V3), solved with PuLP: the `ilp`
solver's engine, and the least-cost sub-solves of the infeasibility diagnosis.

One binary per layer (unit) and bit-width, one-hot per unit; each budget is a linear
constraint. Objective and constraints are normalized (coefficients of order 1): with raw Ω
in the 1e-6..1e2 range, backends were measured to stop "Optimal" up to 17% above the optimum.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from allocator._budget import ABS_TOL
from allocator._problem import Unit
from allocator.solvers._feasibility import Rhs, feasible, fitting_choices, uniform_picks
from engine import InvalidSpecError, MissingDependencyError

BACKENDS = ("HiGHS", "PULP_CBC_CMD", "COIN_CMD")
GAP_REL, GAP_ABS = 1e-7, 1e-9
# Smallest objective scale relative to the largest coefficient (see `_solve_scaled`).
MIN_SCALE_RATIO = 1e-12


def pulp_available() -> bool:
    return importlib.util.find_spec("pulp") is not None


def available_backends() -> list[str]:
    if not pulp_available():
        return []
    import pulp

    return [b for b in BACKENDS if b in pulp.listSolvers(onlyAvailable=True)]


@contextlib.contextmanager
def _stdout_silenced() -> Iterator[None]:
    """Backends print banners from C code straight to fd 1; `--json` output must stay one
    JSON document, so fd 1 points at /dev/null while they run."""
    sys.stdout.flush()
    saved = os.dup(1)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 1)
            yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)


def _backend(name: str, time_limit_s: float):
    import pulp

    available = available_backends()
    if name == "auto":
        if not available:
            raise MissingDependencyError(
                "no ILP backend: install the `solvers` extra (highspy) or CBC.")
        name = available[0]
    elif name not in available:
        raise InvalidSpecError(f"ILP `backend` {name!r} is not available here; "
                               f"available: {available or 'none'}.")
    # Gaps far below the default: Ω spans orders of magnitude, and HiGHS' default absolute
    # gap (1e-6 of the scaled objective) let solutions 1e-4 above the optimum through as
    # "optimal". With the objective rescaled to the optimum (solve_ilp), these are relative.
    return name, pulp.getSolver(name, msg=False, timeLimit=time_limit_s, gapRel=GAP_REL,
                                gapAbs=GAP_ABS)


def solve_ilp(units: list[Unit], rhs: Rhs, objective: Sequence[Mapping[int, float]], *,
              time_limit_s: float,
              backend: str = "auto") -> tuple[list[int] | None, str, dict[str, Any]]:
    """Minimizes sum objective[u][b] x[u,b] under the budgets; returns picks, status, facts.

    Choices whose own cost breaks a budget are dropped first (`fitting_choices`): none of
    them is in a feasible answer, and without them every constraint coefficient is at most
    about 1, however small the budget (the backend fails on coefficients of 1e15).
    The objective is divided by a scale close to the optimum, so that the backend's gap and
    feasibility tolerances act on numbers of order 1: the best feasible uniform assignment's
    objective (an upper bound), else the largest coefficient; when the optimum found is
    still far below the scale, the problem is solved once more scaled by that optimum, in
    what is left of `time_limit_s`.
    """
    deadline = time.monotonic() + time_limit_s
    fitting = fitting_choices(units, rhs)
    if fitting is None:  # a unit whose every choice alone breaks a budget (`1e-15bits`)
        return None, "infeasible", {"backend": _backend(backend, time_limit_s)[0]}
    units = fitting
    scale = _uniform_objective(units, rhs, objective)
    if not scale > 0:
        scale = max((abs(v) for o in objective for v in o.values()), default=1.0) or 1.0
    picks, status, facts = _solve_scaled(units, rhs, objective, scale, time_limit_s, backend)
    left_s = deadline - time.monotonic()
    if picks is not None and left_s > 0:
        found = sum(objective[i][b] for i, b in enumerate(picks))
        if 0 < found < 1e-3 * scale:
            again = _solve_scaled(units, rhs, objective, found, left_s, backend)
            if again[0] is not None:
                refound = sum(objective[i][b] for i, b in enumerate(again[0]))
                if refound <= found:
                    picks, status, facts = again
    return picks, status, facts


def _uniform_objective(units: list[Unit], rhs: Rhs,
                       objective: Sequence[Mapping[int, float]]) -> float:
    """Objective of the best feasible uniform assignment (0 if none is feasible)."""
    best = 0.0
    for target in sorted({c for u in units for c in u.choices}):
        picks = uniform_picks(units, target)
        if feasible(units, rhs, picks):
            value = sum(objective[i][c] for i, c in enumerate(picks))
            best = value if best == 0.0 else min(best, value)
    return best


def _solve_scaled(units, rhs, objective, scale, time_limit_s, backend):
    import pulp

    name, solver = _backend(backend, time_limit_s)
    # Objective coefficients at most 1/MIN_SCALE_RATIO: Ω spanning more orders of magnitude
    # than the backend's tolerances ends as rounding, never as an infinite coefficient.
    largest = max((abs(objective[i][b]) for i, u in enumerate(units) for b in u.choices),
                  default=0.0)
    scale = max(scale, largest * MIN_SCALE_RATIO)
    prob = pulp.LpProblem("bit_allocation", pulp.LpMinimize)
    new_var = getattr(prob, "add_variable", None)  # PuLP >= 3.3; LpVariable before
    if new_var is None:
        def new_var(name: str, cat: str):
            return pulp.LpVariable(name, cat=cat)
    x = [{b: new_var(f"x_{i}_{b}", cat="Binary") for b in u.choices}
         for i, u in enumerate(units)]
    prob += pulp.lpSum(objective[i][b] / scale * v for i, xs in enumerate(x)
                       for b, v in xs.items())
    for i, xs in enumerate(x):
        prob += pulp.lpSum(xs.values()) == 1, f"one_{i}"
    for j, (budget, limit) in enumerate(rhs):
        if limit <= 0:
            return None, "infeasible", {"backend": name}
        # Divided by the limit (at least ABS_TOL: a limit of 1e-300 leaves only choices of
        # cost <= ABS_TOL, whose coefficients stay <= ~1).
        norm = max(limit, ABS_TOL)
        prob += (pulp.lpSum(u.costs[budget.kind][b] / norm * x[i][b]
                            for i, u in enumerate(units) for b in u.choices) <= limit / norm,
                 f"budget_{j}")
    with _stdout_silenced():
        prob.solve(solver)
    sol_status = prob.sol_status
    facts = {"backend": name}
    if sol_status == pulp.LpSolutionInfeasible or prob.status == pulp.LpStatusInfeasible:
        return None, "infeasible", facts
    if sol_status not in (pulp.LpSolutionOptimal, pulp.LpSolutionIntegerFeasible):
        return None, "infeasible", facts
    picks = [max(xs, key=lambda b, xs=xs: xs[b].value() or 0.0) for xs in x]
    status = "optimal" if sol_status == pulp.LpSolutionOptimal else "feasible"
    return picks, status, facts
