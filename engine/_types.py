"""Core value types shared by every package: `LayerSpec` and `BitConfig`.

Both are frozen and round-trip through JSON (`to_dict` / `from_dict`); `BitConfigDocument`
is the pydantic model of the `allocator.bitconfig/1` file, which `BitConfig.from_dict`
validates through.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING, Any, Literal, get_args

from pydantic import AliasChoices, ConfigDict, Field, StrictBool

from engine._errors import InvalidSpecError, UnsupportedBitWidthError
from engine._formats import (
    Document,
    JsonFormat,
    JsonNumber,
    NonEmptyStr,
    dataclass_default,
    integer,
    json_number,
)

MIN_BITS = 2
MAX_BITS = 8
# The candidate weight bit-widths every front door offers when the caller names none.
DEFAULT_BITS: tuple[int, ...] = (2, 3, 4, 5, 6, 8)
# Each closed set of values is a `Literal` (what the documents' fields are typed with) and,
# read from it, the tuple that the checks and messages use.
GroupSize = Literal[32, 64, 128, 256]
SUPPORTED_GROUP_SIZES: tuple[int, ...] = get_args(GroupSize)
BitConfigFormat = Literal["allocator.bitconfig/1"]
BITCONFIG_FORMAT: str = get_args(BitConfigFormat)[0]
LayerKind = Literal["linear", "conv2d"]
LAYER_KINDS: tuple[str, ...] = get_args(LayerKind)
Status = Literal["optimal", "feasible", "infeasible"]
STATUSES: tuple[str, ...] = get_args(Status)
Rounding = Literal["rtn", "gptq"]
ROUNDINGS: tuple[str, ...] = get_args(Rounding)
CalibrationInputs = Literal["fp32", "sequential"]
CALIBRATION_INPUTS: tuple[str, ...] = get_args(CalibrationInputs)
ActivationGrid = Literal["row", "tensor"]
ACTIVATION_GRIDS: tuple[str, ...] = get_args(ActivationGrid)


def check_bits(bits: Any, *, where: str = "bits") -> int:
    """Returns `bits` as int, or raises `UnsupportedBitWidthError` naming `where`."""
    if isinstance(bits, bool) or not isinstance(bits, int | float) or int(bits) != bits:
        raise UnsupportedBitWidthError(f"`{where}` must be an integer, got {bits!r}.")
    if not MIN_BITS <= int(bits) <= MAX_BITS:
        raise UnsupportedBitWidthError(
            f"`{where}` must be between {MIN_BITS} and {MAX_BITS}, got {bits!r}."
        )
    return int(bits)


@dataclass(frozen=True)
class LayerSpec:
    """One quantizable layer, as discovered by a traced forward pass.

    Attributes:
        name: Fully qualified module name from `named_modules()`; the layer's identity
            everywhere (sensitivity tables, latency tables, bit configs, storage).
        kind: `"linear"` or `"conv2d"`.
        weight_shape: Shape of the weight tensor.
        params: Number of weight elements (the bias stays in float and is not counted).
        macs: Multiply-accumulates of the layer for the traced input, summed over its calls.
        input_shape: Shape of the layer's input in the traced forward (first call).
        output_shape: Shape of the layer's output in the traced forward (first call).
        groups: Convolution groups (1 for linear); `groups == in_channels` is depthwise.
        stride, padding, dilation: Convolution geometry ((1, 1), (0, 0), (1, 1) for linear).
        calls: How many times the module ran in the traced forward.
    """

    name: str
    kind: str
    weight_shape: tuple[int, ...]
    params: int
    macs: int
    input_shape: tuple[int, ...] = ()
    output_shape: tuple[int, ...] = ()
    groups: int = 1
    stride: tuple[int, int] = (1, 1)
    padding: tuple[int, int] = (0, 0)
    dilation: tuple[int, int] = (1, 1)
    calls: int = 1

    def __post_init__(self) -> None:
        if not self.name:
            raise InvalidSpecError("`name` of a layer must be a non-empty string.")
        if self.kind not in LAYER_KINDS:
            raise InvalidSpecError(f"`kind` must be one of {LAYER_KINDS}, got {self.kind!r}.")
        if self.params < 0 or self.macs < 0:
            raise InvalidSpecError(
                f"`params` and `macs` of layer {self.name!r} must be >= 0, "
                f"got {self.params} and {self.macs}."
            )

    @property
    def out_features(self) -> int:
        return self.weight_shape[0]

    @property
    def in_features(self) -> int:
        """Reduction length K of the layer's matmul (in_channels/groups * kh * kw for convs)."""
        return math.prod(self.weight_shape[1:])

    @property
    def is_depthwise(self) -> bool:
        return self.kind == "conv2d" and self.groups > 1 and self.weight_shape[1] == 1

    @property
    def shape_signature(self) -> str:
        """Key that identifies the layer's compute shape independently of its name."""
        geo = ""
        if self.kind == "conv2d":
            geo = f"/g{self.groups}/s{self.stride[0]}x{self.stride[1]}"
            geo += f"/p{self.padding[0]}x{self.padding[1]}/d{self.dilation[0]}x{self.dilation[1]}"
        w = "x".join(map(str, self.weight_shape))
        x = "x".join(map(str, self.input_shape))
        return f"{self.kind}/w{w}/in{x}{geo}"

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            out[f.name] = list(value) if isinstance(value, tuple) else value
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> LayerSpec:
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise InvalidSpecError(f"unknown LayerSpec field(s): {sorted(unknown)}.")
        try:
            kwargs: dict[str, Any] = {
                k: tuple(int(x) for x in v) if isinstance(v, list) else v for k, v in data.items()
            }
            return cls(**kwargs)
        except TypeError as e:
            raise InvalidSpecError(f"invalid LayerSpec {dict(data)!r}: {e}") from e


