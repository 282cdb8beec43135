"""The allocation as an integer linear program (HAWQ-V3): the `ilp` solver's engine, and the
least-cost sub-solves of the infeasibility diagnosis.

One binary per layer (unit) and bit-width, one-hot per unit; each budget is a linear
constraint. `IlpProgram` lays the program out once for a list of units and budget kinds and
solves it under any budget values: a Pareto sweep builds it once and re-solves it per point
with only the budgets' bounds, the columns left open and the objective's scale changed.
Objective and constraints are normalized (coefficients of order 1): with raw Ω in the
1e-6..1e2 range, backends were measured to stop "Optimal" up to 17% above the optimum.

Before the backend runs, a Lagrangian bound and a greedy starting assignment fix most
columns at 0 (`_ilp_bounds`): the backend then proves the optimum on a few dozen open
choices (200 layers x 6 widths: 0.5 s -> 0.05 s per solve, measured on 2 cores).

Backends: "HiGHS" through highspy (the model passed as arrays, in about a millisecond),
CBC through PuLP (variables and one-hot rows built once, the rest per solve).
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import replace
from typing import Any

import numpy as np

from allocator._budget import ABS_TOL, REL_TOL
from allocator._problem import Unit
from allocator.solvers._feasibility import Rhs, feasible, fitting_choices, uniform_picks
from allocator.solvers._ilp_bounds import Bound, Columns, fixable, lagrangian_bound
from allocator.solvers._repair import RepairTimeout, fill, repair
from engine import InvalidSpecError, MissingDependencyError

BACKENDS = ("HiGHS", "PULP_CBC_CMD", "COIN_CMD")
GAP_REL, GAP_ABS = 1e-7, 1e-9
# Smallest objective scale relative to the largest coefficient (see `IlpProgram.solve`).
MIN_SCALE_RATIO = 1e-12
# Per backend: its feasibility tolerance on a normalized row (set for HiGHS, CBC's
# default), and the margin kept below each limit: ten times the tolerance.
_TOLERANCE = {"HiGHS": (1e-9, 1e-8), "PULP_CBC_CMD": (1e-7, 1e-6), "COIN_CMD": (1e-7, 1e-6)}
# Share of a solve's time the starting assignment may take (`IlpProgram._incumbent`).
_INCUMBENT_SHARE = 0.25

# What a solve returns: a choice per unit (None: none found), the status and facts.
IlpAnswer = tuple[list[int] | None, str, dict[str, Any]]


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


def resolve_backend(name: str) -> str:
    """The installed backend `name` names ("auto": the first of `BACKENDS` installed)."""
    available = available_backends()
    if name == "auto":
        if not available:
            raise MissingDependencyError(
                "no ILP backend: install the `solvers` extra (highspy) or CBC.")
        return available[0]
    if name not in available:
        raise InvalidSpecError(f"ILP `backend` {name!r} is not available here; "
                               f"available: {available or 'none'}.")
    return name


class IlpProgram:
    """The ILP of `units` under budgets of `kinds` (one constraint each, in that order),
    laid out once and solved under any budget values (`solve`).

    Columns are the units' choices, unit after unit; per solve only the budget rows'
    bounds and normalization, the columns' upper bounds (choices that cannot be in the
    optimum are fixed at 0) and the objective's scale change. A solve depends only on the
    program and its budget values, never on an earlier solve: a sweep's points are exactly
    the answers of single solves.

    Args:
        units: The problem's units (`Problem.units`), with costs for every kind.
        kinds: The budgets' kinds (`Budget.kind`), one per constraint.
        objective: Per unit, choice -> the value minimized (default: the units' Ω).
        backend: One of `BACKENDS`, or "auto".
    """

    def __init__(self, units: list[Unit], kinds: Sequence[str],
                 objective: Sequence[Mapping[int, float]] | None = None, *,
                 backend: str = "auto") -> None:
        self.backend = resolve_backend(backend)
        self.units, self.kinds = units, tuple(kinds)
        if objective is not None:  # the starting assignment's heuristic minimizes `omega`
            units = [replace(u, omega={b: o[b] for b in u.choices})
                     for u, o in zip(units, objective, strict=True)]
        self._scored = units
        self._starts = np.cumsum([0] + [len(u.choices) for u in units])
        self._objective = np.array([u.omega[b] for u in units for b in u.choices], dtype=float)
        self._costs = [np.array([u.costs[kind][b] for u in units for b in u.choices],
                                dtype=float) for kind in self.kinds]
        self._index = {(i, b): k for k, (i, b) in
                       enumerate((i, b) for i, u in enumerate(units) for b in u.choices)}
        model = _HighsModel if self.backend == "HiGHS" else _PulpModel
        self._model: _HighsModel | _PulpModel = model(self, self.backend)

    @property
    def n_columns(self) -> int:
        return len(self._objective)

    def solve(self, rhs: Rhs, *, time_limit_s: float) -> IlpAnswer:
        """Minimizes the objective under `rhs` (one (budget, limit) per kind, in order);
        returns picks, status and facts.

        Choices whose own cost breaks a budget are fixed at 0 (`fitting_choices`): none
        of them is in a feasible answer, and without them every constraint coefficient is
        at most about 1, however small the budget (a backend fails on coefficients of
        1e15). From a feasible assignment (`_incumbent`) and a Lagrangian bound, the
        choices that cannot be in an assignment as good are fixed at 0 too
        (`_ilp_bounds.fixable`), and the backend starts from that assignment. The
        objective is divided by the assignment's value (else the largest coefficient),
        so that the gap and feasibility tolerances act on numbers of order 1; when the
        optimum found is still far below that scale, the program is solved once more
        scaled by the optimum, in what is left of `time_limit_s`.
        """
        if [b.kind for b, _ in rhs] != list(self.kinds):
            raise ValueError(f"budgets of kinds {[b.kind for b, _ in rhs]} for a program "
                             f"of {list(self.kinds)}.")
        deadline = time.monotonic() + time_limit_s
        facts: dict[str, Any] = {"backend": self.backend}
        fitted = fitting_choices(self._scored, rhs)
        # a unit whose every choice alone breaks a budget (`1e-15bits`), or a limit <= 0
        if fitted is None or any(limit <= 0 for _, limit in rhs):
            return None, "infeasible", facts
        cols = self._columns(rhs, fitted)
        start, start_value, bound = self._incumbent(fitted, rhs, cols, deadline,
                                                    time_limit_s)
        upper = cols.upper
        if start is not None:
            upper = upper - fixable(cols, bound, start_value) * (1 - self._vector(start))
        scale = start_value
        if not scale > 0:
            scale = float(np.max(np.abs(self._objective) * upper, initial=0.0)) or 1.0
        cols = replace(cols, upper=upper)
        picks, status = self._solve_scaled(cols, scale, start, deadline)
        left_s = deadline - time.monotonic()
        if picks is not None and left_s > 0:
            found = self.value(picks)
            if 0 < found < 1e-3 * scale:
                again, again_status = self._solve_scaled(cols, found, picks, deadline)
                if again is not None and self.value(again) <= found:
                    picks, status = again, again_status
        return picks, status, facts

    def _columns(self, rhs: Rhs, fitted: list[Unit]) -> Columns:
        """The columns under `rhs`, the choices `fitted` leaves open.

        Rows are divided by their limit (at least ABS_TOL: a limit of 1e-300 leaves only
        choices of cost <= ABS_TOL, whose coefficients stay <= ~1). Their bound is the
        limit as `within` reads it, so that the optimum is the one under the budgets that
        every solver checks (brute force's too), whichever path found it; less a margin,
        so that what the backend accepts within its tolerance also passes `feasible`."""
        norms = [max(limit, ABS_TOL) for _, limit in rhs]
        tolerance, margin = _TOLERANCE[self.backend]
        limits = [(limit + REL_TOL * abs(limit) + ABS_TOL) / n - margin
                  for (_, limit), n in zip(rhs, norms, strict=True)]
        rows = np.array([c / n for c, n in zip(self._costs, norms, strict=True)])
        return Columns(self._objective, rows.reshape(len(rhs), self.n_columns),
                       np.array(limits), self._starts, self._upper(fitted), tolerance)

    def value(self, picks: Sequence[int]) -> float:
        """The objective of one choice per unit."""
        return sum(u.omega[b] for u, b in zip(self._scored, picks, strict=True))

    def _vector(self, picks: Sequence[int]) -> np.ndarray:
        """One choice per unit as a 0/1 column vector."""
        x = np.zeros(self.n_columns)
        x[[self._index[i, b] for i, b in enumerate(picks)]] = 1.0
        return x

    def _picks(self, x: np.ndarray) -> list[int]:
        """Per unit the choice of its largest column value."""
        return [u.choices[int(np.argmax(x[s:e]))]
                for u, s, e in zip(self.units, self._starts[:-1], self._starts[1:],
                                   strict=True)]

    def _upper(self, fitted: list[Unit]) -> np.ndarray:
        """Column upper bounds: 1 for the choices that fit every budget, else 0."""
        upper = np.zeros(self.n_columns)
        if fitted is self._scored:  # nothing dropped
            upper[:] = 1.0
            return upper
        for i, u in enumerate(fitted):
            for b in u.choices:
                upper[self._index[i, b]] = 1.0
        return upper

    def _incumbent(self, fitted: list[Unit], rhs: Rhs, cols: Columns, deadline: float,
                   time_limit_s: float) -> tuple[list[int] | None, float, Bound]:
        """A feasible assignment to start from, its objective ((None, 0) if none) and a
        Lagrangian bound (`lagrangian_bound`).

        The assignment is the best of: the best uniform width; the Lagrangian assignment
        moved onto the budgets greedily (`repair`); the best Lagrangian assignment that
        met them with what it leaves spent greedily (`fill`); and only if none of these
        is feasible, the greedy repair from the highest bits. Close to the optimum, it
        lets most columns be fixed by their reduced costs before the backend starts."""
        found: list[list[int]] = []
        for target in sorted({c for u in fitted for c in u.choices}):
            picks = uniform_picks(fitted, target)
            if feasible(fitted, rhs, picks):
                found.append(picks)
        # An estimate from above for the subgradient steps: the best so far, else the
        # dearest assignment.
        estimate = (min(map(self.value, found)) if found else
                    float(np.maximum.reduceat(np.where(cols.upper > 0, cols.objective,
                                                       -np.inf), cols.starts[:-1]).sum()))
        bound = lagrangian_bound(cols, estimate)
        limit = min(deadline, time.monotonic() + _INCUMBENT_SHARE * time_limit_s)
        with contextlib.suppress(RepairTimeout):
            if bound.feasible is not None:
                found.append(fill(fitted, rhs, self._picks(bound.feasible), deadline=limit))
            repaired = repair(fitted, rhs, self._picks(bound.relaxed), deadline=limit)
            found = [p for p in found if feasible(fitted, rhs, p)]
            if repaired is None and not found:
                repaired = repair(fitted, rhs, [max(u.choices) for u in fitted],
                                  deadline=limit)
            if repaired is not None:
                found.append(repaired)
        found = [p for p in found if feasible(fitted, rhs, p)]
        if not found:
            return None, 0.0, bound
        best = min(found, key=self.value)
        return best, self.value(best), bound

    def _solve_scaled(self, cols: Columns, scale: float, start: list[int] | None,
                      deadline: float) -> tuple[list[int] | None, str]:
        # Objective coefficients at most 1/MIN_SCALE_RATIO: Ω spanning more orders of
        # magnitude than the backend's tolerances ends as rounding, never as an infinite
        # coefficient.
        largest = float(np.max(np.abs(cols.objective) * cols.upper, initial=0.0))
        scale = max(scale, largest * MIN_SCALE_RATIO)
        initial = None if start is None else self._vector(start)
        time_limit_s = max(deadline - time.monotonic(), 1e-3)
        # Columns fixed at 0 cost nothing and weigh 1 in every row: a huge Ω there would
        # overflow the division, and a choice far over a tiny budget would put a
        # coefficient of 1e15 in its row (backends fail on those).
        objective = np.divide(cols.objective, scale, out=np.zeros(self.n_columns),
                              where=cols.upper > 0)
        rows = np.where(cols.upper > 0, cols.rows, 1.0)
        values, status = self._model.run(replace(cols, objective=objective, rows=rows),
                                         initial, time_limit_s)
        return (None, status) if values is None else (self._picks(values), status)


_HIGHS_OPTIONS: tuple[tuple[str, Any], ...] = (
    ("output_flag", False), ("mip_rel_gap", GAP_REL), ("mip_abs_gap", GAP_ABS),
    ("mip_feasibility_tolerance", _TOLERANCE["HiGHS"][0]),
    ("primal_feasibility_tolerance", _TOLERANCE["HiGHS"][0]))
# On a program the bounds left with at most this many open columns beyond one per unit,
# HiGHS' restarts and sub-MIP heuristics cost more than the search they save (measured:
# a 20-point front of 200 x 6, 1.27 s -> 0.75 s); on larger ones they pay (2000 x 7 under
# two budgets: 2.5 s -> 4.1 s without them).
_SMALL_FREE_COLUMNS = 100
_SMALL_OPTIONS: tuple[tuple[str, Any], ...] = (
    ("mip_allow_restart", False), ("mip_heuristic_run_rins", False),
    ("mip_heuristic_run_rens", False))


class _HighsModel:
    """The program as HiGHS arrays: the sparsity pattern is built once; per solve the
    values are passed to a fresh `highspy.Highs` (about a millisecond), so that no state
    of an earlier solve (basis, cuts, solutions) reaches the next one."""

    def __init__(self, program: IlpProgram, backend: str) -> None:
        n = program.n_columns
        starts = program._starts
        # Row-wise: one one-hot row per unit, then one row per budget over the columns
        # with a nonzero cost there (zeros are left out, as PuLP did).
        self._nonzero = [np.flatnonzero(cost) for cost in program._costs]
        self.n_rows = len(starts) - 1 + len(self._nonzero)
        lengths = [len(nz) for nz in self._nonzero]
        self._a_start = np.concatenate(
            [starts[:-1], n + np.cumsum([0, *lengths[:-1]])] if lengths
            else [starts[:-1]]).astype(np.int32)
        self._a_index = np.concatenate([np.arange(n), *self._nonzero]).astype(np.int32)
        self._ones = np.ones(n)
        self._integrality = np.ones(n, dtype=np.int32)  # kInteger, bounds 0..1: binary
        self._one_hot = np.ones(len(starts) - 1)

    def run(self, cols: Columns, initial: np.ndarray | None,
            time_limit_s: float) -> tuple[np.ndarray | None, str]:
        import highspy

        inf = highspy.kHighsInf
        values = np.concatenate([self._ones, *(row[nz] for row, nz
                                               in zip(cols.rows, self._nonzero, strict=True))])
        row_lower = np.concatenate([self._one_hot, np.full(len(cols.limits), -inf)])
        row_upper = np.concatenate([self._one_hot, cols.limits])
        cost, upper = cols.objective, cols.upper
        n = len(cost)
        with _stdout_silenced():
            h = highspy.Highs()
            small = upper.sum() - len(self._one_hot) <= _SMALL_FREE_COLUMNS
            for option, value in (*_HIGHS_OPTIONS, *(_SMALL_OPTIONS if small else ()),
                                  ("time_limit", time_limit_s)):
                h.setOptionValue(option, value)
            h.passModel(n, self.n_rows, len(values), 2, 1, 0.0, cost, np.zeros(n), upper,
                        row_lower, row_upper, self._a_start, self._a_index, values,
                        self._integrality)
            if initial is not None:
                start = highspy.HighsSolution()
                start.col_value = initial.tolist()
                start.value_valid = True
                h.setSolution(start)
            h.run()
        status = h.getModelStatus()
        if status == highspy.HighsModelStatus.kOptimal:
            return np.array(h.getSolution().col_value), "optimal"
        if status in (highspy.HighsModelStatus.kInfeasible,
                      highspy.HighsModelStatus.kUnboundedOrInfeasible):
            return None, "infeasible"
        # out of time (or stopped otherwise): its best integer solution, if any
        if h.getInfo().primal_solution_status == 2:  # kSolutionStatusFeasible
            return np.array(h.getSolution().col_value), "feasible"
        return None, "infeasible"


class _PulpModel:
    """The program for PuLP's CBC commands: the variables and one-hot rows are built once;
    per solve a problem is assembled from them with the new objective, budget rows and
    upper bounds, and written to the new file the command solves."""

    def __init__(self, program: IlpProgram, backend: str) -> None:
        import pulp

        self._backend = backend
        new_var = getattr(pulp.LpProblem("x", pulp.LpMinimize), "add_variable", None)
        if new_var is None:  # PuLP < 3.3
            def new_var(name: str, cat: str) -> Any:
                return pulp.LpVariable(name, cat=cat)
        self._vars = [new_var(f"x_{i}_{b}", cat="Binary")
                      for i, u in enumerate(program.units) for b in u.choices]
        starts = program._starts
        self._one_hot = [pulp.LpAffineExpression([(v, 1.0) for v in
                                                  self._vars[starts[i]:starts[i + 1]]])
                         for i in range(len(starts) - 1)]
        self._nonzero = [np.flatnonzero(cost) for cost in program._costs]

    def run(self, cols: Columns, initial: np.ndarray | None,
            time_limit_s: float) -> tuple[np.ndarray | None, str]:
        import pulp

        xs = self._vars
        prob = pulp.LpProblem("bit_allocation", pulp.LpMinimize)
        prob.setObjective(pulp.LpAffineExpression(
            list(zip(xs, cols.objective.tolist(), strict=True))))
        for i, expr in enumerate(self._one_hot):
            prob.addConstraint(pulp.LpConstraint(expr, pulp.LpConstraintEQ, f"one_{i}", 1.0))
        for j, (row, limit, nz) in enumerate(zip(cols.rows, cols.limits, self._nonzero,
                                                 strict=True)):
            expr = pulp.LpAffineExpression([(xs[k], float(row[k])) for k in nz])
            prob.addConstraint(pulp.LpConstraint(expr, pulp.LpConstraintLE, f"budget_{j}",
                                                 float(limit)))
        for v, ub in zip(xs, cols.upper.tolist(), strict=True):
            v.upBound = ub
        if initial is not None:  # read by the command only with `warmStart`
            for v, x0 in zip(xs, initial.tolist(), strict=True):
                v.setInitialValue(x0)
        solver = pulp.getSolver(self._backend, msg=False, timeLimit=time_limit_s,
                                gapRel=GAP_REL, gapAbs=GAP_ABS, warmStart=initial is not None)
        with _stdout_silenced():
            prob.solve(solver)
        sol_status = prob.sol_status
        if sol_status == pulp.LpSolutionInfeasible or prob.status == pulp.LpStatusInfeasible:
            return None, "infeasible"
        if sol_status not in (pulp.LpSolutionOptimal, pulp.LpSolutionIntegerFeasible):
            return None, "infeasible"
        values = np.array([v.value() or 0.0 for v in xs])
        return values, "optimal" if sol_status == pulp.LpSolutionOptimal else "feasible"


def solve_ilp(units: list[Unit], rhs: Rhs, objective: Sequence[Mapping[int, float]], *,
              time_limit_s: float, backend: str = "auto") -> IlpAnswer:
    """Minimizes sum objective[u][b] x[u,b] under the budgets once (`IlpProgram.solve`);
    returns picks, status, facts."""
    program = IlpProgram(units, [b.kind for b, _ in rhs], objective, backend=backend)
    return program.solve(rhs, time_limit_s=time_limit_s)
