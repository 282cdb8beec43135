"""The integer kernels the quantized modules run on, one small function per path.

Each path has a stable name that reports carry (`KernelPath`). Paths that need weights in a
kernel-specific layout have a `prepare_*` function; its result is cached by the module and
never stored. Only int8 and int4 have real integer kernels; every other bit-width runs as
`dequant` (unpack, scale, float matmul) and is reported as such.
"""

from __future__ import annotations

import functools
import math
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from enum import StrEnum
from typing import Any, TypeAlias

import torch
import torch.nn.functional as F

from engine._platform import configure_runtime


class KernelPath(StrEnum):
    """Names of the execution paths, as they appear in every report."""

    FBGEMM_INT8_DYNAMIC = "fbgemm-int8"
    """x86/fbgemm int8 GEMM; activations quantized per call (per tensor, uint8; 7-bit where
    the CPU would saturate 8-bit codes, see `engine._int8_paths.fbgemm_max_code`): single
    rows, where the tensor grid is the row grid."""
    FBGEMM_INT8_ROWS = "fbgemm-int8-rows"
    """x86/fbgemm u8 x s8 GEMM with fp32 output; each activation row quantized per call to
    its own asymmetric grid, as wide as this CPU sums exactly (0..255 with VNNI, 0..129 on
    AVX2-only CPUs, whose int16 pair sums would saturate 8-bit codes); the few channels
    that dominate the rows' ranges run in fp32 (`engine._fbgemm_rows`)."""
    ONEDNN_INT8_DYNAMIC = "onednn-int8"
    """oneDNN int8 GEMM/conv with fp32 output; activations quantized per call (linear: per
    row, symmetric int8; conv: per tensor, uint8)."""
    FBGEMM_INT8_STATIC_CONV = "fbgemm-int8-static"
    """x86/fbgemm int8 conv, channels-last, input and output ranges fixed by calibration."""
    ONEDNN_INT8_STATIC_CONV = "onednn-int8-static"
    """oneDNN int8 conv, channels-last, input range fixed by calibration, fp32 output with
    the bias fused (no output grid, no range pass over the input)."""
    INT4PACK_BF16 = "int4pack-bf16"
    """PyTorch's int4 weight-packed matmul (group-wise asymmetric), bf16 activations."""
    CPU_INT8_INTMM = "cpu-int8-intmm"
    """CPU int8 x int8 -> int32 GEMM (torch._int_mm), per-row activation scales: where
    oneDNN's int8 matmul is slow or inexact on this CPU (see `onednn_int8_usable`)."""
    CPU_INT8_EMULATED = "cpu-int8-emulated"
    """The same per-row int8 arithmetic on an fp32 GEMM of the integer values (exact while
    the integer sums stay below 2**24): where this CPU has no int8 GEMM that is both exact
    and not slower (`engine._int8_paths`), so W8A8 accuracy is what int8 CPUs measure,
    with no int8 speedup."""
    INT8_TENSOR_EMULATED = "int8-tensor-emulated"
    """One asymmetric uint8 grid per call over the whole input (`activation_grid`
    "tensor"), on an fp32 GEMM of the integer values: ONNX Runtime's DynamicQuantizeMatMul
    arithmetic wherever fbgemm's dynamic linear would round otherwise (7-bit codes on
    AVX2-only CPUs; CUDA)."""
    CUDA_INT8_INTMM = "cuda-int8-intmm"
    """CUDA int8 x int8 -> int32 GEMM (torch._int_mm), per-row activation scales."""
    CUDA_INT4PACK_BF16 = "cuda-int4pack-bf16"
    """CUDA int4 weight-packed matmul (tinygemm), bf16 activations."""
    CUDA_DEQUANT_BF16 = "cuda-dequant-bf16"
    """CUDA: the packed weight unpacked to bf16 on each call, then cuBLAS's bf16 GEMM: 4-bit
    layers at row counts where tinygemm is the slower of the two (same bf16 activations)."""
    DEQUANT = "dequant"
    """Packed codes unpacked and scaled to float, then a float matmul/conv: no low-bit kernel."""


INT4PACK_GROUP_SIZES = (32, 64, 128, 256)
# Rows above which the CPU int4 kernel is slower than dequantize + fp32 GEMM (measured here:
# 0.41x of fp32 at M=4096, ~1x for dequant; 4.5x at M=1).
INT4PACK_MAX_ROWS_CPU = 256
# Rows above which CUDA 4-bit linears unpack to bf16 for cuBLAS rather than run tinygemm
# (benchmarks/engine_cuda.py on an H100, GPU time: tinygemm 157 vs 210 us at 128 rows of
# 4096x4096, 597 vs 226 us at 512; 4096x14336: 521 vs 691, 2035 vs 744).
INT4PACK_MAX_ROWS_CUDA = 128

