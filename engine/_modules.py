"""`QuantLinear` and `QuantConv2d`: modules that hold packed weights and run integer kernels.

The stored state (`state_dict`) is the canonical packed form: `qweight` (bit stream),
`scales`, `zeros` (asymmetric only), `bias`, and for convs the calibrated activation
ranges. Kernel-specific layouts are prepared lazily per device and never stored.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable
from typing import Any, TypeVar

import torch
import torch.nn.functional as F
from torch import nn

from engine import _kernels as K
from engine._errors import KernelUnavailableError
from engine._fbgemm_rows import fbgemm_rows_linear, prepare_fbgemm_rows
from engine._int8_paths import conv_max_code, fbgemm_max_code, int8_linear_choice
from engine._kernels import KernelPath, Pair
from engine._layers import int_pair
from engine._quantizer import QuantizedWeight, QuantScheme
from engine._types import ACTIVATION_GRIDS

KERNEL_CHOICES = ("auto", "reference")
_T = TypeVar("_T")


class QuantizedLayer(nn.Module):
    """Common state of the quantized modules: packed weight, scales, zeros, bias."""

    # buffers (registered in __init__; declared for the type checker)
    qweight: torch.Tensor
    scales: torch.Tensor
    zeros: torch.Tensor | None
    bias: torch.Tensor | None

    def __init__(self, qweight: QuantizedWeight, bias: torch.Tensor | None, kernel: str = "auto",
                 quantize_activations: bool = True):
        super().__init__()
        if kernel not in KERNEL_CHOICES:
            raise ValueError(f"`kernel` must be one of {KERNEL_CHOICES}, got {kernel!r}.")
        self.scheme: QuantScheme = qweight.scheme
        self.weight_shape: tuple[int, ...] = tuple(qweight.shape)
        # The weight as a matmul: N output rows of K reduced inputs (convs: C/groups * kh * kw).
        self.out_features: int = self.weight_shape[0]
        self.reduction_size: int = math.prod(self.weight_shape[1:])
        self.kernel = kernel
        # False: activations stay float (weight-only), so 8-bit layers run dequant.
        self.quantize_activations = quantize_activations
        self.register_buffer("qweight", qweight.packed)
        self.register_buffer("scales", qweight.scales)
        self.register_buffer("zeros", qweight.zeros)
        self.register_buffer("bias", None if bias is None else bias.detach().float().clone())
        self._prepared: dict[tuple[str, str], Any] = {}
        self.kernel_calls: Counter[str] = Counter()
        self.last_kernel: str | None = None
        # kernel path -> why it was chosen (the latest call's reason per path)
        self.kernel_reasons: dict[str, str] = {}

    # -- the stored form ------------------------------------------------------------------

    @property
    def bits(self) -> int:
        return self.scheme.bits

    def quantized_weight(self) -> QuantizedWeight:
        return QuantizedWeight(self.qweight, self.scales, self.zeros, self.weight_shape,
                               self.scheme)

    def dequantized_weight(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        return self.quantized_weight().dequantize(dtype)

    @property
    def weight_nbytes(self) -> int:
        """Real bytes of the packed weight with its scales and zero points."""
        return self.quantized_weight().nbytes

    def int8_weight(self) -> torch.Tensor:
        """Signed int8 weight matrix (N, K) of a symmetric 8-bit layer."""
        codes = self.quantized_weight().codes()
        return (codes.to(torch.int16) - self.scheme.offset).to(torch.int8)

    def _is_native_int8(self) -> bool:
        s = self.scheme
        return (s.bits == 8 and s.symmetric and s.group_size is None
                and self.quantize_activations)

    def _int4pack_ok(self, device_type: str = "cpu") -> bool:
        s, k = self.scheme, self.reduction_size
        n_multiple = 16 if device_type == "cpu" else 8  # the kernels' tile widths
        return (s.bits == 4 and s.group_size in K.INT4PACK_GROUP_SIZES
                and k % s.group_size == 0 and self.out_features % n_multiple == 0)

    def _group_size(self) -> int:
        """Columns per scale (all of a row when per channel)."""
        return self.scheme.effective_group_size(self.reduction_size)

    # -- lazily prepared kernel layouts ------------------------------------------------------

    def _prepare(self, path: KernelPath, device: torch.device, build: Callable[[], _T]) -> _T:
        key = (path, str(device))
        if key not in self._prepared:
            self._prepared[key] = build()
        return self._prepared[key]

    def _apply(self, fn: Callable[[torch.Tensor], torch.Tensor],
               recurse: bool = True) -> QuantizedLayer:  # .to(), .cuda(): layouts are stale
        self._prepared = {}
        return super()._apply(fn, recurse)

    def _load_from_state_dict(self, *args: Any, **kwargs: Any) -> None:
        self._prepared = {}
        return super()._load_from_state_dict(*args, **kwargs)

    def __getstate__(self) -> dict[str, Any]:  # deepcopy / pickle: layouts are rebuilt
        state = self.__dict__.copy()
        state["_prepared"] = {}
        return state

    def _record(self, path: KernelPath, reason: str) -> None:
        self.last_kernel = path.value
        self.kernel_calls[path.value] += 1
        self.kernel_reasons[path.value] = reason

    @property
    def last_kernel_reason(self) -> str | None:
        """Why the last call ran the kernel it ran (None before the first call)."""
        return None if self.last_kernel is None else self.kernel_reasons.get(self.last_kernel)

    def _dequant_reason(self) -> str:
        if self.kernel == "reference":
            return "kernel='reference' forces dequant"
        if self.scheme.bits == 8 and not self.quantize_activations:
            return "weight-only 8-bit: activations stay float, so no int8 kernel"
        return f"no integer kernel for {self.scheme.label} here"


# The per-row int8 paths and the (K, N) weight layout each runs on: a contiguous int8 or fp32
# matrix on the CPU; on CUDA the transposed view of the (N, K) matrix (column-major), which
# cuBLASLt takes directly (a contiguous copy ran 4x slower on an H100).
_PER_ROW_INT8: dict[KernelPath, Callable[[torch.Tensor], torch.Tensor]] = {
    KernelPath.CPU_INT8_INTMM: lambda w: w.t().contiguous(),
    KernelPath.CPU_INT8_EMULATED: lambda w: w.float().t().contiguous(),
    KernelPath.CUDA_INT8_INTMM: lambda w: w.contiguous().t(),
}


class QuantLinear(QuantizedLayer):
    """Drop-in replacement of `nn.Linear` with a packed 2..8-bit weight.

    Kernel choice per call (CPU): 8-bit symmetric per-channel runs the int8 GEMM that
    `engine._int8_paths.int8_linear_choice` picks for the row count: the first exact one
    not slower than fp32 emulation among fbgemm's dynamic int8 (a single row), oneDNN with
    symmetric 8-bit rows, fbgemm with asymmetric rows (0..129 on AVX2-only CPUs) and
    torch._int_mm, else the same per-row arithmetic emulated on an fp32 GEMM. `choose_path`
    and the module's `kernel_reasons` say why. 4-bit group-wise runs the
    int4 weight-packed kernel up to 256 rows and dequant beyond (where it is faster); all
    other widths run dequant. CUDA: int8 on torch._int_mm (the same per-row arithmetic),
    4-bit on tinygemm up to `INT4PACK_MAX_ROWS_CUDA` rows and bf16 unpack + cuBLAS beyond.
    `kernel="reference"` forces dequant everywhere.
    """

    act_smoothing: torch.Tensor | None  # buffer

    def __init__(
        self,
        qweight: QuantizedWeight,
        bias: torch.Tensor | None,
        kernel: str = "auto",
        act_smoothing: torch.Tensor | None = None,
        quantize_activations: bool = True,
        activation_grid: str = "row",
    ):
        super().__init__(qweight, bias, kernel, quantize_activations)
        if activation_grid not in ACTIVATION_GRIDS:
            raise ValueError(f"`activation_grid` must be one of {ACTIVATION_GRIDS}, "
                             f"got {activation_grid!r}.")
        self.in_features = self.weight_shape[1]
        # W8A8 inputs: a grid per row, or one per call over the whole input (`BitConfig`).
        self.activation_grid = activation_grid
        # SmoothQuant: inputs are multiplied by this (K,) vector; the stored weight columns
        # were divided by it, so the product is unchanged but activation outliers shrink.
        self.register_buffer("act_smoothing", None if act_smoothing is None
                             else act_smoothing.detach().float().clone())

    def select_path(self, rows: int, device: torch.device) -> KernelPath:
        return self.choose_path(rows, device)[0]

    def choose_path(self, rows: int, device: torch.device) -> tuple[KernelPath, str]:
        """The kernel path for `rows` input rows on `device`, and why (one sentence)."""
        if self.kernel == "reference":
            return KernelPath.DEQUANT, self._dequant_reason()
        n, k = self.out_features, self.in_features
        if self._is_native_int8() and self.activation_grid == "tensor":
            return self._tensor_grid_path(device)
        if device.type == "cuda":
            if self._is_native_int8() and n % 8 == 0 and k % 8 == 0:
                return KernelPath.CUDA_INT8_INTMM, "CUDA int8: torch._int_mm, per-row scales"
            if self._int4pack_ok("cuda") and hasattr(torch.ops.aten, "_weight_int4pack_mm"):
                limit = K.INT4PACK_MAX_ROWS_CUDA
                if rows <= limit:
                    return KernelPath.CUDA_INT4PACK_BF16, f"4-bit, {rows} <= {limit} rows"
                return KernelPath.CUDA_DEQUANT_BF16, f"4-bit, {rows} > {limit} rows"
        elif device.type == "cpu":
            if self._is_native_int8():
                choice = int8_linear_choice(rows)
                return choice.path, choice.reason
            if self._int4pack_ok() and K.int4pack_cpu_available():
                limit = K.INT4PACK_MAX_ROWS_CPU
                if rows <= limit:
                    return KernelPath.INT4PACK_BF16, f"4-bit group-wise, {rows} <= {limit} rows"
                return KernelPath.DEQUANT, (f"4-bit at {rows} > {limit} rows: dequant + fp32 "
                                            "GEMM is faster than the int4 kernel")
        return KernelPath.DEQUANT, self._dequant_reason()

    @classmethod
    def _tensor_grid_path(cls, device: torch.device) -> tuple[KernelPath, str]:
        """Inputs on one uint8 grid per call: fbgemm's dynamic linear where it sums 8-bit
        codes exactly (its grid is that one), else the same arithmetic emulated."""
        if device.type == "cpu" and fbgemm_max_code() == 255:
            return KernelPath.FBGEMM_INT8_DYNAMIC, ("activation grid 'tensor': fbgemm's "
                                                    "dynamic int8, codes 0..255 exact here")
        why = ("fbgemm would round to 7-bit codes here" if device.type == "cpu"
               else f"no uint8 x int8 GEMM on {device.type}")
        return KernelPath.INT8_TENSOR_EMULATED, (
            f"activation grid 'tensor' emulated on fp32: {why}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lead = x.shape[:-1]
        x2d = x.reshape(-1, self.in_features)
        path, reason = self.choose_path(x2d.shape[0], x.device)
        y = self.run_path(path, x2d)
        self._record(path, reason)
        return y.reshape(*lead, self.out_features)

    def run_path(self, path: KernelPath, x2d: torch.Tensor) -> torch.Tensor:
        """Runs one named path on a 2-D input (used by forward, tests and the profiler)."""
        dev, bias, smoothing = x2d.device, self.bias, self.act_smoothing
        if path is KernelPath.ONEDNN_INT8_DYNAMIC:  # applies the smoothing itself
            prep = self._prepare(path, dev, lambda: K.prepare_onednn_linear(
                self.int8_weight(), self.scales[:, 0]))
            return K.onednn_linear(x2d, prep, bias, smoothing).to(x2d.dtype)
        if path in _PER_ROW_INT8:  # smooths itself
            w_t = self._prepare(path, dev, lambda: _PER_ROW_INT8[path](self.int8_weight()))
            return K.int8_rows_linear(x2d, w_t, self.scales[:, 0].float(), bias,
                                      smoothing).to(x2d.dtype)
        if path is KernelPath.INT8_TENSOR_EMULATED:  # smooths itself
            w_t = self._prepare(path, dev, lambda: self.int8_weight().float().t().contiguous())
            return K.tensor_grid_linear(x2d, w_t, self.scales[:, 0].float(), bias,
                                        smoothing).to(x2d.dtype)
        if path is KernelPath.FBGEMM_INT8_ROWS:  # smooths itself
            rows = self._prepare(path, dev, lambda: prepare_fbgemm_rows(
                self.int8_weight(), self.scales[:, 0], bias))
            return fbgemm_rows_linear(x2d, rows, smoothing,
                                      self._fbgemm_max_code()).to(x2d.dtype)
        if smoothing is not None:
            x2d = x2d * smoothing
        if path is KernelPath.FBGEMM_INT8_DYNAMIC:
            packed = self._prepare(path, dev, lambda: K.prepare_fbgemm_linear(
                self.int8_weight(), self.scales[:, 0], bias))
            reduce_range = self._fbgemm_max_code() < 255
            return K.fbgemm_linear(x2d, packed, reduce_range).to(x2d.dtype)
        if path is KernelPath.INT4PACK_BF16:
            int4 = self._prepare(path, dev, lambda: K.prepare_int4pack_cpu(
                self.quantized_weight().codes(), self.scales, self.zeros))
            return K.int4pack_linear_cpu(x2d, int4, self._group_size(), bias)
        if path is KernelPath.CUDA_INT4PACK_BF16:
            int4 = self._prepare(path, dev, lambda: K.prepare_int4pack_cuda(
                self.quantized_weight().codes(), self.scales, self.zeros))
            return K.int4pack_linear_cuda(x2d, int4, self._group_size(), bias)
        if path is KernelPath.CUDA_DEQUANT_BF16:
            y = F.linear(x2d.to(torch.bfloat16), self.dequantized_weight(torch.bfloat16))
            return K.bf16_output(y, x2d.dtype, bias)
        if path is KernelPath.DEQUANT:
            return F.linear(x2d, self.dequantized_weight(x2d.dtype), bias)
        raise KernelUnavailableError(f"kernel path {path.value!r} does not run linear layers.")

    @staticmethod
    def _fbgemm_max_code() -> int:
        max_code = fbgemm_max_code()
        if not max_code:
            raise KernelUnavailableError("fbgemm's int8 linear is unavailable or inexact on "
                                         "this CPU (see engine._int8_paths.fbgemm_max_code).")
        return max_code

    def extra_repr(self) -> str:
        return f"in={self.in_features}, out={self.out_features}, {self.scheme.label}"


# Values of each calibration call's conv input and output kept for the range search.
RANGE_SAMPLES_PER_CALL = 1 << 16

# Calibrated int8 convs run the first of these whose kernel is exact here. oneDNN's keeps
# fp32 outputs (37.9 vs 36.1 dB on a 128-channel 3x3 conv) at about the same speed here;
# fbgemm's stays first while latency tables and their layout model name it.
STATIC_CONV_PREFERENCE = (KernelPath.FBGEMM_INT8_STATIC_CONV, KernelPath.ONEDNN_INT8_STATIC_CONV)
_CONV_KERNEL = {KernelPath.FBGEMM_INT8_STATIC_CONV: "fbgemm",
                KernelPath.ONEDNN_INT8_STATIC_CONV: "onednn",
                KernelPath.ONEDNN_INT8_DYNAMIC: "onednn"}


class QuantConv2d(QuantizedLayer):
    """Drop-in replacement of `nn.Conv2d` (incl. depthwise) with a packed 2..8-bit weight.

    8-bit symmetric per-channel convs run a static int8 conv (channels-last) once their
    activation ranges are calibrated (`engine.apply(..., calibration=...)`): fbgemm's, else
    oneDNN's with fp32 output (bias fused, no output grid); before that oneDNN's int8 conv
    with per-call activation ranges. Input codes stop at the widest range the kernel sums
    exactly on this CPU (`engine._int8_paths.conv_max_code`: 0..129 on AVX2-only CPUs).
    Other widths: dequant.
    """

    input_range: torch.Tensor  # buffers: (min, max) seen in calibration, NaN before
    output_range: torch.Tensor

    def __init__(
        self,
        qweight: QuantizedWeight,
        bias: torch.Tensor | None,
        stride: tuple[int, int],
        padding: tuple[int, int],
        dilation: tuple[int, int],
        groups: int,
        kernel: str = "auto",
        quantize_activations: bool = True,
    ):
        super().__init__(qweight, bias, kernel, quantize_activations)
        self.stride, self.padding = int_pair(stride), int_pair(padding)
        self.dilation, self.groups = int_pair(dilation), int(groups)
        self.register_buffer("input_range", torch.full((2,), math.nan))
        self.register_buffer("output_range", torch.full((2,), math.nan))
        self.calibrating = False
        # The interval the activation right after this conv keeps (ReLU: [0, inf), ReLU6:
        # [0, 6]), set by `engine.apply` where a Sequential runs one on this conv's output
        # alone: the requantized output grid then spans only what survives it.
        self.output_clamp: tuple[float, float] | None = None
        # strided samples of the calibration inputs and outputs, for `finish_calibration`
        self._samples: dict[str, list[torch.Tensor]] = {}
        # While set, calls sum the per-channel shift the int8 path's rounding of the
        # activations adds to the float conv's output (`correct_activation_bias`).
        self.measuring_shift = False
        self._shift: list[torch.Tensor] = []

    @property
    def calibrated(self) -> bool:
        return bool(torch.isfinite(self.input_range).all()
                    and torch.isfinite(self.output_range).all())

    def select_path(self, device: torch.device) -> KernelPath:
        return self.choose_path(device)[0]

    def choose_path(self, device: torch.device) -> tuple[KernelPath, str]:
        """The kernel path on `device`, and why (one sentence)."""
        if self.kernel == "reference" or device.type != "cpu" or not self._is_native_int8():
            return KernelPath.DEQUANT, self._dequant_reason()
        if self.calibrated:
            for path in STATIC_CONV_PREFERENCE:
                max_code = conv_max_code(_CONV_KERNEL[path])
                if max_code:
                    return path, (f"calibrated input grid, codes 0..{max_code} (the widest "
                                  "this kernel sums exactly here)")
        max_code = conv_max_code("onednn")
        if max_code:
            return KernelPath.ONEDNN_INT8_DYNAMIC, (
                f"{'not calibrated: ' if not self.calibrated else ''}input grid per call, "
                f"codes 0..{max_code}")
        return KernelPath.DEQUANT, "no exact int8 conv kernel here"

    def _geometry(self) -> tuple[Pair, Pair, Pair, int]:
        return self.stride, self.padding, self.dilation, self.groups

    def _dequant_conv(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.dequantized_weight(x.dtype), self.bias, *self._geometry())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.calibrating:
            y = self._dequant_conv(x)
            self._observe(x, y)
            return y
        path, reason = self.choose_path(x.device)
        y = self.run_path(path, x)
        self._record(path, reason)
        if self.measuring_shift and path is not KernelPath.DEQUANT:
            self._sum_shift(x, y)
        return y

    @torch.no_grad()
    def _sum_shift(self, x: torch.Tensor, y: torch.Tensor) -> None:
        ref = self._dequant_conv(x)
        if self.output_clamp is not None:  # compared where the activation leaves them
            ref, y = ref.clamp(*self.output_clamp), y.clamp(*self.output_clamp)
        diff = (y.float() - ref.float()).sum(dim=(0, 2, 3))
        count = torch.tensor([y.shape[0] * y.shape[2] * y.shape[3]], dtype=torch.float32)
        if self._shift:
            self._shift[0] += diff
            self._shift[1] += count
        else:
            self._shift = [diff, count]

    @torch.no_grad()
    def correct_activation_bias(self) -> bool:
        """Subtracts from the bias the mean per-channel output shift that rounding the
        activations (input grid, output requantization) added over the calls since
        `measuring_shift` was set; the kernel layouts holding the bias are rebuilt. Returns
        whether anything was measured."""
        shift, self._shift = self._shift, []
        if not shift or float(shift[1]) == 0.0:
            return False
        mean = shift[0] / shift[1]
        if self.bias is None:
            self.bias = torch.zeros(self.out_features, device=mean.device)
        self.bias.sub_(mean.to(self.bias.device))
        self._prepared = {}
        return True

    def _input_qparams(self, max_code: int) -> tuple[float, int]:
        lo, hi = self.input_range.tolist()
        return K.uint8_affine_params(lo, hi, max_code)

    def _max_code(self, path: KernelPath) -> int:
        max_code = conv_max_code(_CONV_KERNEL[path])
        if not max_code:
            raise KernelUnavailableError(
                f"kernel path {path.value!r} is unavailable or inexact on this CPU.")
        return max_code

    def run_path(self, path: KernelPath, x: torch.Tensor) -> torch.Tensor:
        dev = x.device
        if path is KernelPath.FBGEMM_INT8_STATIC_CONV:
            packed = self._prepare(path, dev, lambda: K.prepare_fbgemm_conv(
                self.int8_weight().reshape(self.weight_shape), self.scales[:, 0], self.bias,
                *self._geometry()))
            max_code = self._max_code(path)
            out_lo, out_hi = self.output_range.tolist()
            out_q = K.uint8_affine_params(out_lo, out_hi)
            return K.fbgemm_conv_static(x, packed, self._input_qparams(max_code), out_q,
                                        max_code).to(x.dtype)
        if path in (KernelPath.ONEDNN_INT8_DYNAMIC, KernelPath.ONEDNN_INT8_STATIC_CONV):
            prep = self._prepare(  # one layout for both oneDNN paths
                KernelPath.ONEDNN_INT8_DYNAMIC, dev, lambda: K.prepare_onednn_conv(
                    self.int8_weight().reshape(self.weight_shape), self.scales[:, 0],
                    *self._geometry()))
            max_code = self._max_code(path)
            if path is KernelPath.ONEDNN_INT8_DYNAMIC:
                return K.onednn_conv_dynamic(x, prep, self.bias, *self._geometry(),
                                             max_code).to(x.dtype)
            in_q = self._input_qparams(max_code)
            return K.onednn_conv_static(x, prep, self.bias, in_q, max_code,
                                        *self._geometry()).to(x.dtype)
        if path is KernelPath.DEQUANT:
            return self._dequant_conv(x)
        raise KernelUnavailableError(f"kernel path {path.value!r} does not run conv layers.")

    @torch.no_grad()
    def _observe(self, x: torch.Tensor, y: torch.Tensor) -> None:
        if self.output_clamp is not None:
            y = y.clamp(*self.output_clamp)
        for key, buf, t in (("input", self.input_range, x), ("output", self.output_range, y)):
            flat = t.detach().float().flatten()
            step = max(1, flat.numel() // RANGE_SAMPLES_PER_CALL)
            self._samples.setdefault(key, []).append(flat[::step].cpu().clone())
            lo, hi = torch.aminmax(flat)
            if torch.isnan(buf).any():
                buf.copy_(torch.stack([lo, hi]))
            else:
                buf[0] = torch.minimum(buf[0], lo)
                buf[1] = torch.maximum(buf[1], hi)

    @torch.no_grad()
    def finish_calibration(self) -> None:
        """Narrows the observed ranges to the ones whose grids round the sampled inputs and
        outputs with the least squared error (`engine._kernels.mse_range`): the input grid
        at the codes this CPU's static kernel sums exactly, the output grid at 0..255."""
        samples, self._samples = self._samples, {}
        if not self.calibrated or not samples:
            return
        in_codes = conv_max_code(_CONV_KERNEL[STATIC_CONV_PREFERENCE[0]]) or 255
        for key, buf, qmax in (("input", self.input_range, in_codes),
                               ("output", self.output_range, 255)):
            lo, hi = buf.tolist()
            buf.copy_(torch.tensor(K.mse_range(torch.cat(samples[key]), lo, hi, qmax)))

    def extra_repr(self) -> str:
        return (f"{self.weight_shape}, stride={self.stride}, padding={self.padding}, "
                f"groups={self.groups}, {self.scheme.label}")
