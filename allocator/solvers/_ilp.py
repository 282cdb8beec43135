"""`ilp`: the exact allocation as an integer linear program (`_ilp_program`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from allocator._problem import Unit
from allocator.solvers._base import Answer, BaseSolver, SolverConfig, register_solver
from allocator.solvers._feasibility import Rhs
from allocator.solvers._ilp_program import BACKENDS, available_backends, solve_ilp
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
    """Exact integer linear program (PuLP: HiGHS or CBC).

    One-hot bit choices per unit; the optimum under every budget, or a proof there is none."""

    exact = True
    config: IlpConfig

    def solve_units(self, units: list[Unit], rhs: Rhs, *, seed: int,
                    time_limit_s: float) -> Answer:
        return solve_ilp(units, rhs, [u.omega for u in units], time_limit_s=time_limit_s,
                         backend=self.config.backend)
