"""Deployment targets: which bit-widths each format holds, the engine settings that make
the engine quantize exactly as the format stores, and the true bytes of a layer in it.

A target is looked up by name (`get_target`): `engine` (this product's own packed form),
`onnx` (ONNX Runtime: 4-bit `MatMulNBits`, 8-bit `DequantizeLinear`), `compressed-tensors`
(vLLM / SGLang checkpoints: `pack-quantized` int32 words, `int-quantized` for W8A8) and
`gguf` (llama.cpp: Q4_0/Q4_1, Q5_0/Q5_1, Q8_0 blocks of 32 with fp16 scales). Byte costs
count what the file stores for a layer's weight: codes, scales, zero points and their
bookkeeping (the bias stays float in every format and is not counted, as in the engine).

The solve uses `target_costs` (candidate widths, per-layer per-width bytes, layers the
format cannot hold) and `target_settings` (the BitConfig settings to measure with).
Imports no torch until a cost is computed.
"""

from __future__ import annotations

import dataclasses
import math
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import ClassVar

from allocator.export._common import TargetWidthError
from engine import LAYER_KINDS, MAX_BITS, MIN_BITS, BitConfig, LayerSpec, Registry

GGUF_BLOCK = 32
# GGML block types by (bits, symmetric): name and bytes per block of 32 weights (the fp16
# scale `d`, the fp16 minimum `m` of the asymmetric types, the 5th bits `qh`, the codes).
GGUF_TYPES: dict[tuple[int, bool], tuple[str, int]] = {
    (4, True): ("Q4_0", 2 + 16),
    (4, False): ("Q4_1", 2 + 2 + 16),
    (5, True): ("Q5_0", 2 + 4 + 16),
    (5, False): ("Q5_1", 2 + 2 + 4 + 16),
    (8, True): ("Q8_0", 2 + 32),
}
CT_SCALE_BYTES = 2  # compressed-tensors scales are written as float16
CT_SHAPE_BYTES = 16  # `weight_shape`: two int64
ORT_SCALE_BYTES = 4  # ONNX Runtime takes scales in the activations' type: float32 models


def _matrix(shape: Sequence[int]) -> tuple[int, int]:
    """(N, K) of a weight: output rows and reduced inputs."""
    return int(shape[0]), math.prod(int(x) for x in shape[1:])


@dataclass(frozen=True)
class LayerScheme:
    """The scheme a target gives one layer at one width (engine terms)."""

    bits: int
    symmetric: bool
    group_size: int | None

    @classmethod
    def of(cls, settings: BitConfig, bits: int) -> LayerScheme:
        """What `engine.scheme_for(settings, bits)` gives (imports torch)."""
        import engine

        s = engine.scheme_for(settings, bits)
        return cls(s.bits, s.symmetric, s.group_size)


class BaseTarget(ABC):
    """A deployment format, as the solve and the exporters see it.

    Contract: `settings(base)` returns BitConfig settings under which the engine's scheme
    for every width in `widths` is one the format stores exactly (same grid, groups and
    zero points), so that what the solve measures is what ships; `layer_bytes` is the
    bytes the format stores for a layer's weight under those settings; `check_layer`
    raises `TargetWidthError` naming the layer, width and target for anything the format
    cannot hold. Targets hold no state.
    """

    name: ClassVar[str]
    description: ClassVar[str]
    widths: ClassVar[tuple[int, ...]]
    kinds: ClassVar[tuple[str, ...]] = LAYER_KINDS
    # BitConfig settings the format holds exactly whatever their value (a config measured
    # with another value than `settings` gives still exports as measured)
    holds_any: ClassVar[tuple[str, ...]] = ()

    def settings(self, base: BitConfig) -> BitConfig:
        """`base` adjusted so that the engine quantizes as this format stores."""
        return base

    def check_layer(self, layer: LayerSpec, bits: int, settings: BitConfig) -> None:
        """Raises `TargetWidthError` when `layer` cannot be stored at `bits`."""
        if bits not in self.widths:
            raise TargetWidthError(
                f"layer {layer.name!r} at {bits} bits: target {self.name!r} holds "
                f"{', '.join(map(str, self.widths))} bits only.")
        self._check_shape(layer, bits, settings)

    def _check_shape(self, layer: LayerSpec, bits: int, settings: BitConfig) -> None:
        """The layer kinds the format holds; subclasses add their shape constraints."""
        if layer.kind not in self.kinds:
            raise TargetWidthError(
                f"layer {layer.name!r} at {bits} bits: target {self.name!r} holds "
                f"{' and '.join(self.kinds)} layers only, not {layer.kind}.")

    def can_hold(self, layer: LayerSpec, bits: int, settings: BitConfig) -> bool:
        try:
            self.check_layer(layer, bits, settings)
        except TargetWidthError:
            return False
        return True

    @abstractmethod
    def format_name(self, bits: int, settings: BitConfig) -> str:
        """The format's own name for a layer stored at `bits` (e.g. `Q4_0`)."""

    @abstractmethod
    def layer_bytes(self, weight_shape: Sequence[int], bits: int, settings: BitConfig) -> int:
        """Bytes the format stores for a weight of this shape at `bits`."""


