"""Uniform weight quantizers: symmetric or asymmetric, per output channel or per group.

A weight is viewed as a matrix (out_features, K) with K = in_features (or in_channels /
groups * kh * kw for a conv, the im2col order). Each row is split into groups of
`group_size` columns (one group per row when per-channel); every group has one float scale
and, when asymmetric, one integer zero point. Codes are unsigned integers in [0, 2**bits):

    asymmetric:  w ~= (q - zero) * scale
    symmetric:   w ~= (q - 2**(bits-1)) * scale,  q in [1, 2**bits - 1]
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from engine._errors import InvalidSpecError
from engine._packing import pack_codes, unpack_codes
from engine._platform import configure_runtime
from engine._types import SUPPORTED_GROUP_SIZES, check_bits


@dataclass(frozen=True)
class QuantScheme:
    """How one layer's weights are quantized.

    Attributes:
        bits: Code width, 2..8.
        symmetric: No zero point; the grid is centred on 0.
        group_size: Columns sharing one scale; None for one scale per output channel.
    """

    bits: int
    symmetric: bool = False
    group_size: int | None = None

    def __post_init__(self) -> None:
        check_bits(self.bits)
        if self.group_size is not None and self.group_size not in SUPPORTED_GROUP_SIZES:
            raise InvalidSpecError(
                f"`group_size` must be one of {SUPPORTED_GROUP_SIZES} or None, "
                f"got {self.group_size!r}."
            )

    @property
    def qmax(self) -> int:
        return (1 << self.bits) - 1

    @property
    def offset(self) -> int:
        """The code that represents 0 in the symmetric grid."""
        return 1 << (self.bits - 1)

    def n_groups(self, k: int) -> int:
        return 1 if self.group_size is None else -(-k // self.group_size)

    def effective_group_size(self, k: int) -> int:
        return k if self.group_size is None else self.group_size

    @property
    def label(self) -> str:
        kind = "sym" if self.symmetric else "asym"
        gran = "pc" if self.group_size is None else f"g{self.group_size}"
        return f"int{self.bits}-{kind}-{gran}"


def _grouped(w2d: torch.Tensor, scheme: QuantScheme) -> torch.Tensor:
    """(N, K) -> (N, G, g), zero-padding the last group."""
    n, k = w2d.shape
    g = scheme.effective_group_size(k)
    pad = scheme.n_groups(k) * g - k
    if pad:
        w2d = torch.nn.functional.pad(w2d, (0, pad))
    return w2d.reshape(n, -1, g)


def compute_qparams(
    w2d: torch.Tensor, scheme: QuantScheme, *, clip_ratio: torch.Tensor | float = 1.0
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Min/max scales (and zero points) of a weight matrix.

    Args:
        w2d: Float weight matrix (N, K).
        scheme: Bits, symmetry and grouping.
        clip_ratio: Shrinks the range before computing scales (scalar, or (N, G) tensor).

    Returns:
        scales (N, G) float32 and zeros (N, G) uint8, or None when symmetric.
    """
    wg = _grouped(w2d.float(), scheme)
    if scheme.symmetric:
        absmax = wg.abs().amax(dim=-1) * clip_ratio
        scales = absmax / (scheme.offset - 1 if scheme.bits > 1 else 1)
        scales = torch.where(scales > 0, scales, torch.ones_like(scales))
        return scales.float(), None
    lo = wg.amin(dim=-1).clamp(max=0) * clip_ratio
    hi = wg.amax(dim=-1).clamp(min=0) * clip_ratio
    scales = (hi - lo) / scheme.qmax
    scales = torch.where(scales > 0, scales, torch.ones_like(scales))
    zeros = torch.round(-lo / scales).clamp(0, scheme.qmax)
    return scales.float(), zeros.to(torch.uint8)


def quantize_codes(
    w2d: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor | None, scheme: QuantScheme
) -> torch.Tensor:
    """Rounds a weight matrix to codes (N, K) uint8 on the given scales (round to nearest)."""
    n, k = w2d.shape
    wg = _grouped(w2d.float(), scheme)
    zero = (zeros.float() if zeros is not None else torch.full_like(scales, scheme.offset))
    lo = 1 if scheme.symmetric else 0
    q = torch.round(wg / scales[..., None]) + zero[..., None]
    q = q.clamp(lo, scheme.qmax)
    return q.reshape(n, -1)[:, :k].to(torch.uint8)


