"""ONNX Runtime as a latency backend, and the ONNX ops a quantized layer runs as there.

`layer_ops` is the one definition of how an engine layer (its stored integers, scales, zero
points, bias and activation handling) is written as ONNX ops; the ONNX export
(`allocator.export`) writes every quantized layer with it, and `profile_onnxruntime` times
each layer shape at each width on exactly those ops, in ONNX Runtime's own kernels:

    fp32                          MatMul (+ Add) / Conv
    linear, weight-only 2/4/8     com.microsoft MatMulNBits, `accuracy_level` written in the
                                  node (0: float compute, 4: int8 compute of the input)
    conv, weight-only             DequantizeLinear (int4/uint4, int8/uint8) + Conv
    8-bit linear, W8A8            the engine's per-row symmetric int8 codes of the input
                                  (after the SmoothQuant multiply), as uint8 with zero point
                                  128, into com.microsoft MatMulIntegerToFloat (ONNX
                                  Runtime's uint8 x int8 GEMM), then the row scales
    8-bit linear, W8A8 on one     com.microsoft DynamicQuantizeMatMul (its input quantized
      grid per call               to one uint8 grid per call, the weight scales and bias
                                  fused: ONNX Runtime's fastest int8 linear)
    8-bit conv, W8A8              uint8 QDQ of the input on the grid the engine uses: its
                                  calibrated range (or one per call when uncalibrated), codes
                                  0..M as its kernel sums exactly on this CPU; output QDQ
                                  where the engine requantizes (fbgemm's static conv)

The engine's int8 linears on CPUs whose int8 GEMMs are inexact with full-range codes (AVX2
without VNNI) run other per-row grids (`fbgemm-int8-rows`: asymmetric 7-bit rows, outlier
channels in float); the export writes the per-row symmetric int8 arithmetic, and its check
compares at the int8 tolerance. ONNX Runtime's own uint8 x int8 GEMM on such CPUs sums
pairs of products in saturating 16 bits (its documentation says so), so a W8A8 export run
there can depart from the engine by more than on a VNNI CPU; the export's check, run on the
exporting machine, measures it.

Weight-only linears are MatMulNBits even at 8 bits and per channel (the scale repeated in
each block): ONNX Runtime's default session rewrites DequantizeLinear + MatMul into
MatMulNBits with int8 compute (`session.qdq_matmulnbits_accuracy_level`, default 4), so a
DequantizeLinear graph would run with whatever accuracy the loading session says; written
as MatMulNBits, the file says it.

Each layer is timed in a graph of its own on its real input (captured from a float forward
pass), as several copies of the layer side by side whose weights together pass
`WORKING_SET_BYTES` (as the engine profiler cycles copies), so weights come from memory as
in a whole model and the session's per-run cost is shared by the copies. The table is an
`allocator.latency/1` table whose fingerprint names the runtime and its version: it is
refused for the engine or another ONNX Runtime version (`RuntimeMismatchError`). Its
`overhead_us` is the exported FP32 model's time in ONNX Runtime minus its layers' FP32
times; `onnxruntime_additivity` checks predictions against whole exported models.
"""

from __future__ import annotations

import statistics
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

import engine
from engine import BitConfig, InvalidSpecError, LayerSpec, MissingDependencyError, check_bits
from hwprofiles._additivity import AdditivityRow, predict_latency
from hwprofiles._fingerprint import DeviceFingerprint
from hwprofiles._profiler import (
    DEFAULT_REPEATS,
    MAX_COPIES,
    WORKING_SET_BYTES,
    batch_size,
    copies_for,
    layers_by_shape,
    quantized_module,
)
from hwprofiles._table import FP32, LatencyTable, Measurement, TableEntry, bits_key, call_macs

if TYPE_CHECKING:
    import onnx
    import onnxruntime  # type: ignore[import-untyped]

RUNTIME = "onnxruntime"
OPSET = 21
MS_DOMAIN = "com.microsoft"
# MatMulNBits' `accuracy_level`: 0 computes in float, as the engine's weight-only layers do;
# 4 lets ONNX Runtime quantize the input to int8 per block, its fast path on CPUs with VNNI
# or AMX (on an AVX2-only AMD EPYC it was no faster than FP32: benchmarks/export.py).
DEFAULT_ACCURACY_LEVEL = 0
ACCURACY_LEVELS = (0, 1, 2, 3, 4)
# MatMulNBits' block sizes: powers of two from 16 (ONNX Runtime's CPU kernels go to 256).
NBITS_BLOCKS = (16, 32, 64, 128, 256)
NBITS_WIDTHS = (2, 4, 8)
# What MatMulNBits does with its float input at each `accuracy_level`.
_NBITS_COMPUTE = {0: "float", 1: "float", 2: "fp16 compute", 3: "bf16 compute",
                  4: "int8 per block (ONNX Runtime)"}
# The tensors of a layer that hold its weight (counted in its bytes).
WEIGHT_TENSORS = ("qweight", "scales", "zero_points")
# The engine's kernel paths whose activations stay float (`engine.KernelPath` values).
_FLOAT_PATHS = frozenset({"dequant", "int4pack-bf16", "cuda-int4pack-bf16", "cuda-dequant-bf16"})
_OPTIMIZATION = ("all", "extended", "basic", "disabled")
# The engine's int8 conv paths whose input grid comes from calibration.
_STATIC_CONV_PATHS = frozenset({"fbgemm-int8-static", "onednn-int8-static"})


# ----------------------------------------------------------------------------- the runtime