class EngineTarget(BaseTarget):
    name = "engine"
    description = ("this product's engine: packed codes, float32 scales, uint8 zero points; "
                   "every width 2..8")
    widths = tuple(range(MIN_BITS, MAX_BITS + 1))

    def format_name(self, bits: int, settings: BitConfig) -> str:
        import engine

        return str(engine.scheme_for(settings, bits).label)

    def layer_bytes(self, weight_shape: Sequence[int], bits: int, settings: BitConfig) -> int:
        import engine

        return int(engine.packed_weight_bytes(tuple(int(x) for x in weight_shape),
                                              engine.scheme_for(settings, bits)))


class OnnxTarget(BaseTarget):
    """ONNX Runtime: 4-bit weights as `MatMulNBits` (com.microsoft; block = the group size,
    K padded to whole blocks, float32 scales, 4-bit zero points packed two per byte per
    row) or, per channel, int4 `DequantizeLinear` along axis 0; 8-bit weights per channel
    as int8/uint8 `DequantizeLinear` with float32 scales (uint8 zero points if asymmetric).
    """

    name = "onnx"
    description = ("ONNX Runtime: 4-bit MatMulNBits (fp32 scales, packed 4-bit zero points), "
                   "8-bit per-channel DequantizeLinear")
    widths = (4, 8)
    holds_any = ("activation_grid",)  # MatMulIntegerToFloat per row, DynamicQuantizeMatMul

    def settings(self, base: BitConfig) -> BitConfig:
        # W8A8 linears on one uint8 grid per call: DynamicQuantizeMatMul, ONNX Runtime's
        # fastest int8 linear (per-row grids need a row-scale pass after its GEMM)
        return dataclasses.replace(base, group_size_8bit=None, symmetric_8bit=None,
                                   activation_grid="tensor")

    def format_name(self, bits: int, settings: BitConfig) -> str:
        if bits == 8:
            return ("DynamicQuantizeMatMul" if settings.activation_bits == 8
                    else "DequantizeLinear-int8")
        return "MatMulNBits" if settings.group_size is not None else "DequantizeLinear-int4"

    def layer_bytes(self, weight_shape: Sequence[int], bits: int, settings: BitConfig) -> int:
        n, k = _matrix(weight_shape)
        s = LayerScheme.of(settings, bits)
        if bits == 8:
            return n * k + n * ORT_SCALE_BYTES + (0 if s.symmetric else n)
        if s.group_size is None:  # int4 DequantizeLinear per output channel
            return -(-n * k // 2) + n * ORT_SCALE_BYTES + (0 if s.symmetric else -(-n // 2))
        blocks = -(-k // s.group_size)
        codes = n * blocks * s.group_size // 2
        zeros = 0 if s.symmetric else n * -(-blocks // 2)
        return codes + n * blocks * ORT_SCALE_BYTES + zeros


class CompressedTensorsTarget(BaseTarget):
    """vLLM / SGLang compressed-tensors checkpoints: weight-only 4- and 8-bit layers as
    `pack-quantized` (codes packed into int32 words along K, float16 scales per group or
    channel, asymmetric zero points packed into int32 along N, an int64 `weight_shape`);
    8-bit layers of W8A8 configs as `int-quantized` (int8 weight, float16 scale per
    channel, int8 dynamic per-token activations: the engine's row grid). Linear layers
    only; K must be a whole number of groups.
    """

    name = "compressed-tensors"
    description = ("vLLM compressed-tensors: pack-quantized int4/int8 (int32 words, fp16 "
                   "scales), int-quantized W8A8")
    widths = (4, 8)
    kinds = ("linear",)

    def settings(self, base: BitConfig) -> BitConfig:
        # SmoothQuant factors have no place in the checkpoint: they would have to be folded
        # into the previous layer, which the format's per-layer schemes cannot express.
        return dataclasses.replace(base, group_size_8bit=None, symmetric_8bit=None,
                                   smoothing_alpha=None, activation_grid="row")

    def _check_shape(self, layer: LayerSpec, bits: int, settings: BitConfig) -> None:
        super()._check_shape(layer, bits, settings)
        group = LayerScheme.of(settings, bits).group_size
        if group is not None and layer.in_features % group:
            raise TargetWidthError(
                f"layer {layer.name!r} at {bits} bits: target {self.name!r} needs its "
                f"{layer.in_features} inputs to be whole groups of {group}.")

    @staticmethod
    def w8a8(bits: int, settings: BitConfig) -> bool:
        return bits == 8 and settings.activation_bits == 8

    def format_name(self, bits: int, settings: BitConfig) -> str:
        return "int-quantized" if self.w8a8(bits, settings) else "pack-quantized"

    def layer_bytes(self, weight_shape: Sequence[int], bits: int, settings: BitConfig) -> int:
        n, k = _matrix(weight_shape)
        s = LayerScheme.of(settings, bits)
        if self.w8a8(bits, settings):
            return n * k + n * CT_SCALE_BYTES
        groups = 1 if s.group_size is None else -(-k // s.group_size)
        words = n * -(-k * bits // 32)
        zeros = 0 if s.symmetric else groups * -(-n * bits // 32)
        return 4 * words + n * groups * CT_SCALE_BYTES + 4 * zeros + CT_SHAPE_BYTES


class GgufTarget(BaseTarget):
    """llama.cpp GGUF: 4-bit as Q4_0 (symmetric) or Q4_1 (asymmetric), 5-bit as Q5_0 /
    Q5_1, 8-bit as Q8_0 (symmetric); blocks of 32 weights along K with float16 scales
    (and float16 minimum), weight-only. Linear layers whose K is a multiple of 32."""

    name = "gguf"
    description = ("llama.cpp GGUF: Q4_0/Q4_1 (4.5/5.0 bits per weight), Q5_0/Q5_1 (5.5/6.0), "
                   "Q8_0 (8.5); blocks of 32")
    widths = (4, 5, 8)
    kinds = ("linear",)

    def settings(self, base: BitConfig) -> BitConfig:
        return dataclasses.replace(base, group_size=GGUF_BLOCK, group_size_8bit=GGUF_BLOCK,
                                   symmetric_8bit=True, activation_bits=None)

    def _check_shape(self, layer: LayerSpec, bits: int, settings: BitConfig) -> None:
        super()._check_shape(layer, bits, settings)
        if layer.in_features % GGUF_BLOCK:
            raise TargetWidthError(
                f"layer {layer.name!r} at {bits} bits: target {self.name!r} stores blocks "
                f"of {GGUF_BLOCK} inputs; the layer has {layer.in_features}.")
        self.ggml_type(layer.name, LayerScheme.of(settings, bits))

    def ggml_type(self, name: str, scheme: LayerScheme) -> tuple[str, int]:
        """(ggml type name, bytes per block) of an engine scheme.

        Raises:
            TargetWidthError: No ggml block type stores this scheme exactly.
        """
        found = GGUF_TYPES.get((scheme.bits, scheme.symmetric))
        if found is None or scheme.group_size != GGUF_BLOCK:
            kinds = ", ".join(f"{t} ({b}-bit {'symmetric' if s else 'asymmetric'})"
                              for (b, s), (t, _) in GGUF_TYPES.items())
            sym = "symmetric" if scheme.symmetric else "asymmetric"
            group = ("per channel" if scheme.group_size is None
                     else f"group {scheme.group_size}")
            raise TargetWidthError(
                f"layer {name!r} at {scheme.bits} bits ({sym}, {group}): target "
                f"{self.name!r} stores {kinds}, all in blocks of {GGUF_BLOCK}; quantize "
                "with `target_settings('gguf', ...)`.")
        return found

    def format_name(self, bits: int, settings: BitConfig) -> str:
        return self.ggml_type("?", LayerScheme.of(settings, bits))[0]

    def layer_bytes(self, weight_shape: Sequence[int], bits: int, settings: BitConfig) -> int:
        n, k = _matrix(weight_shape)
        _, block_bytes = self.ggml_type("?", LayerScheme.of(settings, bits))
        return n * -(-k // GGUF_BLOCK) * block_bytes


TARGETS: Registry[BaseTarget] = Registry("target")
for _target in (EngineTarget(), OnnxTarget(), CompressedTensorsTarget(), GgufTarget()):
    TARGETS.register(_target.name, _target, description=_target.description)


def get_target(name: str | BaseTarget) -> BaseTarget:
    """The target registered as `name` (a target passes through).

    Raises:
        UnknownComponentError: No such target; the message lists the known ones.
    """
    return name if isinstance(name, BaseTarget) else TARGETS.get(name)


def target_settings(target: str | BaseTarget, settings: BitConfig) -> BitConfig:
    """The BitConfig settings (group sizes, symmetry, activations, smoothing) under which the
    engine quantizes exactly as `target` stores; `settings.bits` is kept.

    Example:
        >>> target_settings("gguf", BitConfig(bits={})).group_size
        32
    """
    return get_target(target).settings(settings)


def check_config(target: str | BaseTarget, config: BitConfig,
                 layers: Sequence[LayerSpec]) -> None:
    """Raises `TargetWidthError` (naming the layer, width and target) for the first layer
    of `config` that the target cannot store at its width, under `config`'s own settings.

    Raises:
        UnknownLayerError: `config` names a layer that is not in `layers`.
    """
    from engine import UnknownLayerError

    t = get_target(target)
    by_name = {x.name: x for x in layers}
    for name, bits in config.bits.items():
        if name not in by_name:
            raise UnknownLayerError(f"`bits` names layer {name!r}, which the model does not "
                                    "have among its quantizable layers.")
        t.check_layer(by_name[name], bits, config)


@dataclass(frozen=True)
class TargetCosts:
    """What a target changes in an allocation problem.

    Attributes:
        target: The target's name.
        bits: The candidate widths the target holds (the caller's, intersected).
        size_bytes: Layer -> width -> bytes in the format (only widths the layer can hold).
        skipped: Layers the target can hold at none of `bits`, with the reason; they stay
            float in the export and must be left out of the problem.
    """

    target: str
    bits: tuple[int, ...]
    size_bytes: Mapping[str, Mapping[int, float]]
    skipped: Mapping[str, str]

    def allowed_bits(self, name: str) -> tuple[int, ...]:
        """The widths layer `name` can take (empty for a skipped layer)."""
        return tuple(sorted(self.size_bytes.get(name, {})))


def target_costs(target: str | BaseTarget, layers: Sequence[LayerSpec], bits: Sequence[int],
                 settings: BitConfig) -> TargetCosts:
    """The byte cost of every layer at every candidate width the target holds, under the
    target's settings (`target_settings(target, settings)` is applied here).

    Raises:
        TargetWidthError: None of `bits` is a width the target holds.
    """
    t = get_target(target)
    wanted = tuple(sorted(set(bits) & set(t.widths)))
    if not wanted:
        raise TargetWidthError(
            f"bit-widths {sorted(set(bits))}: target {t.name!r} holds "
            f"{', '.join(map(str, t.widths))} bits only.")
    shipped = t.settings(settings)
    sizes: dict[str, dict[int, float]] = {}
    skipped: dict[str, str] = {}
    for layer in layers:
        row: dict[int, float] = {}
        reason = ""
        for b in wanted:
            try:
                t.check_layer(layer, b, shipped)
            except TargetWidthError as e:
                reason = str(e)
                continue
            row[b] = float(t.layer_bytes(layer.weight_shape, b, shipped))
        if row:
            sizes[layer.name] = row
        else:
            skipped[layer.name] = reason
    return TargetCosts(t.name, wanted, sizes, skipped)