def dequantize_codes(
    codes: torch.Tensor,
    scales: torch.Tensor,
    zeros: torch.Tensor | None,
    scheme: QuantScheme,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Float matrix (N, K) from codes (N, K) and their scales and zero points."""
    n, k = codes.shape
    g = scheme.effective_group_size(k)
    ng = scheme.n_groups(k)
    pad = ng * g - k
    c = codes if not pad else torch.nn.functional.pad(codes, (0, pad))
    c = c.reshape(n, ng, g).to(dtype)
    zero = zeros.to(dtype) if zeros is not None else torch.full_like(scales, scheme.offset)
    w = (c - zero.to(dtype)[..., None]) * scales.to(dtype)[..., None]
    return w.reshape(n, -1)[:, :k]


@dataclass(frozen=True)
class QuantizedWeight:
    """Packed codes + scales + zero points of one weight tensor: what is stored and counted.

    Attributes:
        packed: Flat uint8 bit stream of the (N, K) codes (see `engine._packing`).
        scales: (N, G) float32.
        zeros: (N, G) uint8, or None when symmetric.
        shape: Original weight shape (e.g. (N, C, kh, kw) for a conv).
        scheme: Bits, symmetry and grouping.
    """

    packed: torch.Tensor
    scales: torch.Tensor
    zeros: torch.Tensor | None
    shape: tuple[int, ...]
    scheme: QuantScheme

    @property
    def matrix_shape(self) -> tuple[int, int]:
        return self.shape[0], math.prod(self.shape[1:])

    @property
    def nbytes(self) -> int:
        """Real bytes of codes + scales + zero points."""
        total = self.packed.numel() * self.packed.element_size()
        total += self.scales.numel() * self.scales.element_size()
        if self.zeros is not None:
            total += self.zeros.numel() * self.zeros.element_size()
        return total

    def codes(self) -> torch.Tensor:
        """Unpacked codes as (N, K) uint8."""
        n, k = self.matrix_shape
        return unpack_codes(self.packed, self.scheme.bits, n * k).reshape(n, k)

    def dequantize(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """Float weight in its original shape."""
        w = dequantize_codes(self.codes(), self.scales, self.zeros, self.scheme, dtype)
        return w.reshape(self.shape)


def quantize(
    weight: torch.Tensor,
    scheme: QuantScheme,
    *,
    scales: torch.Tensor | None = None,
    zeros: torch.Tensor | None = None,
    codes: torch.Tensor | None = None,
) -> QuantizedWeight:
    """Quantizes a weight (round to nearest unless `codes` are given) and packs the codes.

    Args:
        weight: Float weight, (N, ...) with output channels first.
        scheme: Bits, symmetry and grouping.
        scales, zeros: Precomputed quantization parameters (e.g. from a clipping search);
            min/max when omitted.
        codes: Precomputed (N, K) codes (e.g. from GPTQ); rounded here when omitted.

    Returns:
        The packed `QuantizedWeight`.
    """
    configure_runtime()
    if weight.dim() < 2:
        raise InvalidSpecError(
            f"`weight` must have at least 2 dims, got shape {tuple(weight.shape)}.")
    if not torch.isfinite(weight).all():
        raise InvalidSpecError("`weight` contains NaN or infinite values; cannot quantize.")
    w2d = weight.detach().reshape(weight.shape[0], -1)
    if scales is None:
        scales, zeros = compute_qparams(w2d, scheme)
    if codes is None:
        codes = quantize_codes(w2d, scales, zeros, scheme)
    packed = pack_codes(codes, scheme.bits)
    return QuantizedWeight(packed, scales.float().contiguous(),
                           None if zeros is None else zeros.contiguous(),
                           tuple(weight.shape), scheme)


def packed_weight_bytes(weight_shape: tuple[int, ...], scheme: QuantScheme) -> int:
    """Bytes `quantize` stores for a weight of this shape: codes + scales (+ zero points)."""
    from engine._packing import packed_nbytes

    n = weight_shape[0]
    k = math.prod(weight_shape[1:])
    groups = n * scheme.n_groups(k)
    return packed_nbytes(n * k, scheme.bits) + groups * 4 + (0 if scheme.symmetric else groups)


def sqnr_db(reference: torch.Tensor, approx: torch.Tensor) -> float:
    """Signal-to-quantization-noise ratio 20*log10(||x|| / ||x - y||) in dB."""
    ref = reference.detach().double()
    noise = (ref - approx.detach().double()).norm()
    if noise == 0:
        return math.inf
    return float(20 * torch.log10(ref.norm() / noise))