@dataclass(frozen=True)
class BitConfig(JsonFormat):
    """Per-layer weight bit-widths: the solver's output and `engine.apply`'s input.

    Serialized as `allocator.bitconfig/1` JSON. Layers that are not listed stay in float.

    Attributes:
        bits: Layer name -> weight bits (2..8).
        activation_bits: 8: 8-bit layers run W8A8 integer kernels, which quantize their
            inputs to 8 bits (per row for linears, per tensor for convs); None: activations
            stay float (weight-only; 8-bit layers then run dequant). Also used for BOPs.
        group_size: Group size of the per-group scales for layers below 8 bits (32, 64,
            128 or 256); None means one scale per output channel. 8-bit layers follow
            `group_size_8bit` instead.
        symmetric: Symmetric (no zero point) scales. 8-bit layers of W8A8 configs are
            always symmetric (the native format of the int8 kernels); in weight-only configs
            they follow this flag too, since they run dequant either way.
        group_size_8bit: Group size of 8-bit layers' scales (32, 64, 128 or 256); None (the
            default) means one scale per output channel. Set by export targets whose 8-bit
            format is block-wise (GGUF Q8_0: blocks of 32); weight-only configs only.
        symmetric_8bit: Symmetry of 8-bit layers, overriding the rule under `symmetric`;
            None (the default) keeps that rule. Set by export targets whose 8-bit format has
            no zero point (GGUF Q8_0); cannot be False in W8A8 configs.
        rounding: How integers are chosen: `"rtn"` (round to nearest) or `"gptq"` (error
            feedback through the layer's input Hessian; needs calibration data).
        bias_correction: Whether the mean output shift of the rounding error is removed.
        clip_search: Whether scales come from an MSE clipping search rather than min/max.
        calibration_inputs: Where calibrated rounding takes each layer's inputs from:
            `"fp32"` (the float model) or `"sequential"` (the model with every earlier layer
            already quantized).
        smoothing_alpha: SmoothQuant migration strength for 8-bit linears when calibration
            data is given (input channel j is divided by max|x_j|^a / max|w_j|^(1-a) and
            the weight column multiplied by it); None disables it.
        activation_grid: How W8A8 linears round their inputs to 8 bits: `"row"` (each row
            on its own grid, the engine's default) or `"tensor"` (one asymmetric uint8 grid
            per call over the whole input, as ONNX Runtime's `DynamicQuantizeMatMul`
            computes it; the `onnx` target's, where that op is its fastest int8 GEMM).
        model: Name of the model the config was made for, if known.
        solver: Name of the solver that produced it, if any.
        status: `"optimal"`, `"feasible"` or `"infeasible"`, if it came from a solver.
        objective: Solver objective (predicted loss increase), if any.
        solve_s: Wall time of the solve in seconds, if any (read from `solve_seconds` in
            files written before it was renamed).
        budgets: Budget texts the solve was asked to meet.
        cost: Cost summary (`avg_bits`, `size_bytes`, `bops`, `latency_us`, ...).
        extra: Free-form JSON-safe record (measurements, reproducibility data).
    """

    document_name = "bit config"
    json_indent = 2

    bits: Mapping[str, int]
    activation_bits: int | None = 8
    group_size: int | None = 128
    symmetric: bool = False
    group_size_8bit: int | None = None
    symmetric_8bit: bool | None = None
    rounding: str = "rtn"
    bias_correction: bool = False
    clip_search: bool = False
    calibration_inputs: str = "fp32"
    smoothing_alpha: float | None = 0.5
    activation_grid: str = "row"
    model: str | None = None
    solver: str | None = None
    status: str | None = None
    objective: float | None = None
    solve_s: float | None = None
    budgets: tuple[str, ...] = ()
    cost: Mapping[str, float] = field(default_factory=dict)
    extra: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.bits, Mapping):
            raise InvalidSpecError(f"`bits` must map layer names to ints, got {self.bits!r}.")
        checked = {}
        for name, b in self.bits.items():
            if not isinstance(name, str) or not name:
                raise InvalidSpecError(f"`bits` keys must be layer names, got {name!r}.")
            checked[name] = check_bits(b, where=f"bits[{name!r}]")
        object.__setattr__(self, "bits", dict(checked))
        if self.activation_bits is not None:
            check_bits(self.activation_bits, where="activation_bits")
        if self.group_size is not None and self.group_size not in SUPPORTED_GROUP_SIZES:
            raise InvalidSpecError(
                f"`group_size` must be one of {SUPPORTED_GROUP_SIZES} or null, "
                f"got {self.group_size!r}."
            )
        self._check_8bit_scheme()
        if self.rounding not in ROUNDINGS:
            raise InvalidSpecError(
                f"`rounding` must be one of {ROUNDINGS}, got {self.rounding!r}.")
        if self.calibration_inputs not in CALIBRATION_INPUTS:
            raise InvalidSpecError(f"`calibration_inputs` must be one of {CALIBRATION_INPUTS}, "
                                   f"got {self.calibration_inputs!r}.")
        if self.smoothing_alpha is not None and not 0.0 <= self.smoothing_alpha <= 1.0:
            raise InvalidSpecError(
                f"`smoothing_alpha` must be in [0, 1] or null, got {self.smoothing_alpha!r}.")
        if self.activation_grid not in ACTIVATION_GRIDS:
            raise InvalidSpecError(f"`activation_grid` must be one of {ACTIVATION_GRIDS}, "
                                   f"got {self.activation_grid!r}.")
        if self.status is not None and self.status not in STATUSES:
            raise InvalidSpecError(f"`status` must be one of {STATUSES}, got {self.status!r}.")
        object.__setattr__(self, "budgets", tuple(self.budgets))
        object.__setattr__(self, "cost", dict(self.cost))
        object.__setattr__(self, "extra", dict(self.extra))

    def _check_8bit_scheme(self) -> None:
        """The 8-bit overrides: a supported group size, and none that W8A8 kernels (per
        channel, symmetric) cannot run."""
        size = self.group_size_8bit
        if size is not None and size not in SUPPORTED_GROUP_SIZES:
            raise InvalidSpecError(
                f"`group_size_8bit` must be one of {SUPPORTED_GROUP_SIZES} or null, "
                f"got {self.group_size_8bit!r}.")
        if self.symmetric_8bit is not None and not isinstance(self.symmetric_8bit, bool):
            raise InvalidSpecError(
                f"`symmetric_8bit` must be true, false or null, got {self.symmetric_8bit!r}.")
        if self.activation_bits == 8 and self.group_size_8bit is not None:
            raise InvalidSpecError(
                f"`group_size_8bit` {self.group_size_8bit} needs weight-only 8-bit layers "
                "(`activation_bits` null): W8A8 kernels take one scale per output channel.")
        if self.activation_bits == 8 and self.symmetric_8bit is False:
            raise InvalidSpecError(
                "`symmetric_8bit` false needs weight-only 8-bit layers (`activation_bits` "
                "null): W8A8 kernels take symmetric weights.")

    @classmethod
    def calibrated(cls, bits: Mapping[str, int], **kwargs: Any) -> BitConfig:
        """A config with the calibrated rounding the product uses where data exists:
        GPTQ with bias correction and the clipping search."""
        settings: dict[str, Any] = {"rounding": "gptq", "bias_correction": True,
                                    "clip_search": True}
        return cls(bits=bits, **(settings | kwargs))

    @classmethod
    def with_rounding(cls, bits: Mapping[str, int], rounding: str, **kwargs: Any) -> BitConfig:
        """A config whose rounding is named in one word, as the CLI and the API take it:
        "gptq" is the calibrated rounding (`calibrated`), "rtn" plain round-to-nearest
        (no bias correction, no clipping search)."""
        if rounding == "gptq":
            return cls.calibrated(bits, **kwargs)
        return cls(bits=bits, rounding=rounding, **kwargs)

    @classmethod
    def uniform(cls, layers: list[LayerSpec] | list[str], bits: int, **kwargs: Any) -> BitConfig:
        """Every layer at the same bit-width."""
        names = [x.name if isinstance(x, LayerSpec) else x for x in layers]
        return cls(bits={n: bits for n in names}, **kwargs)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"format": BITCONFIG_FORMAT}
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, tuple):
                value = list(value)
            elif isinstance(value, Mapping):
                value = dict(value)
            out[f.name] = value
        return out

    @classmethod
    def from_document(cls, doc: BitConfigDocument) -> BitConfig:
        """The config of a validated document."""
        kwargs: dict[str, Any] = {f.name: getattr(doc, f.name) for f in fields(cls)}
        kwargs["budgets"] = tuple(doc.budgets or ())
        return cls(**kwargs)