# torch's prepacked weights (script objects of its quantized and oneDNN ops): opaque here.
PackedParams: TypeAlias = Any
# The prepared layouts of the paths with more than one part.
OneDNNPrepared: TypeAlias = tuple[PackedParams, torch.Tensor, torch.Tensor]
Int4Prepared: TypeAlias = tuple[torch.Tensor, torch.Tensor]
Pair: TypeAlias = tuple[int, int]


@contextmanager
def quiet_deprecations() -> Iterator[None]:
    """Silences torch's "quantized tensors are deprecated" warning around the calls that make
    them (the fbgemm paths): it is addressed to torch's developers, not to our users."""
    with warnings.catch_warnings():
        for category in (UserWarning, DeprecationWarning):
            warnings.filterwarnings("ignore", message=r".*deprecated", category=category)
        yield


@functools.cache
def int4pack_cpu_available() -> bool:
    return hasattr(torch.ops.aten, "_weight_int4pack_mm_for_cpu") and hasattr(
        torch.ops.aten, "_convert_weight_to_int4pack_for_cpu"
    )


@functools.cache
def onednn_available() -> bool:
    try:
        return (hasattr(torch.ops.onednn, "qlinear_pointwise")
                and torch.backends.mkldnn.is_available())
    except (AttributeError, RuntimeError):
        return False


def _probe_operands() -> tuple[torch.Tensor, torch.Tensor]:
    """Full-range int8 operands of the kernel probes: x (64, 256) and w (256, 256)."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randint(-127, 128, (64, 256), dtype=torch.int8, generator=gen)
    w = torch.randint(-127, 128, (256, 256), dtype=torch.int8, generator=gen)
    return x, w


@contextmanager
def _one_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def fastest_us(calls: Sequence[Callable[[], object]], repeats: int = 5) -> list[float]:
    """The fastest of `repeats` single-thread runs of each call, in microseconds.

    For the kernel probes, which compare kernels rather than measure a model: on one
    thread, and interleaved, with the fastest run kept, because on a shared machine every
    other process only adds time, and a multi-threaded call waits for its slowest thread
    (on 2 cores at load 12, any parallel op took 20 ms). Each call runs once untimed first.
    """
    configure_runtime()
    best = [math.inf] * len(calls)
    with _one_thread(), torch.inference_mode():
        for call in calls:
            call()
        for _ in range(repeats):
            for i, call in enumerate(calls):
                start = time.perf_counter()
                call()
                best[i] = min(best[i], (time.perf_counter() - start) * 1e6)
    return best


def _time_vs_fp32(int8_matmul: Callable[[], torch.Tensor], x: torch.Tensor,
                  w: torch.Tensor) -> float:
    """(int8 time - 200 us) / fp32 time of x @ wᵀ: at most 4 counts as optimized code."""
    xf, wf_t = x.float(), w.float().t()
    int8_us, fp32_us = fastest_us([int8_matmul, lambda: xf @ wf_t], repeats=3)
    return (int8_us - 200.0) / fp32_us


@functools.cache
def _onednn_int8_probe() -> tuple[bool, float]:
    """(exact, `_time_vs_fp32`) of oneDNN's int8 matmul; (False, inf) where it cannot run."""
    if not onednn_available():
        return False, math.inf
    try:
        x, w = _probe_operands()
        packed = torch.ops.onednn.qlinear_prepack(w, None)
        scales, zero = torch.ones(256), torch.zeros(256, dtype=torch.int64)

        def int8_matmul() -> torch.Tensor:
            return torch.ops.onednn.qlinear_pointwise(
                x, 1.0, 0, packed, scales, zero, None, 1.0, 0, torch.float32, "none", [], "")

        # integer sums below 2**24 are exact in float32
        exact = torch.equal(int8_matmul(), x.float() @ w.float().t())
        return exact, _time_vs_fp32(int8_matmul, x, w)
    except RuntimeError:
        return False, math.inf


def onednn_int8_exact() -> bool:
    """Whether oneDNN's int8 matmul gives exact integer products on this CPU.

    Not on AVX2-only CPUs (seen on an AMD EPYC Milan): u8 x s8 products are summed in pairs
    into saturating int16, which turns full-range int8 activations into wrong results (a
    two-layer MLP at 12.7 dB SQNR instead of 45 dB).
    """
    return _onednn_int8_probe()[0]