def require_onnxruntime() -> tuple[Any, Any]:
    """(onnx, onnxruntime), or `MissingDependencyError` naming what to install."""
    try:
        import onnx
        import onnxruntime
    except ImportError as e:
        raise MissingDependencyError(
            f"ONNX Runtime work needs onnx and onnxruntime ({e.name} is missing); install "
            "the `onnx` extra.") from e
    return onnx, onnxruntime


def onnxruntime_session(model: onnx.ModelProto | bytes | str | Path, *,
                        threads: int | None = None, optimization: str = "all",
                        config: Mapping[str, str] | None = None,
                        ) -> onnxruntime.InferenceSession:
    """An ONNX Runtime CPU session.

    Args:
        model: A model, its serialized bytes, or a file.
        threads: Intra-op threads (default: torch's thread count, as the engine uses).
        optimization: Graph optimization level: "all" (default), "extended", "basic" or
            "disabled".
        config: Session config entries (e.g. `{"session.disable_quant_qdq": "1"}`, which
            lets ONNX Runtime fold weight dequantization into constants at load).
    """
    _, ort = require_onnxruntime()
    if optimization not in _OPTIMIZATION:
        raise InvalidSpecError(f"`optimization` must be one of {_OPTIMIZATION}, "
                               f"got {optimization!r}.")
    level = ort.GraphOptimizationLevel
    levels = {"all": level.ORT_ENABLE_ALL, "extended": level.ORT_ENABLE_EXTENDED,
              "basic": level.ORT_ENABLE_BASIC, "disabled": level.ORT_DISABLE_ALL}
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads or torch.get_num_threads()
    options.inter_op_num_threads = 1
    options.graph_optimization_level = levels[optimization]
    options.log_severity_level = 3
    for key, value in (config or {}).items():
        options.add_session_config_entry(key, value)
    source: Any = str(model) if isinstance(model, Path) else model
    if not isinstance(source, bytes | str):
        source = source.SerializeToString()
    return ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])


def onnxruntime_feed(session: onnxruntime.InferenceSession,
                     inputs: Any) -> dict[str, np.ndarray]:
    """A session's inputs from a batch in `engine.call_model` form: by name for a dict, in
    order for a tensor or a tuple."""
    names = [i.name for i in session.get_inputs()]
    if isinstance(inputs, Mapping):
        missing = [n for n in names if n not in inputs]
        if missing:
            raise InvalidSpecError(f"the ONNX model takes inputs {names}; the batch lacks "
                                   f"{missing}.")
        return {n: _array(inputs[n]) for n in names}
    values = list(inputs) if isinstance(inputs, tuple | list) else [inputs]
    tensors = [v for v in values if isinstance(v, torch.Tensor)]
    if len(tensors) != len(names):
        raise InvalidSpecError(f"the ONNX model takes {len(names)} inputs {names}; the batch "
                               f"has {len(tensors)} tensors.")
    return {n: _array(t) for n, t in zip(names, tensors, strict=True)}


def _array(value: Any) -> np.ndarray:
    if not isinstance(value, torch.Tensor):
        raise InvalidSpecError(f"ONNX inputs must be tensors, got {type(value).__name__}.")
    return value.detach().cpu().contiguous().numpy()


# ----------------------------------------------------------------------------- layer ops


def _pack_low_first(values: np.ndarray, bits: int) -> np.ndarray:
    """Packs unsigned `bits`-bit integers along the last axis, low bits first."""
    per = 8 // bits
    v = values.astype(np.uint8)
    pad = (-v.shape[-1]) % per
    if pad:
        v = np.concatenate([v, np.zeros((*v.shape[:-1], pad), np.uint8)], axis=-1)
    v = v.reshape(*v.shape[:-1], -1, per)
    out = np.zeros(v.shape[:-1], np.uint8)
    for j in range(per):
        out |= (v[..., j] << (bits * j)).astype(np.uint8)
    return out


class OnnxInitializers:
    """Initializers being added to a graph, each created once under its name, with bytes."""

    def __init__(self) -> None:
        onnx, _ = require_onnxruntime()
        self.onnx = onnx
        self.tensors: list[Any] = []  # onnx.TensorProto
        self.nbytes: dict[str, int] = {}

    def array(self, name: str, value: np.ndarray) -> str:
        if name not in self.nbytes:
            tensor = self.onnx.numpy_helper.from_array(np.ascontiguousarray(value), name)
            self.tensors.append(tensor)
            self.nbytes[name] = int(value.nbytes)
        return name

    def int4(self, name: str, values: np.ndarray, signed: bool) -> str:
        """An int4 / uint4 initializer (two values per byte, low nibble first)."""
        if name not in self.nbytes:
            kind = self.onnx.TensorProto.INT4 if signed else self.onnx.TensorProto.UINT4
            nibbles = (values.astype(np.int16).ravel() & 0xF).astype(np.uint8)
            raw = _pack_low_first(nibbles[None, :], 4).tobytes()
            self.tensors.append(self.onnx.helper.make_tensor(
                name, kind, list(values.shape), raw, raw=True))
            self.nbytes[name] = len(raw)
        return name

    def layer_bytes(self, name: str) -> int:
        """Bytes of the weight tensors of the layer whose tensors are named `name.*`."""
        return sum(self.nbytes.get(f"{name}.{t}", 0) for t in WEIGHT_TENSORS)


