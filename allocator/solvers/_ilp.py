"""`ilp`: the exact allocation as an integer linear program (`_ilp_program`), and sweeps of
one budget that build the program once (`IlpSolver.sweep`)."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

from allocator._budget import BASE_UNITS, Budget
from allocator._problem import Problem, Unit
from allocator.solvers._base import (
    Answer,
    BaseSolver,
    Solution,
    SolverConfig,
    SolverTimeoutError,
    register_solver,
    solution_of,
)
from allocator.solvers._feasibility import Rhs
from allocator.solvers._ilp_program import BACKENDS, IlpProgram, available_backends
from engine import InvalidSpecError


@dataclass(frozen=True)
class IlpConfig(SolverConfig):
    """Settings of the `ilp` solver.

    Attributes:
        backend: PuLP solver name (one of `BACKENDS`), or "auto" for the first installed.
    """

    name: ClassVar[str] = "ilp"
    backend: str = "auto"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.backend not in ("auto", *BACKENDS):
            raise InvalidSpecError(f"`backend` must be 'auto' or one of {list(BACKENDS)}, "
                                   f"got {self.backend!r}.")


@register_solver(IlpConfig, available=lambda: bool(available_backends()), extra="solvers")
class IlpSolver(BaseSolver):
    """Exact integer linear program (HiGHS, or CBC through PuLP).

    One-hot bit choices per unit; the optimum under every budget, or a proof there is none.
    Out of time, the backend's best integer solution is "feasible" with
    `time_limit_reached`; none is a `SolverTimeoutError` (not "infeasible": nothing was
    proven)."""

    exact = True
    config: IlpConfig

    def solve_units(self, units: list[Unit], rhs: Rhs, *, seed: int,
                    time_limit_s: float) -> Answer:
        start = time.monotonic()
        program = IlpProgram(units, [b.kind for b, _ in rhs], backend=self.config.backend)
        left_s = time_limit_s - (time.monotonic() - start)
        return self._answer(program, rhs, time_limit_s, max(left_s, 0.0), start)

    def _answer(self, program: IlpProgram, rhs: Rhs, time_limit_s: float, left_s: float,
                start: float) -> tuple[list[int] | None, str, dict[str, Any]]:
        """The program's answer under `rhs` in `left_s` of a solve that started at `start`
        (`time.monotonic()`) with `time_limit_s`."""
        picks: list[int] | None = None
        facts: dict[str, Any] = {"backend": program.backend}
        status = "infeasible"
        if left_s > 0:
            picks, status, facts = program.solve(rhs, time_limit_s=left_s)
        # The backend stops at its time limit with "not solved" (no solution) or an
        # unproven integer solution; both are only told apart from a proof by the clock.
        out_of_time = time.monotonic() - start >= time_limit_s
        if out_of_time and picks is None:
            raise SolverTimeoutError(self.name, time_limit_s)
        if out_of_time and status != "optimal":
            facts = {**facts, "time_limit_reached": True}
        return picks, status, facts

    def sweep(self, problem: Problem, fixed_budgets: Sequence[Budget], axis: str) -> IlpSweep:
        """A sweep of a budget on `axis` with `fixed_budgets` held: the program is built
        once, and `IlpSweep.solve` answers each value of the swept budget exactly as
        `solve(problem, [*fixed_budgets, budget])` would."""
        return IlpSweep(self, problem, fixed_budgets, axis)


class IlpSweep:
    """One ILP program for a problem, its fixed budgets and a swept axis, solved per value
    of the swept budget (`solve`).

    Attributes:
        units: The problem's units under these budget kinds (`Problem.units`).
        program: The program, laid out once.
    """

    def __init__(self, solver: IlpSolver, problem: Problem, fixed_budgets: Sequence[Budget],
                 axis: str) -> None:
        self.solver, self.problem, self.axis = solver, problem, axis
        self.fixed = tuple(fixed_budgets)
        kinds = [*(b.kind for b in self.fixed), axis]
        # Units depend on the budgets' kinds only, never on their values.
        self.units = problem.units([*self.fixed, Budget(axis, 1.0, f"1{BASE_UNITS[axis]}")])
        self.program = IlpProgram(self.units, kinds, backend=solver.config.backend)

    def solve(self, budget: Budget, *, time_limit_s: float = 60.0,
              diagnose_infeasible: bool = True) -> Solution:
        """The solution under the fixed budgets and `budget` (on the swept axis): the same
        as `IlpSolver.solve` gives. `diagnose_infeasible=False` leaves an infeasible
        point's `diagnosis` empty (a front drops those points, and the diagnosis costs one
        more solve per budget)."""
        if budget.kind != self.axis:
            raise InvalidSpecError(f"this sweep is along {self.axis!r}, got a "
                                   f"{budget.kind} budget {budget.text!r}.")
        if time_limit_s <= 0:
            raise InvalidSpecError(f"`time_limit_s` must be positive, got {time_limit_s}.")
        problem, units, budgets = self.problem, self.units, [*self.fixed, budget]
        rhs = [(b, problem.budget_rhs(b)) for b in budgets]
        start = time.perf_counter()
        answer = self.solver._answer(self.program, rhs, time_limit_s, time_limit_s,
                                     time.monotonic())
        return solution_of(problem, units, budgets, rhs, answer, solver=self.solver.name,
                           start=start, time_limit_s=time_limit_s,
                           diagnose_infeasible=diagnose_infeasible)