def onednn_int8_usable() -> bool:
    """Whether oneDNN's int8 matmul is both exact and optimized on this CPU.

    Besides `onednn_int8_exact`: with PyTorch's prepacked weight layout oneDNN falls back to
    its reference int8 matmul on some CPUs with AVX-512 VNNI but no AMX (an AMD EPYC:
    64x384x384 in 78 ms, about 1000x an fp32 matmul).
    """
    exact, slowdown = _onednn_int8_probe()
    return exact and slowdown <= 4.0


@functools.cache
def int_mm_cpu_available() -> bool:
    """torch._int_mm on CPU (int8 x int8 -> int32)."""
    try:
        a = torch.ones(32, 16, dtype=torch.int8)
        return bool(torch._int_mm(a, a.t().contiguous())[0, 0] == 16)
    except (AttributeError, RuntimeError):
        return False


@functools.cache
def int_mm_cpu_fast() -> bool:
    """Whether torch._int_mm runs optimized code on this CPU: not on AVX2-only CPUs, where
    it is a plain loop (an AMD EPYC Milan: 2048x384x1536 in 944 ms, 47x fp32)."""
    if not int_mm_cpu_available():
        return False
    x, w = _probe_operands()
    w_t = w.t().contiguous()
    return _time_vs_fp32(lambda: torch._int_mm(x, w_t), x, w) <= 4.0


def cpu_int8_linear_path(rows: int) -> KernelPath:
    """The kernel a symmetric per-channel int8 linear runs on this CPU for `rows` input rows:
    the first exact int8 path not slower than fp32 emulation, as probed by
    `engine._int8_paths.int8_linear_choice` (which also says why)."""
    from engine._int8_paths import int8_linear_choice

    return int8_linear_choice(rows).path


@functools.cache
def fbgemm_available() -> bool:
    engines = torch.backends.quantized.supported_engines
    return "x86" in engines or "fbgemm" in engines


def use_x86_quantized_engine() -> None:
    if "x86" in torch.backends.quantized.supported_engines:
        torch.backends.quantized.engine = "x86"
    elif "fbgemm" in torch.backends.quantized.supported_engines:
        torch.backends.quantized.engine = "fbgemm"


def uint8_affine_params(lo: float, hi: float, qmax: int = 255) -> tuple[float, int]:
    """Scale and zero point of an asymmetric grid of codes 0..qmax covering [lo, hi] and 0
    (qmax 127 where the CPU's int8 kernels would saturate on 8-bit codes)."""
    lo, hi = min(lo, 0.0), max(hi, 0.0)
    scale = (hi - lo) / qmax
    if not scale > 0:
        scale = 1.0
    zero = int(min(qmax, max(0, round(-lo / scale))))
    return scale, zero


# Ranges `mse_range` tries: both ends of the observed range scaled by each factor, and the
# ranges between the samples' quantiles at each tail fraction (heavy tails).
RANGE_FACTORS = tuple(1.0 - 0.025 * i for i in range(29))  # 1.0 .. 0.3
TAIL_FRACTIONS = (1e-2, 1e-3, 1e-4, 1e-5)


def mse_range(samples: torch.Tensor, lo: float, hi: float, qmax: int = 255) -> tuple[float, float]:
    """The range, within the observed [lo, hi], whose grid of codes 0..qmax rounds `samples`
    with the least squared error: the observed range scaled by each of `RANGE_FACTORS`, and
    the samples' quantile ranges that leave out each of `TAIL_FRACTIONS` at either end.

    `samples` are a strided subset of what was observed, so extremes rarer than the stride
    (one value in a whole calibration tensor) are not in them and do not widen the grid
    for every other value; at 8 bits the least-squares range of the full data would keep
    almost any extreme (a clipped value costs its distance squared, a coarser grid only a
    step squared over 12 per value)."""
    x = samples.float().flatten()
    candidates = [(lo * f, hi * f) for f in RANGE_FACTORS]
    if x.numel() > 1:
        probs = torch.tensor([p for f in TAIL_FRACTIONS for p in (f, 1.0 - f)])
        q = torch.quantile(x, probs).tolist()
        candidates += [(max(lo, min(a, 0.0)), min(hi, max(b, 0.0)))
                       for a, b in zip(q[::2], q[1::2], strict=True)]
    best, best_err = (lo, hi), math.inf
    for a, b in candidates:
        scale, zero = uint8_affine_params(a, b, qmax)
        codes = torch.round(x * (1.0 / scale)).add_(zero).clamp_(0, qmax)
        err = float(codes.sub_(zero).mul_(scale).sub_(x).pow_(2).mean())
        if err < best_err:
            best, best_err = (a, b), err
    return best