class LayerSite:
    """Names for one call of a layer: its tensors `name.*` (shared by every call) and its
    nodes and values `name/...` (`name#2/...` for the second call)."""

    def __init__(self, inits: OnnxInitializers, name: str, call: int = 1) -> None:
        self.inits = inits
        self.name = name
        self.prefix = name if call == 1 else f"{name}#{call}"

    def array(self, suffix: str, value: np.ndarray) -> str:
        return self.inits.array(f"{self.name}.{suffix}", value)

    def int4(self, suffix: str, values: np.ndarray, signed: bool) -> str:
        return self.inits.int4(f"{self.name}.{suffix}", values, signed)

    def value(self, suffix: str) -> str:
        return f"{self.prefix}/{suffix}"

    def node(self, op: str, inputs: Sequence[str], outputs: Sequence[str], what: str,
             domain: str = "", **attrs: Any) -> Any:
        return self.inits.onnx.helper.make_node(op, list(inputs), list(outputs),
                                                name=f"{self.prefix}/{what}", domain=domain,
                                                **attrs)


@dataclass(frozen=True)
class LayerOps:
    """The ONNX nodes of one layer call, and how the layer is held.

    Attributes:
        nodes: The nodes, input to output.
        op: The ops that run it ("MatMulNBits", "DequantizeLinear+MatMul", "MatMul", ...).
        container: How its integers are stored ("4-bit packed, block 128", "uint8 per
            channel", "fp32").
        activations: "float", "int8 per row (dynamic)" (the engine's W8A8 linears), "uint8
            per tensor (dynamic)" (W8A8 linears on one grid per call), "uint8
            static, codes 0..M" / "uint8 per call, codes 0..M" (W8A8 convs: the calibrated
            grid, or one per call), or what MatMulNBits computes in ("int8 per block (ONNX
            Runtime)" at `accuracy_level` 4).
    """

    nodes: tuple[Any, ...]
    op: str
    container: str
    activations: str

    @property
    def kernel(self) -> str:
        """The kernel name latency tables record (`ort:` + the ops)."""
        return f"ort:{self.op}"


def _weight_parts(layer: engine.QuantizedLayer) -> tuple[np.ndarray, np.ndarray,
                                                         np.ndarray | None]:
    """(codes (N, K) uint8, scales (N, G) float32, zeros (N, G) uint8 or None)."""
    qw = layer.quantized_weight()
    codes = qw.codes().cpu().numpy()
    scales = qw.scales.detach().float().cpu().numpy()
    zeros = None if qw.zeros is None else qw.zeros.detach().cpu().numpy().astype(np.uint8)
    return codes, scales, zeros


def int8_activation_path(layer: engine.QuantizedLayer) -> engine.KernelPath | None:
    """The int8 path the engine runs this layer on for several input rows on the CPU (its
    activations quantized), or None when its activations stay float."""
    cpu = torch.device("cpu")
    if isinstance(layer, engine.QuantConv2d):
        path = layer.select_path(cpu)
    else:
        assert isinstance(layer, engine.QuantLinear)
        path = layer.select_path(2, cpu)
    return None if path.value in _FLOAT_PATHS else path


def _dequantized(site: LayerSite, layer: engine.QuantizedLayer, *,
                 transpose: bool) -> tuple[list[Any], str, str]:
    """DequantizeLinear of the layer's stored integers as a float (N, K) matrix, or (K, N)
    with `transpose` (a MatMul's right operand). Returns (nodes, output, container)."""
    codes, scales, zeros = _weight_parts(layer)
    scheme = layer.scheme
    low, signed = scheme.bits <= 4, scheme.symmetric
    # symmetric grids are (q - 2**(b-1)) * s: signed integers with zero point 0
    values = codes.astype(np.int16) - (scheme.offset if signed else 0)
    zp = None if signed else zeros
    if transpose:
        values = values.T
    if scheme.group_size is not None and scales.shape[1] > 1:
        s_arr = scales.T if transpose else scales
        z_arr = None if zp is None else (zp.T if transpose else zp)
        attrs: dict[str, Any] = {"axis": 0 if transpose else 1,
                                 "block_size": scheme.group_size}
        how = f"blocked g{scheme.group_size}"
    else:
        s_arr, z_arr = scales[:, 0], None if zp is None else zp[:, 0]
        attrs, how = {"axis": 1 if transpose else 0}, "per channel"
    if low:
        w = site.int4("qweight", values, signed)
    else:
        w = site.array("qweight", values.astype(np.int8 if signed else np.uint8))
    inputs = [w, site.array("scales", s_arr.astype(np.float32))]
    if z_arr is not None:
        inputs.append(site.int4("zero_points", z_arr, False) if low
                      else site.array("zero_points", z_arr.astype(np.uint8)))
    out = site.value("weight")
    nodes = [site.node("DequantizeLinear", inputs, [out], "DequantizeWeight", **attrs)]
    kind = ("int" if signed else "uint") + ("4" if low else "8")
    note = "" if scheme.bits in (4, 8) else f", {scheme.bits}-bit codes"
    return nodes, out, f"{kind} {how}{note}"


