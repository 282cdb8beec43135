"""The solver contract, the solution type, solver configs and the registry of solvers by
name and by config type."""

from __future__ import annotations

import dataclasses
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, TypeVar

from allocator._budget import Budget
from allocator._problem import Problem, Unit
from allocator.solvers._diagnosis import diagnose
from allocator.solvers._feasibility import Rhs, feasible, least_cost
from allocator.solvers._repair import RepairTimeout
from engine import AllocatorError, BitConfig, InvalidSpecError, Registry, UnknownComponentError


class SolverTimeoutError(AllocatorError, TimeoutError):
    """Raised when a solver found no feasible assignment within its `time_limit_s` (an
    answer found in time is returned instead, "feasible" with `time_limit_reached`)."""

    def __init__(self, solver: str, time_limit_s: float) -> None:
        super().__init__(f"solver {solver!r} found no feasible assignment within "
                         f"`time_limit_s`={time_limit_s:g} s.")
        self.solver, self.time_limit_s = solver, time_limit_s


# What `BaseSolver.solve_units` returns: a choice per unit (None: none found), the status and
# solver-specific facts.
Answer = tuple[list[int] | None, str, dict[str, Any]]


@dataclass(frozen=True)
class Solution:
    """A solver's answer.

    Attributes:
        bits: Layer name -> bits (for an infeasible problem: the least-cost assignment).
        status: "optimal", "feasible" (a solution, optimality not proven) or "infeasible".
        objective: Sum of Ω of the assignment.
        cost: Cost summary (avg_bits, size_bytes, bops, latency_us when known).
        solver: Solver name.
        solve_s: Wall time of the solve, in seconds.
        diagnosis: For infeasible problems: budget text -> the smallest value of that budget
            that can be met (given the others), in the budget's own unit.
        extra: Solver-specific facts (backend, episodes, gap, ...).
    """

    bits: dict[str, int]
    status: str
    objective: float
    cost: dict[str, float]
    solver: str
    solve_s: float
    diagnosis: dict[str, str] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)

    def to_bitconfig(self, problem: Problem, budgets: Sequence[Budget],
                     **kwargs: Any) -> BitConfig:
        extra = dict(self.extra)
        if self.diagnosis:
            extra["infeasible_budgets"] = self.diagnosis
        return BitConfig(bits=self.bits, activation_bits=problem.activation_bits,
                         model=problem.model, solver=self.solver, status=self.status,
                         objective=self.objective, solve_s=self.solve_s,
                         budgets=tuple(b.text for b in budgets),
                         cost=self.cost, extra=extra, **kwargs)


C = TypeVar("C", bound="SolverConfig")


@dataclass(frozen=True)
class SolverConfig:
    """A solver's settings: frozen JSON data, validated on construction; subclasses name
    their solver in `name` and are registered with it (`register_solver`).

    Serialized as `{"type": name, "version": version, "params": {field: value}}`
    (`to_dict`; `config_from_dict` reads it back through the registry).
    """

    name: ClassVar[str]
    version: ClassVar[int] = 1
    #: Fields that must be integers >= 1 (checked on construction).
    positive_ints: ClassVar[tuple[str, ...]] = ()

    def __post_init__(self) -> None:
        for name in self.positive_ints:
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise InvalidSpecError(f"`{name}` must be a positive integer, got {value!r}.")

    def to_dict(self) -> dict[str, Any]:
        return {"type": self.name, "version": self.version, "params": dataclasses.asdict(self)}

    @classmethod
    def option_names(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls)]

    @classmethod
    def from_options(cls: type[C], options: Mapping[str, Any]) -> C:
        """The config from keyword options; an unknown one is an InvalidSpecError naming it
        and listing the valid ones."""
        _check_options(cls.name, options, cls.option_names())
        return cls(**options)


def _check_options(solver: str, options: Mapping[str, Any], valid: Sequence[str]) -> None:
    unknown = sorted(set(options) - set(valid))
    if unknown:
        named = ", ".join(f"`{k}`={options[k]!r}" for k in unknown)
        raise InvalidSpecError(f"solver {solver!r} has no option {named}; its options: "
                               f"{', '.join(valid) or 'none'}.")