def _quantize_uint8(x: torch.Tensor, scale: float, zero: int, qmax: int) -> torch.Tensor:
    return torch.round(x * (1.0 / scale)).add_(zero).clamp_(0, qmax).to(torch.uint8)


def _quantize_uint8_dynamic(x: torch.Tensor, qmax: int) -> tuple[torch.Tensor, float, int]:
    lo, hi = torch.aminmax(x)
    scale, zero = uint8_affine_params(float(lo), float(hi), qmax)
    return _quantize_uint8(x, scale, zero, qmax), scale, zero


# ----------------------------------------------------------------------------- int8 linear


def prepare_fbgemm_linear(w_int8: torch.Tensor, scales: torch.Tensor,
                          bias: torch.Tensor | None) -> PackedParams:
    """Packs a symmetric per-channel int8 weight (N, K) for fbgemm's dynamic linear."""
    use_x86_quantized_engine()
    n = w_int8.shape[0]
    with quiet_deprecations():
        qw = torch._make_per_channel_quantized_tensor(
            w_int8.contiguous(), scales.double(), torch.zeros(n, dtype=torch.long), 0
        )
        return torch.ops.quantized.linear_prepack(qw, None if bias is None else bias.float())


def fbgemm_linear(x2d: torch.Tensor, packed: PackedParams, reduce_range: bool) -> torch.Tensor:
    """fbgemm's dynamic linear: one uint8 grid for the whole input, 7-bit if `reduce_range`."""
    return torch.ops.quantized.linear_dynamic(x2d.float(), packed, reduce_range)


def prepare_onednn_linear(w_int8: torch.Tensor, scales: torch.Tensor) -> OneDNNPrepared:
    packed = torch.ops.onednn.qlinear_prepack(w_int8.contiguous(), None)
    zero = torch.zeros(w_int8.shape[0], dtype=torch.int64)
    return packed, scales.float().contiguous(), zero


def onednn_linear(
    x2d: torch.Tensor, prepared: OneDNNPrepared, bias: torch.Tensor | None,
    smoothing: torch.Tensor | None = None,
) -> torch.Tensor:
    """int8 GEMM with symmetric per-row activation scales.

    Per-row (per-token) scales keep one outlier row from coarsening every other row's grid
    (all-int8 MiniLM: cosine 0.9974 per row vs 0.9931 per tensor). oneDNN takes a single
    activation scale, so the GEMM runs with scale 1 and the row scales multiply its fp32
    output, together with the bias, in one pass. `smoothing` (SmoothQuant) multiplies the
    input first; the passes over the activations are kept to the minimum, since at large M
    they cost as much as the int8 GEMM itself.
    """
    packed, scales, zero = prepared
    qx, row_scale = _int8_rows(x2d, smoothing)
    acc = torch.ops.onednn.qlinear_pointwise(
        qx, 1.0, 0, packed, scales, zero, None, 1.0, 0, torch.float32, "none", [], ""
    )
    return _rescale_rows(acc, row_scale, bias)