def nbits_block(k: int, bits: int, group_size: int | None, symmetric: bool) -> int:
    """MatMulNBits' block size for a layer: its group size, or per channel the block of
    `NBITS_BLOCKS` that stores the fewest bytes (its scale and zero point repeat per block,
    K is padded to whole blocks)."""
    if group_size is not None:
        return group_size

    def row_bytes(block: int) -> float:
        blocks = -(-k // block)
        return blocks * block * bits / 8 + blocks * 4 + (0 if symmetric else blocks * bits / 8)

    return min(reversed(NBITS_BLOCKS), key=row_bytes)


def matmulnbits_bytes(n: int, k: int, bits: int, group_size: int | None,
                      symmetric: bool) -> int:
    """Bytes MatMulNBits stores for an (N, K) weight: packed codes of whole blocks, float32
    scales, and (asymmetric) zero points packed at the same width."""
    block = nbits_block(k, bits, group_size, symmetric)
    blocks = -(-k // block)
    zeros = 0 if symmetric else n * -(-blocks * bits // 8)
    return n * blocks * block * bits // 8 + n * blocks * 4 + zeros


def _nbits_linear(site: LayerSite, layer: engine.QuantizedLayer, x: str, y: str,
                  bias: str | None, accuracy_level: int) -> list[Any]:
    """MatMulNBits of a layer: codes as (N, k_blocks, blob) bytes, low bits first, the
    groups as blocks (K padded to whole blocks), zero points packed the same way."""
    codes, scales, zeros = _weight_parts(layer)
    scheme = layer.scheme
    bits = scheme.bits
    n, k = codes.shape
    block = nbits_block(k, bits, scheme.group_size, scheme.symmetric)
    k_blocks = -(-k // block)
    if scales.shape[1] != k_blocks:  # per channel: one scale (and zero) for every block
        scales = np.repeat(scales[:, :1], k_blocks, axis=1)
        zeros = None if zeros is None else np.repeat(zeros[:, :1], k_blocks, axis=1)
    padded = np.zeros((n, k_blocks * block), np.uint8)
    padded[:, :k] = codes
    packed = _pack_low_first(padded.reshape(n, k_blocks, block), bits)
    inputs = [x, site.array("qweight", packed), site.array("scales", scales.astype(np.float32))]
    if zeros is not None:
        inputs.append(site.array("zero_points", _pack_low_first(zeros, bits)))
    elif bias is not None:
        inputs.append("")  # default zero point 2**(bits-1): the engine's symmetric offset
    if bias is not None:
        inputs += ["", bias]  # g_idx (deprecated) left out
    return [site.node("MatMulNBits", inputs, [y], "MatMulNBits", domain=MS_DOMAIN,
                      K=k, N=n, bits=bits, block_size=block, accuracy_level=accuracy_level)]


def _int8_operand(site: LayerSite, layer: engine.QuantizedLayer) -> tuple[str, str]:
    """A W8A8 linear's int8 weight as a (K, N) GEMM operand and its per-channel scales."""
    weight = layer.int8_weight().cpu().numpy().T
    scales = layer.scales[:, 0].detach().float().cpu().numpy()
    return site.array("qweight", np.ascontiguousarray(weight)), site.array("scales", scales)


def _integer_linear(site: LayerSite, layer: engine.QuantizedLayer, x: str, y: str,
                    bias: str | None) -> list[Any]:
    """A W8A8 linear on ONNX Runtime's int8 GEMM, on the engine's grid.

    The engine rounds each input row to symmetric int8 (scale max(max|x_row|, 1e-12) / 127,
    codes -127..127). Shifted by 128 those codes are uint8 with zero point 128 (exact), the
    operand ONNX Runtime's fast int8 GEMM takes (uint8 x int8: VNNI, or AVX2's pairwise
    16-bit sums). `MatMulIntegerToFloat` multiplies them with the int8 weights and applies
    the per-channel weight scales; the row scales and the bias follow (ONNX Runtime fuses
    the bias into the next op where it can).
    """
    k = layer.reduction_size
    weight, scales = _int8_operand(site, layer)
    v = site.value
    eps = site.array("act_eps", np.array(1e-12, np.float32))
    qmax = site.array("act_qmax", np.array(127.0, np.float32))
    axes = site.array("act_axes", np.array([-1], np.int64))
    zero = site.array("act_zero_point", np.array(128, np.uint8))
    one = site.array("act_unit_scale", np.array(1.0, np.float32))
    nodes = [
        site.node("Abs", [x], [v("act_abs")], "ActAbs"),
        site.node("ReduceMax", [v("act_abs"), axes], [v("act_max")], "ActMax", keepdims=1),
        site.node("Max", [v("act_max"), eps], [v("act_max_clamped")], "ActClamp"),
        site.node("Div", [v("act_max_clamped"), qmax], [v("act_scale")], "ActScale"),
        site.node("Shape", [v("act_scale")], [v("act_scale_shape")], "ActScaleShape"),
        site.node("Expand", [zero, v("act_scale_shape")], [v("act_zero_points")],
                  "ActZeroPoints"),
        site.node("QuantizeLinear", [x, v("act_scale"), v("act_zero_points")], [v("act_q")],
                  "QuantizeInput", axis=-1, block_size=k),
        site.node("MatMulIntegerToFloat",
                  [v("act_q"), weight, one, scales, zero],
                  [v("matmul_channels")], "MatMulIntegerToFloat", domain=MS_DOMAIN),
    ]
    scaled = y if bias is None else v("matmul")
    nodes.append(site.node("Mul", [v("matmul_channels"), v("act_scale")], [scaled],
                           "RowScales"))
    if bias is not None:
        nodes.append(site.node("Add", [scaled, bias], [y], "AddBias"))
    return nodes


def _tensor_grid_linear(site: LayerSite, layer: engine.QuantizedLayer, x: str, y: str,
                        bias: str | None) -> list[Any]:
    """A W8A8 linear whose inputs take one uint8 grid per call (`activation_grid`
    "tensor"): com.microsoft DynamicQuantizeMatMul, whose own input quantization is that
    grid (DynamicQuantizeLinear's), with the int8 weights, their per-channel scales and the
    bias fused into ONNX Runtime's uint8 x int8 GEMM."""
    inputs = [x, *_int8_operand(site, layer)]
    if bias is not None:
        inputs += ["", bias]  # no weight zero points: symmetric
    return [site.node("DynamicQuantizeMatMul", inputs, [y], "DynamicQuantizeMatMul",
                      domain=MS_DOMAIN)]


def _matmul_bias(site: LayerSite, x: str, w: str, bias: str | None, y: str) -> list[Any]:
    if bias is None:
        return [site.node("MatMul", [x, w], [y], "MatMul")]
    mm = site.value("matmul")
    return [site.node("MatMul", [x, w], [mm], "MatMul"),
            site.node("Add", [mm, bias], [y], "AddBias")]


def _bias(site: LayerSite, bias: torch.Tensor | None) -> str | None:
    return None if bias is None else site.array("bias", bias.detach().float().cpu().numpy())


def _linear_ops(site: LayerSite, layer: engine.QuantizedLayer, x: str, y: str,
                accuracy_level: int) -> LayerOps:
    nodes: list[Any] = []
    bias = _bias(site, layer.bias)
    smoothing = getattr(layer, "act_smoothing", None)
    if smoothing is not None:  # SmoothQuant: the engine multiplies the input first
        s = site.array("act_smoothing", smoothing.detach().float().cpu().numpy())
        nodes.append(site.node("Mul", [x, s], [site.value("smoothed")], "Smooth"))
        x = site.value("smoothed")
    scheme = layer.scheme
    int8 = int8_activation_path(layer) is not None
    if int8 and getattr(layer, "activation_grid", "row") == "tensor":
        return LayerOps(tuple(nodes + _tensor_grid_linear(site, layer, x, y, bias)),
                        "DynamicQuantizeMatMul", "int8 per channel",
                        "uint8 per tensor (dynamic)")
    if int8:
        return LayerOps(tuple(nodes + _integer_linear(site, layer, x, y, bias)),
                        "QuantizeLinear(per row)+MatMulIntegerToFloat", "int8 per channel",
                        "int8 per row (dynamic)")
    if scheme.bits in NBITS_WIDTHS:
        block = nbits_block(layer.reduction_size, scheme.bits, scheme.group_size,
                            scheme.symmetric)
        how = "" if scheme.group_size is not None else ", per-channel scale repeated"
        return LayerOps(tuple(nodes + _nbits_linear(site, layer, x, y, bias, accuracy_level)),
                        "MatMulNBits", f"{scheme.bits}-bit packed, block {block}{how}",
                        _NBITS_COMPUTE[accuracy_level])
    wnodes, w, container = _dequantized(site, layer, transpose=True)
    return LayerOps(tuple(nodes + wnodes + _matmul_bias(site, x, w, bias, y)),
                    "DequantizeLinear+MatMul", container, "float")


def _conv_max_code(path: engine.KernelPath) -> int:
    """The input codes 0..max the engine's int8 conv kernel uses here: the widest it sums
    exactly (127 or 129 on AVX2-only CPUs), 255 where the engine does not say."""
    try:
        from engine._int8_paths import conv_max_code
    except ImportError:  # an engine without the probe: full-range codes
        return 255
    return conv_max_code("fbgemm" if path.value.startswith("fbgemm") else "onednn") or 255


def _affine_grid(lo: float, hi: float, qmax: int) -> tuple[float, int]:
    """Scale and zero point of the engine's asymmetric grid of codes 0..qmax over [lo, hi]
    and 0 (`engine._kernels.uint8_affine_params`)."""
    lo, hi = min(lo, 0.0), max(hi, 0.0)
    scale = (hi - lo) / qmax
    scale = scale if scale > 0 else 1.0
    return scale, int(min(qmax, max(0, round(-lo / scale))))


def _static_qdq(site: LayerSite, x: str, y: str, lo: float, hi: float, qmax: int,
                tag: str) -> list[Any]:
    """QDQ on the grid the engine calibrated: codes 0..qmax (values beyond it clipped to it,
    as the engine clamps), uint8."""
    scale, zero = _affine_grid(lo, hi, qmax)
    s = site.array(f"{tag}_scale", np.array(scale, np.float32))
    z = site.array(f"{tag}_zero_point", np.array(zero, np.uint8))
    nodes, source = [], x
    if qmax < 255:
        low = site.array(f"{tag}_clip_low", np.array(-zero * scale, np.float32))
        high = site.array(f"{tag}_clip_high", np.array((qmax - zero) * scale, np.float32))
        source = site.value(f"{tag}_clipped")
        nodes.append(site.node("Clip", [x, low, high], [source], f"Clip_{tag}"))
    q = site.value(f"{tag}_q")
    return nodes + [site.node("QuantizeLinear", [source, s, z], [q], f"Quantize_{tag}"),
                    site.node("DequantizeLinear", [q, s, z], [y], f"Dequantize_{tag}")]


def _dynamic_qdq(site: LayerSite, x: str, y: str, qmax: int) -> list[Any]:
    """The engine's per-call uint8 grid of the whole input, codes 0..qmax: at 255 exactly
    DynamicQuantizeLinear; narrower, the same formula written out."""
    v = site.value
    if qmax == 255:
        return [site.node("DynamicQuantizeLinear", [x], [v("input_q"), v("input_scale"),
                                                         v("input_zp")], "QuantizeInput"),
                site.node("DequantizeLinear", [v("input_q"), v("input_scale"), v("input_zp")],
                          [y], "DequantizeInput")]
    zero = site.array("act_zero", np.array(0.0, np.float32))
    one = site.array("act_one", np.array(1.0, np.float32))
    top = site.array("act_qmax", np.array(float(qmax), np.float32))
    return [
        site.node("ReduceMin", [x], [v("x_min")], "InputMin", keepdims=0),
        site.node("Min", [v("x_min"), zero], [v("lo")], "InputLow"),
        site.node("ReduceMax", [x], [v("x_max")], "InputMax", keepdims=0),
        site.node("Max", [v("x_max"), zero], [v("hi")], "InputHigh"),
        site.node("Sub", [v("hi"), v("lo")], [v("span")], "InputSpan"),
        site.node("Div", [v("span"), top], [v("raw_scale")], "InputScaleRaw"),
        site.node("Greater", [v("raw_scale"), zero], [v("positive")], "InputScalePositive"),
        site.node("Where", [v("positive"), v("raw_scale"), one], [v("input_scale")],
                  "InputScale"),
        site.node("Neg", [v("lo")], [v("neg_lo")], "InputNegLow"),
        site.node("Div", [v("neg_lo"), v("input_scale")], [v("zp_raw")], "InputZeroRaw"),
        site.node("Round", [v("zp_raw")], [v("zp_round")], "InputZeroRound"),
        site.node("Clip", [v("zp_round"), zero, top], [v("zp_clip")], "InputZeroClip"),
        site.node("Cast", [v("zp_clip")], [v("input_zp")], "InputZero",
                  to=site.inits.onnx.TensorProto.UINT8),
        site.node("QuantizeLinear", [x, v("input_scale"), v("input_zp")], [v("input_q")],
                  "QuantizeInput"),
        site.node("DequantizeLinear", [v("input_q"), v("input_scale"), v("input_zp")], [y],
                  "DequantizeInput"),
    ]


def _conv_node(site: LayerSite, x: str, w: str, bias: str | None, y: str,
               geometry: tuple[Any, Any, Any, int]) -> Any:
    """A Conv node; `geometry` is (stride, padding, dilation, groups), numeric padding."""
    stride, padding, dilation, groups = geometry
    ph, pw = (int(p) for p in padding)
    return site.node("Conv", [x, w] + ([bias] if bias is not None else []), [y], "Conv",
                     strides=[int(s) for s in stride], pads=[ph, pw, ph, pw],
                     dilations=[int(d) for d in dilation], group=int(groups))


def _conv_ops(site: LayerSite, layer: engine.QuantConv2d, x: str, y: str) -> LayerOps:
    path = int8_activation_path(layer)
    nodes, w2d, container = _dequantized(site, layer, transpose=False)
    shape = site.array("weight_shape", np.array(layer.weight_shape, np.int64))
    w = site.value("weight_4d")
    nodes.append(site.node("Reshape", [w2d, shape], [w], "ReshapeWeight"))
    bias = _bias(site, layer.bias)
    geometry = (layer.stride, layer.padding, layer.dilation, layer.groups)
    if path is None:
        nodes.append(_conv_node(site, x, w, bias, y, geometry))
        return LayerOps(tuple(nodes), "DequantizeLinear+Conv", container, "float")
    qmax = _conv_max_code(path)
    x_dq = site.value("input_dq")
    if path.value in _STATIC_CONV_PATHS:  # the input grid the engine calibrated
        lo, hi = layer.input_range.tolist()
        nodes += _static_qdq(site, x, x_dq, lo, hi, qmax, "input")
        activations = f"uint8 static, codes 0..{qmax}"
    else:  # the engine takes the input's grid per call
        nodes += _dynamic_qdq(site, x, x_dq, qmax)
        activations = f"uint8 per call, codes 0..{qmax}"
    requantized = path.value == "fbgemm-int8-static"  # its output is on a calibrated grid
    conv_out = site.value("conv") if requantized else y
    nodes.append(_conv_node(site, x_dq, w, bias, conv_out, geometry))
    if requantized:
        lo, hi = layer.output_range.tolist()
        nodes += _static_qdq(site, conv_out, y, lo, hi, 255, "output")
    return LayerOps(tuple(nodes), "QDQ+DequantizeLinear+Conv", container, activations)


def layer_ops(site: LayerSite, layer: engine.QuantizedLayer, x: str, y: str, *,
              accuracy_level: int = DEFAULT_ACCURACY_LEVEL) -> LayerOps:
    """The ONNX nodes that compute `y` from `x` as the engine's quantized layer does, from
    its stored integers, scales, zero points and (possibly corrected) bias.

    Args:
        site: Where the tensors and nodes get their names.
        layer: The engine's `QuantLinear` / `QuantConv2d`.
        x, y: Names of the input and output values.
        accuracy_level: MatMulNBits' `accuracy_level` (4: int8 compute; 0: float).
    """
    if isinstance(layer, engine.QuantConv2d):
        return _conv_ops(site, layer, x, y)
    return _linear_ops(site, layer, x, y, accuracy_level)


def float_layer_ops(site: LayerSite, module: nn.Linear | nn.Conv2d, x: str,
                    y: str) -> LayerOps:
    """The float layer's ONNX nodes (MatMul + Add, or Conv), as the FP32 export runs it."""
    weight = module.weight.detach().float().cpu().numpy()
    bias = _bias(site, module.bias)
    if isinstance(module, nn.Conv2d):
        w = site.array("weight", weight)
        geometry = (module.stride, module.padding, module.dilation, module.groups)
        return LayerOps((_conv_node(site, x, w, bias, y, geometry),), "Conv", "fp32", "float")
    w = site.array("weight_t", np.ascontiguousarray(weight.T))
    return LayerOps(tuple(_matmul_bias(site, x, w, bias, y)), "MatMul", "fp32", "float")


# ----------------------------------------------------------------------------- profiling


_Build = Callable[[LayerSite, str, str], LayerOps]


def _builder(module: nn.Linear | nn.Conv2d, key: str, config: BitConfig, x: torch.Tensor,
             accuracy_level: int) -> _Build:
    """What builds one copy of the layer at `key` ("fp32" or bits) in a timing graph."""
    if key == FP32:
        return lambda site, xn, yn: float_layer_ops(site, module, xn, yn)
    qlayer = quantized_module(module, int(key), config, x)
    return lambda site, xn, yn: layer_ops(site, qlayer, xn, yn, accuracy_level=accuracy_level)


def _layer_model(build: _Build, x_shape: Sequence[int],
                 copies: int) -> tuple[onnx.ModelProto, str]:
    """A model of `copies` copies of one layer side by side on one input `x`, and the
    kernel name; `build(site, x, y)` returns the `LayerOps` of a copy."""
    inits = OnnxInitializers()
    helper, float_type = inits.onnx.helper, inits.onnx.TensorProto.FLOAT
    nodes: list[Any] = []
    outputs = []
    kernel = ""
    for i in range(copies):
        ops = build(LayerSite(inits, f"copy{i}"), "x", f"y{i}")
        nodes += ops.nodes
        kernel = ops.kernel
        outputs.append(helper.make_tensor_value_info(f"y{i}", float_type, None))
    graph = helper.make_graph(nodes, "layer", [helper.make_tensor_value_info(
        "x", float_type, list(x_shape))], outputs, inits.tensors)
    imports = [helper.make_opsetid("", OPSET), helper.make_opsetid(MS_DOMAIN, 1)]
    return helper.make_model(graph, opset_imports=imports), kernel


def _time_session(session: onnxruntime.InferenceSession, feed: Mapping[str, np.ndarray], *,
                  repeats: int, warmup: int = 2) -> engine.Timing:
    return engine.time_call(lambda _i: session.run(None, dict(feed)), repeats=repeats,
                            warmup=warmup)


def _measure(model: onnx.ModelProto, x: np.ndarray, copies: int, kernel: str, *,
             repeats: int, threads: int | None) -> Measurement:
    session = onnxruntime_session(model, threads=threads)
    timing = _time_session(session, {"x": x}, repeats=repeats)
    return Measurement(kernel=kernel, p50_us=timing.p50_us / copies,
                       p90_us=timing.p90_us / copies, samples=len(timing.samples_us))


def check_onnxruntime_table(table: LatencyTable) -> None:
    """Refuses a table that was not measured in this ONNX Runtime version (the `check` a
    pipeline gives `load_profile`, so a stale table is set aside and profiled anew).

    Raises:
        RuntimeMismatchError: Measured by the engine, or in another ONNX Runtime version.
    """
    table.check_fingerprint(DeviceFingerprint.current(RUNTIME))


def _check_table(table: LatencyTable, batch: int) -> None:
    check_onnxruntime_table(table)
    if table.batch != batch:
        raise InvalidSpecError(f"`table` was measured at batch {table.batch}, but the example "
                               f"inputs have batch {batch}; profile into a new table.")


def profile_onnxruntime(
    model: nn.Module,
    layers: Sequence[LayerSpec],
    example_inputs: Any,
    bits: Iterable[int] = (4, 8),
    *,
    config: BitConfig | None = None,
    fp32_model: onnx.ModelProto | bytes | str | Path | None = None,
    repeats: int = DEFAULT_REPEATS,
    table: LatencyTable | None = None,
    model_name: str | None = None,
    accuracy_level: int = DEFAULT_ACCURACY_LEVEL,
    threads: int | None = None,
    working_set_bytes: int = WORKING_SET_BYTES,
    max_copies: int = MAX_COPIES,
) -> LatencyTable:
    """Measures every layer shape of `model` at each of `bits` and at FP32 in ONNX Runtime,
    on the ops the ONNX export writes for it (`layer_ops`).

    Args:
        model: The float model (left unchanged).
        layers: Its layers, as `engine.discover_layers(model, example_inputs)` gives them.
        example_inputs: One batch (`engine.call_model` form); its size is the table's batch.
        bits: Candidate weight bit-widths.
        config: Whose schemes and activation handling the layers use (`engine.scheme_for`;
            default `BitConfig(bits={})`); 8-bit layers of W8A8 configs are timed as QDQ.
        fp32_model: The model exported in FP32 (`allocator.export.float_onnx`); when given,
            the table's `overhead_us` is its ONNX Runtime time minus its layers' FP32 times.
        repeats: Timed runs per measurement (p50 and p90 over them).
        table: An ONNX Runtime table of this version and batch to add to.
        model_name: Recorded in the table.
        accuracy_level: As the export is made (`allocator.export.export_onnx`).
        threads: ONNX Runtime intra-op threads (default: torch's).
        working_set_bytes, max_copies: Copies of a layer side by side (module docstring).

    Returns:
        The table; its fingerprint has `runtime` "onnxruntime" and the installed version.

    Raises:
        RuntimeMismatchError: `table` was measured in another runtime or version.
        UnknownLayerError: `layers` names layers the model does not have.
    """
    require_onnxruntime()
    config = config or BitConfig(bits={})
    wanted = list(dict.fromkeys([FP32] + [bits_key(check_bits(b, where="bits"))
                                          for b in bits]))
    if isinstance(repeats, bool) or not isinstance(repeats, int) or repeats < 1:
        raise InvalidSpecError(f"`repeats` must be an integer >= 1, got {repeats!r}.")
    if accuracy_level not in ACCURACY_LEVELS:
        raise InvalidSpecError(f"`accuracy_level` must be one of {ACCURACY_LEVELS}, "
                               f"got {accuracy_level!r}.")
    batch = batch_size(example_inputs)
    if table is None:
        table = LatencyTable(device=DeviceFingerprint.current(RUNTIME), batch=batch,
                             repeats=repeats, model=model_name)
    else:
        _check_table(table, batch)
    inputs, groups = layers_by_shape(model, layers, example_inputs)
    active = [x for x in layers if x.calls > 0]
    modules = engine.quantizable_modules(model)
    for sig, members in groups.items():
        first = members[0]
        module, x = modules[first.name], inputs[first.name]
        entry = table.entries.get(sig)
        keys = [k for k in wanted if entry is None or k not in entry.times]
        n = copies_for(module, working_set_bytes=working_set_bytes, max_copies=max_copies)
        times: dict[str, Measurement] = {}
        for key in keys:
            build = _builder(module, key, config, x, accuracy_level)
            graph, kernel = _layer_model(build, tuple(x.shape), n)
            times[key] = _measure(graph, x.numpy(), n, kernel, repeats=repeats,
                                  threads=threads)
        table = table.with_entry(TableEntry(sig, first.kind, call_macs(first), times,
                                            depthwise=first.is_depthwise,
                                            layers=tuple(m.name for m in members)))
    overhead = None
    if fp32_model is not None:
        session = onnxruntime_session(fp32_model, threads=threads)
        whole = _time_session(session, onnxruntime_feed(session, example_inputs),
                              repeats=repeats).p50_us
        overhead = max(0.0, whole - sum(table.lookup(x, FP32).latency_us for x in active))
    return replace(table, overhead_us=overhead if overhead is not None else table.overhead_us,
                   model=model_name or table.model, repeats=repeats)


# ----------------------------------------------------------------------------- whole models


_COUNTED_OPS = ("MatMulNBits", "MatMul", "Gemm", "Conv", "DequantizeLinear", "QuantizeLinear",
                "DynamicQuantizeLinear")


def _op_counts(model: onnx.ModelProto | bytes | str | Path) -> dict[str, int]:
    """Nodes per counted op type of a model (what ran, as far as the graph says)."""
    onnx, _ = require_onnxruntime()
    if isinstance(model, bytes):
        proto = onnx.load_from_string(model)
    elif isinstance(model, str | Path):
        proto = onnx.load(str(model))
    else:
        proto = model
    counts = Counter(n.op_type for n in proto.graph.node if n.op_type in _COUNTED_OPS)
    return dict(sorted(counts.items()))


def onnxruntime_additivity(
    table: LatencyTable,
    layers: Sequence[LayerSpec],
    fp32_model: onnx.ModelProto | bytes | str | Path,
    models: Mapping[str, tuple[BitConfig, onnx.ModelProto | bytes | str | Path]],
    inputs: Any,
    *,
    repeats: int = DEFAULT_REPEATS,
    threads: int | None = None,
) -> list[AdditivityRow]:
    """Checks the table's whole-model predictions against exported models in ONNX Runtime.

    The FP32 model and the quantized ones are run in turn, one run each per round, so load
    that comes and goes on the machine hits them alike. The non-layer time is the FP32
    model's median minus the table's FP32 layer times; each prediction is the layers' table
    times at the config's widths plus it (`predict_latency`, no layout correction: ONNX
    Runtime chooses its layouts itself).

    Args:
        table: An ONNX Runtime table measured at the batch of `inputs`.
        layers: The model's layers on `inputs`.
        fp32_model: The model exported in FP32.
        models: Label -> (config, its exported model).
        inputs: The batch to time.
        repeats: Timed runs per model.
        threads: ONNX Runtime intra-op threads (default: torch's).

    Raises:
        RuntimeMismatchError: The table is not of this ONNX Runtime version.
    """
    _check_table(table, batch_size(inputs))
    medians = time_in_turn([fp32_model, *(m for _, m in models.values())], inputs,
                           repeats=repeats, threads=threads)
    active = [x for x in layers if x.calls > 0]
    overhead = max(0.0, medians[0] - sum(table.lookup(x, FP32).latency_us for x in active))
    rows = []
    for (label, (config, model)), measured in zip(models.items(), medians[1:], strict=True):
        pred = predict_latency(table, layers, config, overhead_us=overhead, gaps=())
        rows.append(AdditivityRow(label, pred.latency_us, pred.additive_us, measured,
                                  pred.layout_correction_us, overhead, pred.kernels,
                                  _op_counts(model), len(pred.interpolated)))
    return rows


def time_in_turn(models: Sequence[Any], inputs: Any, *, repeats: int = DEFAULT_REPEATS,
                 warmup: int = 2, threads: int | None = None) -> list[float]:
    """Median whole-model time (us) of each model (an ONNX model or its file, or an open
    session) in ONNX Runtime on `inputs`, the models run in turn, one run each per round,
    so load that comes and goes on the machine hits them alike (the first `warmup` rounds
    are not counted)."""
    sessions = [m if hasattr(m, "get_inputs") else onnxruntime_session(m, threads=threads)
                for m in models]
    feeds = [onnxruntime_feed(s, inputs) for s in sessions]
    samples: list[list[float]] = [[] for _ in sessions]
    for i in range(warmup + repeats):
        for session, feed, out in zip(sessions, feeds, samples, strict=True):
            t0 = time.perf_counter()
            session.run(None, feed)
            if i >= warmup:
                out.append((time.perf_counter() - t0) * 1e6)
    return [statistics.median(times) for times in samples]