class BaseSolver(ABC):
    """Chooses one bit-width per layer that minimizes the summed Ω under the budgets.

    Contract (checked for every registered solver by `tests/solvers/test_contract.py`):
        - one bit-width per layer, from that layer's allowed choices; tied layers share it;
        - every budget holds whenever the status is "optimal" or "feasible";
        - "infeasible" is returned, not raised, when no assignment meets the budgets;
        - the result is the same for the same `seed`;
        - the problem is not modified; `time_limit_s` is honoured (the infeasibility
          diagnosis included): out of time, the best assignment found is "feasible" with
          `extra["time_limit_reached"]`, and none found is a `SolverTimeoutError`, never
          "infeasible" (which claims that no assignment exists).

    Subclasses are built from their config (`register_solver` sets `name` and
    `config_cls`) and say what they need in class flags:

    Attributes:
        exact: Its "optimal" is proven.
        max_budgets: The most budgets it takes (None: any number).
        takes_model: It takes `model=` (the model spec) next to its config, with the
            quantization settings `rounding` and `group_size` among its options; the
            pipeline passes all three.
        needs_model: It solves only with the model (never from a problem's tables alone).
        needs_torch: It imports torch when solving.
        runs_in_api: Neither of the above: it may run in the API process (derived).
    """

    name: ClassVar[str]
    config_cls: ClassVar[type[SolverConfig]]
    exact: ClassVar[bool] = False
    max_budgets: ClassVar[int | None] = None
    takes_model: ClassVar[bool] = False
    needs_model: ClassVar[bool] = False
    needs_torch: ClassVar[bool] = False
    runs_in_api: ClassVar[bool] = True

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls.runs_in_api = not (cls.needs_model or cls.needs_torch)

    def __init__(self, config: SolverConfig | None = None) -> None:
        if config is None:
            config = self.config_cls()
        if not isinstance(config, self.config_cls):
            raise InvalidSpecError(f"solver {self.name!r} takes a {self.config_cls.__name__}, "
                                   f"got {config!r}.")
        self.config = config

    @abstractmethod
    def solve_units(self, units: list[Unit], rhs: Rhs, *, seed: int,
                    time_limit_s: float) -> Answer:
        """Choice per unit (None if none found), status, extra facts."""


    def solve(self, problem: Problem, budgets: Sequence[Budget], *, seed: int = 0,
              time_limit_s: float = 60.0) -> Solution:
        if time_limit_s <= 0:
            raise InvalidSpecError(f"`time_limit_s` must be positive, got {time_limit_s}.")
        units = problem.units(budgets)
        rhs = [(b, problem.budget_rhs(b)) for b in budgets]
        start = time.perf_counter()
        try:
            picks, status, extra = self.solve_units(units, rhs, seed=seed,
                                                    time_limit_s=time_limit_s)
        except RepairTimeout:
            raise SolverTimeoutError(self.name, time_limit_s) from None
        return solution_of(problem, units, budgets, rhs, (picks, status, extra),
                           solver=self.name, start=start, time_limit_s=time_limit_s)


def solution_of(problem: Problem, units: list[Unit], budgets: Sequence[Budget], rhs: Rhs,
                answer: Answer, *, solver: str, start: float, time_limit_s: float,
                diagnose_infeasible: bool = True) -> Solution:
    """A solver's answer as a `Solution`: a wrong or missing answer is "infeasible", with
    the least-cost assignment and (unless `diagnose_infeasible` is False) the smallest
    value of each budget that can be met; bits in the model's layer order.

    Args:
        start: `time.perf_counter()` when the solve began (for `seconds` and the
            diagnosis's share of the time limit).
    """
    picks, status, extra = answer
    diagnosis: dict[str, str] = {}
    if picks is None or not feasible(units, rhs, picks):
        picks = least_cost(units, rhs)
        status = "infeasible"
        if diagnose_infeasible:
            left_s = time_limit_s - (time.perf_counter() - start)
            diagnosis = diagnose(problem, units, budgets, time_limit_s=left_s)
    seconds = time.perf_counter() - start
    bits = {n: b for u, b in zip(units, picks, strict=True) for n in u.names}
    bits = {x.name: bits[x.name] for x in problem.layers}  # model order
    objective, cost = problem.evaluate(bits)
    return Solution(bits, status, objective, cost, solver, seconds, diagnosis, extra)