def _int8_rows(x2d: torch.Tensor, smoothing: torch.Tensor | None
               ) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric int8 codes of each row (after SmoothQuant's multiply) and the row scales."""
    x2d = x2d.float()
    xs = x2d * smoothing if smoothing is not None else x2d
    row_scale = xs.abs().amax(dim=1, keepdim=True).clamp_(min=1e-12).div_(127.0)
    scaled = xs.div_(row_scale) if xs is not x2d else xs / row_scale
    return scaled.round_().to(torch.int8), row_scale


def _rescale_rows(acc: torch.Tensor, row_scale: torch.Tensor,
                  bias: torch.Tensor | None) -> torch.Tensor:
    """acc * row_scale (+ bias) in one pass over the fp32 output."""
    if bias is None:
        return acc.mul_(row_scale)
    return torch.addcmul(bias, acc, row_scale)


# ----------------------------------------------------------------------------- int4 linear


def int4_scales_and_zeros(
    scales: torch.Tensor, zeros: torch.Tensor | None, offset: int = 8
) -> torch.Tensor:
    """(N, G) scales and integer zeros -> (G, N, 2) bf16 in the int4pack kernels' form.

    The kernels compute w = (q - 8) * scale + zero_f, so zero_f = (8 - zero) * scale.
    """
    z = torch.full_like(scales, float(offset)) if zeros is None else zeros.float()
    zero_f = (offset - z) * scales
    return torch.stack([scales, zero_f], dim=-1).transpose(0, 1).contiguous().to(torch.bfloat16)


def prepare_int4pack_cpu(codes: torch.Tensor, scales: torch.Tensor,
                         zeros: torch.Tensor | None) -> Int4Prepared:
    packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(codes.to(torch.int32), 2)
    return packed, int4_scales_and_zeros(scales, zeros)


def bf16_output(y: torch.Tensor, dtype: torch.dtype, bias: torch.Tensor | None) -> torch.Tensor:
    """A bf16-activation kernel's output back in the caller's dtype, plus the float bias."""
    y = y.to(dtype)
    return y if bias is None else y + bias


def int4pack_linear_cpu(x2d: torch.Tensor, prepared: Int4Prepared, group_size: int,
                        bias: torch.Tensor | None) -> torch.Tensor:
    packed, sz = prepared
    y = torch.ops.aten._weight_int4pack_mm_for_cpu(x2d.to(torch.bfloat16), packed, group_size, sz)
    return bf16_output(y, x2d.dtype, bias)


# ----------------------------------------------------------------------------- CUDA


def prepare_int4pack_cuda(codes: torch.Tensor, scales: torch.Tensor,
                          zeros: torch.Tensor | None) -> Int4Prepared:
    # tinygemm wants (N, K/2) uint8 with the even column in the high nibble.
    c = codes.to(torch.uint8)
    w = (c[:, ::2] << 4 | c[:, 1::2]).contiguous()
    k = codes.shape[1]
    inner_k_tiles = next(t for t in (8, 4, 2) if k % (16 * t) == 0)
    packed = torch.ops.aten._convert_weight_to_int4pack(w, inner_k_tiles)
    return packed, int4_scales_and_zeros(scales.float(), zeros)


def int4pack_linear_cuda(x2d: torch.Tensor, prepared: Int4Prepared, group_size: int,
                         bias: torch.Tensor | None) -> torch.Tensor:
    packed, sz = prepared
    y = torch.ops.aten._weight_int4pack_mm(x2d.to(torch.bfloat16), packed, group_size, sz)
    return bf16_output(y, x2d.dtype, bias)


def int8_rows_linear(x2d: torch.Tensor, w_t: torch.Tensor, scales: torch.Tensor,
                     bias: torch.Tensor | None,
                     smoothing: torch.Tensor | None = None) -> torch.Tensor:
    """Per-row symmetric int8 activations x per-channel int8 weights (K, N), the same
    arithmetic as `onednn_linear` (SmoothQuant included): on torch._int_mm for an int8 `w_t`
    (CPU or CUDA; CUDA's takes more than 16 rows, so shorter inputs run zero-padded to 32),
    or on an fp32 GEMM of the integer values for a float one (exact while the integer sums
    stay below 2**24)."""
    qx, row_scale = _int8_rows(x2d, smoothing)
    m = qx.shape[0]
    if w_t.dtype != torch.int8:
        acc = qx.float() @ w_t
    else:
        if qx.is_cuda and m <= 16:
            qx = F.pad(qx, (0, 0, 0, 32 - m))
        acc = torch._int_mm(qx, w_t)[:m].float()
    return _rescale_rows(acc.mul_(scales[None, :]), row_scale, bias)


def tensor_grid(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(scale, zero point) of one asymmetric uint8 grid over all of `x`, as ONNX's
    DynamicQuantizeLinear computes them: the range widened to hold 0, scale = range / 255
    in float32 (1 for an all-zero input), zero point = -min / scale rounded half to even
    and saturated to 0..255. Both are 0-d float32 tensors."""
    x = x.float()
    lo, hi = x.min().clamp(max=0.0), x.max().clamp(min=0.0)
    span = hi - lo
    scale = torch.where(span > 0, span / 255.0, torch.ones_like(span))
    zero = torch.round((-lo / scale).clamp(0.0, 255.0))
    return scale, zero


def tensor_grid_linear(x2d: torch.Tensor, w_t: torch.Tensor, scales: torch.Tensor,
                       bias: torch.Tensor | None,
                       smoothing: torch.Tensor | None = None) -> torch.Tensor:
    """`tensor_grid` uint8 activations x per-channel int8 weights given as an fp32 (K, N)
    matrix of their integer values: (codes - zero point) @ W, times the input scale and
    each channel's weight scale, plus the bias; SmoothQuant's multiply first."""
    x = x2d.float() if smoothing is None else x2d.float() * smoothing
    scale, zero = tensor_grid(x)
    codes = torch.round(x / scale).add_(zero).clamp_(0.0, 255.0)
    y = (codes.sub_(zero) @ w_t).mul_(scales[None, :] * scale)
    return y if bias is None else y.add_(bias)


# ----------------------------------------------------------------------------- int8 conv


def prepare_fbgemm_conv(w_int8: torch.Tensor, scales: torch.Tensor, bias: torch.Tensor | None,
                        stride: Pair, padding: Pair, dilation: Pair,
                        groups: int) -> PackedParams:
    use_x86_quantized_engine()
    n = w_int8.shape[0]
    with quiet_deprecations():
        qw = torch._make_per_channel_quantized_tensor(
            w_int8.contiguous(), scales.double(), torch.zeros(n, dtype=torch.long), 0
        )
        return torch.ops.quantized.conv2d_prepack(
            qw, None if bias is None else bias.float(), list(stride), list(padding),
            list(dilation), groups,
        )


def fbgemm_conv_static(x: torch.Tensor, packed: PackedParams, in_qparams: tuple[float, int],
                       out_qparams: tuple[float, int], max_code: int = 255) -> torch.Tensor:
    """fbgemm's static int8 conv; inputs beyond the calibrated grid are clamped to codes
    0..max_code first (torch's quantizer clamps to 0..255 only, and wider codes would
    saturate on CPUs without VNNI)."""
    x = x.float().contiguous(memory_format=torch.channels_last)
    if max_code < 255:
        scale, zero = in_qparams
        x = x.clamp(-zero * scale, (max_code - zero) * scale)
    with quiet_deprecations():
        qx = torch.quantize_per_tensor(x, in_qparams[0], in_qparams[1], torch.quint8)
        qy = torch.ops.quantized.conv2d(qx, packed, out_qparams[0], out_qparams[1])
    return qy.dequantize()


def prepare_onednn_conv(w_int8: torch.Tensor, scales: torch.Tensor, stride: Pair, padding: Pair,
                        dilation: Pair, groups: int) -> OneDNNPrepared:
    packed = torch.ops.onednn.qconv_prepack(
        w_int8.contiguous(), scales.float(), 1.0, 0, list(stride), list(padding), list(dilation),
        groups, None,
    )
    return packed, scales.float().contiguous(), torch.zeros(w_int8.shape[0], dtype=torch.int64)


def onednn_conv_dynamic(x: torch.Tensor, prepared: OneDNNPrepared, bias: torch.Tensor | None,
                        stride: Pair, padding: Pair, dilation: Pair, groups: int,
                        max_code: int = 255) -> torch.Tensor:
    """oneDNN int8 conv with fp32 output; the input's range is taken per call, on codes
    0..max_code (`engine._int8_paths.conv_max_code`)."""
    x = x.float().contiguous(memory_format=torch.channels_last)
    qx, sx, zx = _quantize_uint8_dynamic(x, max_code)
    return _onednn_conv(qx, (sx, zx), prepared, bias, stride, padding, dilation, groups)


def onednn_conv_static(x: torch.Tensor, prepared: OneDNNPrepared, bias: torch.Tensor | None,
                       in_qparams: tuple[float, int], max_code: int, stride: Pair,
                       padding: Pair, dilation: Pair, groups: int) -> torch.Tensor:
    """oneDNN int8 conv with fp32 output on the calibrated input grid (codes 0..max_code,
    `in_qparams` from `uint8_affine_params` with that qmax)."""
    x = x.float().contiguous(memory_format=torch.channels_last)
    qx = _quantize_uint8(x, in_qparams[0], in_qparams[1], max_code)
    return _onednn_conv(qx, in_qparams, prepared, bias, stride, padding, dilation, groups)


def _onednn_conv(qx: torch.Tensor, in_qparams: tuple[float, int], prepared: OneDNNPrepared,
                 bias: torch.Tensor | None, stride: Pair, padding: Pair, dilation: Pair,
                 groups: int) -> torch.Tensor:
    packed, scales, zero = prepared
    return torch.ops.onednn.qconv2d_pointwise(
        qx, in_qparams[0], in_qparams[1], packed, scales, zero, bias, list(stride),
        list(padding), list(dilation), groups, 1.0, 0, torch.float32, "none", [], "",
    )
