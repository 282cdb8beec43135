"""`ilp`: the exact allocation as an integer linear program (`_ilp_program`)."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import ClassVar

from allocator._problem import Unit
from allocator.solvers._base import (
    Answer,
    BaseSolver,
    SolverConfig,
    SolverTimeoutError,
    register_solver,
)
from allocator.solvers._feasibility import Rhs
from allocator.solvers._ilp_program import BACKENDS, available_backends, solve_ilp
from engine import InvalidSpecError

# Building the program in PuLP is not counted by the backend's time limit; measured on a
# loaded 2-core machine: about 30 us per binary per build, and a solve may build twice.
_BUILD_S_PER_VARIABLE = 60e-6


def _backend_limit_s(units: list[Unit], time_limit_s: float) -> float:
    """The backend's share of `time_limit_s`: what is left after building the program
    (estimated), never less than 70% of it."""
    build_s = _BUILD_S_PER_VARIABLE * sum(len(u.choices) for u in units)
    return time_limit_s - min(build_s, 0.3 * time_limit_s)


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
    """Exact integer linear program (PuLP: HiGHS or CBC).

    One-hot bit choices per unit; the optimum under every budget, or a proof there is none.
    Out of time, the backend's best integer solution is "feasible" with
    `time_limit_reached`; none is a `SolverTimeoutError` (not "infeasible": nothing was
    proven)."""

    exact = True
    config: IlpConfig

    def solve_units(self, units: list[Unit], rhs: Rhs, *, seed: int,
                    time_limit_s: float) -> Answer:
        start = time.monotonic()
        picks, status, facts = solve_ilp(units, rhs, [u.omega for u in units],
                                         time_limit_s=_backend_limit_s(units, time_limit_s),
                                         backend=self.config.backend)
        # The backend stops at its time limit with "not solved" (no solution) or an
        # unproven integer solution; both are only told apart from a proof by the clock.
        out_of_time = time.monotonic() - start >= time_limit_s
        if out_of_time and picks is None:
            raise SolverTimeoutError(self.name, time_limit_s)
        if out_of_time and status != "optimal":
            facts = {**facts, "time_limit_reached": True}
        return picks, status, facts