if TYPE_CHECKING:  # the helpers build `Annotated` types at run time, which mypy cannot follow
    _BitWidth = int
    _Fraction = float
else:
    _BitWidth = integer(minimum=MIN_BITS, maximum=MAX_BITS)
    """A weight or activation bit-width, 2..8, as documents carry it."""
    _Fraction = json_number(minimum=0.0, maximum=1.0)


def _default(name: str) -> Any:
    return dataclass_default(BitConfig, name)


class BitConfigDocument(Document):
    """The `allocator.bitconfig/1` JSON document: what `BitConfig.to_dict` writes.

    Every field but `format` and `bits` is optional; see `BitConfig` for what each means.
    """

    model_config = ConfigDict(json_schema_extra={"examples": [{
        "format": BITCONFIG_FORMAT, "bits": {"layer1.0.conv1": 4, "fc": 8},
        "budgets": ["4.5bits"], "solver": "ilp", "status": "optimal", "objective": 0.0123,
        "cost": {"avg_bits": 4.4, "size_bytes": 6155000.0, "bops": 1.2e10,
                 "latency_us": 812.0}}]})

    format: BitConfigFormat = Field(description="Always `allocator.bitconfig/1`.")
    bits: dict[NonEmptyStr, _BitWidth] = Field(
        description="Layer name (FQN) -> weight bits; layers not listed stay in float.")
    activation_bits: _BitWidth | None = Field(
        _default("activation_bits"),
        description="8: 8-bit layers run W8A8 integer kernels; null: weight-only.")
    group_size: GroupSize | None = Field(
        _default("group_size"),
        description="Group size of the scales below 8 bits; null: one per output channel.")
    symmetric: StrictBool = Field(_default("symmetric"),
                                  description="Symmetric scales (no zero point).")
    group_size_8bit: GroupSize | None = Field(
        _default("group_size_8bit"),
        description="Group size of 8-bit layers' scales; null: one per output channel.")
    symmetric_8bit: StrictBool | None = Field(
        _default("symmetric_8bit"),
        description="Symmetry of 8-bit layers; null: `symmetric`, and always in W8A8.")
    rounding: Rounding = Field(_default("rounding"),
                                description="How weights are rounded to integers.")
    bias_correction: StrictBool = Field(_default("bias_correction"),
                                        description="Remove the mean output shift of rounding.")
    clip_search: StrictBool = Field(_default("clip_search"),
                                    description="Scales from an MSE clipping search.")
    calibration_inputs: CalibrationInputs = Field(
        _default("calibration_inputs"),
        description="Layer inputs of calibrated rounding: the float model or the model "
                    "quantized so far.")
    smoothing_alpha: _Fraction | None = Field(
        _default("smoothing_alpha"),
        description="SmoothQuant migration strength for 8-bit linears, 0..1; null: off.")
    activation_grid: ActivationGrid = Field(
        _default("activation_grid"),
        description="How W8A8 linears round their inputs: `row` (a grid per row) or "
                    "`tensor` (one uint8 grid per call, ONNX Runtime's dynamic int8).")
    model: str | None = Field(_default("model"), description="Model the config was made for.")
    solver: str | None = Field(_default("solver"), description="Solver that produced it.")
    status: Status | None = Field(_default("status"),
                               description="Solver status, if any.")
    objective: JsonNumber | None = Field(
        _default("objective"), description="Solver objective (predicted loss increase).")
    solve_s: JsonNumber | None = Field(
        _default("solve_s"), validation_alias=AliasChoices("solve_s", "solve_seconds"),
        description="Wall time of the solve, in seconds (`solve_seconds` in older files).")
    budgets: list[str] | None = Field(default_factory=list,
                                      description="Budget texts the solve had to meet.")
    cost: dict[str, JsonNumber] = Field(
        default_factory=dict,
        description="Cost summary: `avg_bits`, `size_bytes`, `bops`, `latency_us`, ...")
    extra: dict[str, Any] = Field(default_factory=dict,
                                  description="Free-form record (measurements, seeds).")


BitConfig.document_model = BitConfigDocument
