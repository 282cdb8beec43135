"""The estimator contract, and the registry of estimators by name and by config type.

Each estimator is a class built from its frozen config (torchao's configs-are-data split);
`register_estimator` files it under its config's `name` (for `estimate(spec, "hutchinson")`,
the CLI and the service's catalog) and under its config type (for `estimator_for(config)`).
The package's `__init__` registers the built-ins, in the order they are listed.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, fields
from typing import Any, ClassVar, TypeVar, cast

from engine import InvalidSpecError, Registry, UnknownComponentError
from sensitivity._table import LayerSensitivity, SensitivityTable

ProgressFn = Callable[[int], None]
"""Called with the number of work units (see `progress_unit`) just finished."""


class BaseSensitivityEstimator(ABC):
    """Fills Ω (expected loss increase) for every layer of a model x candidate bit-widths.

    Contract (checked for every registered estimator by
    `tests/sensitivity/test_contract.py`):
        - the table has every layer of `spec.layers()`, each with an Ω for every bit-width
          in `bits`, and the table's `bits` are `bits`;
        - no Ω is NaN, infinite or negative (such raw values are clamped and the layer
          flagged, never dropped);
        - the same `seed` gives the same table, all but its `elapsed_s` and `created`;
        - `progress`, when given, is called with counts that sum to at most
          `progress_total(spec, bits)` units of `progress_unit`;
        - the spec and its model are left as they were.

    Subclasses set `config_cls` (a frozen dataclass with a `name` class variable and
    validation in `__post_init__`) and `progress_unit`, and are registered with
    `register_estimator`. An estimator whose every layer's Ω depends on that layer alone
    (and the seed) sets `layer_parallel` and implements `estimate_layers`: the job service
    then computes its layers in chunks on many workers and merges them (`sensitivity._chunks`),
    which must give exactly the table `estimate` gives.

    Args:
        config: The estimator's settings.
    """

    config_cls: ClassVar[type]
    progress_unit: ClassVar[str]
    #: True when `estimate_layers` on any split of the layers merges into exactly the
    #: table `estimate` makes (no probe, batch order or learned state shared by layers).
    layer_parallel: ClassVar[bool] = False

    def __init__(self, config: Any) -> None:
        if not isinstance(config, self.config_cls):
            raise InvalidSpecError(f"`config` of the {self.name} estimator must be a "
                                   f"{self.config_cls.__name__}, got {config!r}.")
        self.config = config

    @property
    def name(self) -> str:
        """The registered name (the config's `name`), also written into the table."""
        return self.config_cls.name

    def config_dict(self) -> dict[str, Any]:
        """The config's fields by name (`asdict`): what a table records as its `config`."""
        return asdict(cast(Any, self.config))

    @abstractmethod
    def estimate(self, spec: Any, bits: Sequence[int], *, seed: int,
                 progress: ProgressFn | None = None) -> SensitivityTable:
        """Ω of every layer of `spec` at every bit-width of `bits` (sorted, validated).

        Args:
            spec: The model: `name`, `build()`, `layers()`, `calibration_batches()` and the
                distillation `loss(model, batch)`.
            bits: Candidate weight bit-widths, ascending.
            seed: Seed of every random choice (probes, batch order).
            progress: Told of finished work, in `progress_unit`s.
        """

    @abstractmethod
    def progress_total(self, spec: Any, bits: Sequence[int]) -> int:
        """Units of work of a full run (an early stop finishes with fewer)."""

    def estimate_layers(self, spec: Any, bits: Sequence[int], names: Sequence[str], *,
                        seed: int, progress: ProgressFn | None = None
                        ) -> dict[str, LayerSensitivity]:
        """Ω of the layers `names` only (a `layer_parallel` estimator's chunk), each exactly
        as `estimate` computes it; the other layers are not touched.

        Raises:
            NotImplementedError: The estimator scores all layers together.
            InvalidSpecError: A name is not one of `spec.layers()`.
        """
        raise NotImplementedError(f"the {self.name} estimator scores all layers together; "
                                  "it has no per-layer estimate.")

    def make_table(self, spec: Any, bits: Sequence[int], seed: int,
                   layers: Mapping[str, LayerSensitivity], elapsed_s: float
                   ) -> SensitivityTable:
        """The table of this estimator's run: `layers` in `spec.layers()` order, with the
        run's provenance (the one place a table's header is written, so a merged table
        equals the one `estimate` makes)."""
        order = [x.name for x in spec.layers()]
        missing = [n for n in order if n not in layers]
        if missing or len(layers) != len(order):
            raise InvalidSpecError(f"`layers` must be exactly the model's {len(order)} layers; "
                                   f"missing {missing[:5]}, got {len(layers)}.")
        return SensitivityTable({n: layers[n] for n in order}, tuple(bits), self.name, seed,
                                spec.name, self.config_dict(), elapsed_s)


ESTIMATORS: Registry[type[BaseSensitivityEstimator]] = Registry("estimator")
_BY_CONFIG: dict[type, type[BaseSensitivityEstimator]] = {}

E = TypeVar("E", bound=type[BaseSensitivityEstimator])


def register_estimator(cls: E, *, description: str,
                       available: Callable[[], bool] | None = None) -> E:
    """Registers an estimator class under its config's name and its config type.

    Args:
        cls: The estimator (a `BaseSensitivityEstimator` subclass with its `config_cls`).
        description: One line for the CLI and the service's catalog.
        available: Whether its optional dependencies are installed (default: always).

    Raises:
        ValueError: The name or the config type already has an estimator.
    """
    if cls.config_cls in _BY_CONFIG:
        raise ValueError(f"config {cls.config_cls.__name__} already has an estimator.")
    kwargs = {} if available is None else {"available": available}
    ESTIMATORS.register(cls.config_cls.name, cls, description=description, **kwargs)
    _BY_CONFIG[cls.config_cls] = cls
    return cls


def estimator_for(config: Any) -> BaseSensitivityEstimator:
    """The estimator a config instance selects (dispatch on its type).

    Raises:
        UnknownComponentError: No estimator is registered for the config's type.
    """
    cls = _BY_CONFIG.get(type(config))
    if cls is None:
        known = ", ".join(c.__name__ for c in _BY_CONFIG)
        raise UnknownComponentError(
            f"no estimator takes a {type(config).__name__}; configs: {known}.")
    ESTIMATORS.get(cls.config_cls.name)  # raises if its dependencies are missing
    return cls(config)


def make_config(estimator: str, options: Mapping[str, Any] | None = None) -> Any:
    """The named estimator's config from option name -> value (validated by the config).

    Raises:
        UnknownComponentError: `estimator` is not registered.
        InvalidSpecError: An option is unknown to the estimator or has a bad value.
    """
    config_cls = ESTIMATORS.get(estimator).config_cls
    options = dict(options or {})
    known = {f.name for f in fields(config_cls)}
    unknown = set(options) - known
    if unknown:
        raise InvalidSpecError(f"estimator {estimator!r} has no option(s) {sorted(unknown)}; "
                               f"options: {sorted(known)}.")
    return config_cls(**options)