class ModelSolver(BaseSolver):
    """A solver that works on the model itself (next to the problem's tables): it takes
    the model spec at construction, and imports torch when solving.

    Args:
        config: Its settings.
        model: The model spec (the pipeline passes it; see `takes_model`).
    """

    takes_model = True
    needs_torch = True

    def __init__(self, config: SolverConfig | None = None, *, model: Any = None) -> None:
        super().__init__(config)
        self.model = model


SOLVERS: Registry[type[BaseSolver]] = Registry("solver")
_BY_CONFIG: dict[type[SolverConfig], type[BaseSolver]] = {}

S = TypeVar("S", bound=type[BaseSolver])


def register_solver(config_cls: type[SolverConfig], *, description: str | None = None,
                    available: Callable[[], bool] | None = None,
                    extra: str | None = None) -> Callable[[S], S]:
    """Class decorator: registers a solver under its config's type and name, and sets the
    class's `config_cls` and `name`.

    Args:
        config_cls: The solver's config type (its `name` is the solver's name).
        description: One line for `allocator solvers` and the service's catalog (default:
            the first line of the class docstring, which says it once for both).
        available: Whether its optional dependencies are installed (default: always).
        extra: The package extra that installs them.

    Raises:
        ValueError: The name or the config type already has a solver.
    """
    def decorator(cls: S) -> S:
        if config_cls in _BY_CONFIG:
            raise ValueError(f"config {config_cls.__name__} already has a solver.")
        cls.name, cls.config_cls = config_cls.name, config_cls
        kwargs = {} if available is None else {"available": available}
        summary = description or (cls.__doc__ or "").strip().splitlines()[0].rstrip(".")
        SOLVERS.register(config_cls.name, cls, extra=extra, description=summary, **kwargs)
        _BY_CONFIG[config_cls] = cls
        return cls
    return decorator


def solver_for(config: SolverConfig, *, model: Any = None) -> BaseSolver:
    """The solver registered for `config`'s type, built from it (`model`: the model spec,
    for the solvers that take one).

    Raises:
        UnknownComponentError: No solver is registered for that config type.
        MissingDependencyError: The solver's optional dependency is not installed.
        InvalidSpecError: A `model` for a solver that takes none.
    """
    cls = _BY_CONFIG.get(type(config))
    if cls is None:
        raise UnknownComponentError(
            f"no solver is registered for {type(config).__name__}; registered configs: "
            f"{', '.join(t.__name__ for t in _BY_CONFIG)}.")
    SOLVERS.get(cls.name)  # raises when its optional dependency is missing
    if model is None:
        return cls(config)
    if not cls.takes_model:
        raise InvalidSpecError(f"solver {cls.name!r} takes no `model`.")
    return cls(config, model=model)  # type: ignore[call-arg]


def get_solver(name: str, **options: Any) -> BaseSolver:
    """A solver by registered name, its config built from `options` (plus `model=` for
    the solvers that take one).

    Raises:
        UnknownComponentError: An unknown name (the message lists the registered ones).
        InvalidSpecError: An unknown option (named, with the valid ones) or a bad value.
    """
    cls = SOLVERS.get(name)
    model = options.pop("model", None) if cls.takes_model else None
    valid = cls.config_cls.option_names() + (["model"] if cls.takes_model else [])
    _check_options(name, options, valid)
    return solver_for(cls.config_cls(**options), model=model)


def config_from_dict(data: Mapping[str, Any]) -> SolverConfig:
    """A solver config from its `SolverConfig.to_dict` form, resolved by registered name."""
    if not isinstance(data, Mapping) or set(data) != {"type", "version", "params"}:
        raise InvalidSpecError("a solver config must be an object with `type`, `version` and "
                               f"`params`, got {data!r}.")
    config_cls = SOLVERS.entry(data["type"]).target.config_cls
    if data["version"] != config_cls.version:
        raise InvalidSpecError(f"solver config {data['type']!r}: `version` must be "
                               f"{config_cls.version}, got {data['version']!r}.")
    if not isinstance(data["params"], Mapping):
        raise InvalidSpecError(f"solver config `params` must be an object, got "
                               f"{data['params']!r}.")
    return config_cls.from_options(data["params"])


def solve(problem: Problem, budgets: Sequence[Budget], solver: str = "ilp", *, seed: int = 0,
          time_limit_s: float = 60.0, **options: Any) -> Solution:
    """Solves `problem` under `budgets` with the named solver."""
    return get_solver(solver, **options).solve(problem, budgets, seed=seed,
                                               time_limit_s=time_limit_s)
