"""`fbgemm-int8-rows`: int8 linears with per-row activation grids on fbgemm's u8 x s8 GEMM.

fbgemm takes one activation grid per call. Each row therefore goes in already mapped to
codes on its own asymmetric grid (scale 1, zero point 0), and the row grids come back in
the fp32 epilogue, one scaling pass and one small matmul added in place:

    y = row_scale * (codes @ Wᵀ) + [row_minimum, 1, outliers] @ [sum_k W; bias; W_outliers]

The codes stop at the widest range this CPU sums exactly (`engine._int8_paths
.fbgemm_max_code`: 255 with VNNI, 129 on AVX2-only CPUs, whose int16 pair sums saturate on
8-bit codes). With 7-bit codes a row's extremes matter twice as much, so the few activation
channels that dominate the rows' ranges (transformer outlier dimensions, GELU tails) are
taken out of the integer GEMM on each call and multiplied in fp32 in that epilogue matmul:
calibrated all-int8 MiniLM went from cosine 0.9987 to 0.9994 (symmetric 8-bit rows
emulated in fp32: 0.9992).
"""

from __future__ import annotations

from typing import TypeAlias

import torch

from engine._kernels import PackedParams, quiet_deprecations, use_x86_quantized_engine

# Channels taken out of the integer GEMM per call: at most this many (and an eighth of
# the inputs), those whose largest magnitude exceeds OUTLIER_RATIO x the median channel's.
OUTLIER_MAX_CHANNELS = 16
OUTLIER_RATIO = 3.0
# Rows sampled (evenly) to find them: outlier dimensions are the same on every token.
OUTLIER_SAMPLE_ROWS = 64

# (fbgemm layout without bias, (2, N) [weight sums; bias], (K, N) int8 weight, (N,) scales)
FbgemmRowsPrepared: TypeAlias = tuple[PackedParams, torch.Tensor, torch.Tensor, torch.Tensor]


def prepare_fbgemm_rows(w_int8: torch.Tensor, scales: torch.Tensor,
                        bias: torch.Tensor | None) -> FbgemmRowsPrepared:
    """Packs a symmetric per-channel int8 weight (N, K) for `fbgemm_rows_linear`.

    Besides fbgemm's layout: each output channel's dequantized weight sum (which turns the
    row minima back into the output) and the bias, as the epilogue's right side, and the
    int8 weight transposed, whose rows are the outlier channels' weights.
    """
    use_x86_quantized_engine()
    n = w_int8.shape[0]
    scales = scales.float().contiguous()
    with quiet_deprecations():
        qw = torch._make_per_channel_quantized_tensor(
            w_int8.contiguous(), scales.double(), torch.zeros(n, dtype=torch.long), 0
        )
        packed = torch.ops.quantized.linear_prepack(qw, None)
    weight_sums = w_int8.sum(dim=1, dtype=torch.int64).float().mul_(scales)
    bias_row = torch.zeros(n) if bias is None else bias.detach().float()
    epilogue = torch.stack([weight_sums, bias_row]).contiguous()
    return packed, epilogue, w_int8.t().contiguous(), scales


def _row_grids(xs: torch.Tensor, max_code: int, owned: bool
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    # amin and amax: torch.aminmax(dim=1) took 10x as long here (204 vs 19 us, 128 x 512)
    lo = xs.amin(dim=1, keepdim=True)
    scale = (xs.amax(dim=1, keepdim=True) - lo).clamp_(min=1e-30).div_(max_code)
    # x - minimum first: exact near the minimum, so codes stay within 0..max_code
    codes = xs.sub_(lo) if owned else xs.sub(lo)
    return codes.mul_(scale.reciprocal()), scale, lo


def u8_rows(x2d: torch.Tensor, smoothing: torch.Tensor | None, max_code: int
            ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Each row mapped onto its own grid 0..`max_code`: (codes as unrounded fp32, row scale,
    row minimum), so x ~= minimum + scale * round(codes). A constant row gets code 0.

    The kernel rounds (and clamps to 0..255) as it packs the rows, so after the range
    reduction this is one subtraction and one scaling of the activations.
    """
    x2d = x2d.float()
    if smoothing is None:
        return _row_grids(x2d, max_code, owned=False)
    return _row_grids(x2d * smoothing, max_code, owned=True)


def outlier_channels(xs: torch.Tensor) -> torch.Tensor:
    """Indices of the activation channels to run in fp32 (possibly none), sorted."""
    rows, k = xs.shape
    limit = min(OUTLIER_MAX_CHANNELS, k // 8)
    if limit == 0:
        return torch.empty(0, dtype=torch.long)
    sample = xs[:: max(1, rows // OUTLIER_SAMPLE_ROWS)]
    magnitude = sample.abs().amax(dim=0)
    top = magnitude.topk(limit)
    return top.indices[top.values > OUTLIER_RATIO * magnitude.median()].sort().values


def fbgemm_rows_linear(x2d: torch.Tensor, prepared: FbgemmRowsPrepared,
                       smoothing: torch.Tensor | None, max_code: int) -> torch.Tensor:
    """y = x Wᵀ + bias with per-row asymmetric activation grids of codes 0..`max_code` and
    the outlier channels in fp32 (module docstring); `smoothing` (SmoothQuant) multiplies
    the input first."""
    packed, epilogue, w_t, scales = prepared
    x2d = x2d.float()
    owned = smoothing is not None  # never write into the caller's tensor
    xs = x2d * smoothing if smoothing is not None else x2d
    idx = outlier_channels(xs)
    outliers = None
    if idx.numel():
        outliers = xs.index_select(1, idx)
        if owned:
            xs.index_fill_(1, idx, 0.0)
        else:
            xs, owned = x2d * torch.ones(xs.shape[1]).index_fill_(0, idx, 0.0), True
    codes, scale, lo = _row_grids(xs, max_code, owned)
    acc = torch.ops.quantized.linear_with_input_q_dq_qweight_dq_output_fp32(codes, 1.0, 0, packed)
    left = [lo, torch.ones_like(lo)]
    right = epilogue
    if outliers is not None:
        # the GEMM saw these channels as the code of 0, which the grid gives back as
        # zero_hat; the epilogue adds the rest of the true value
        zero_code = torch.round(lo.neg().mul_(scale.reciprocal()))
        left.append(outliers.sub_(zero_code.mul_(scale).add_(lo)))
        right = torch.cat([epilogue, w_t.index_select(0, idx).float().mul_(scales)])
    return acc.mul_(scale).addmm_(torch.cat(left, dim=1), right)
