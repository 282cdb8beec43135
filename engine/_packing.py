"""Dense bit-packing of unsigned integer codes (2..8 bits) into bytes.

Codes are packed little-endian into a continuous bit stream: eight `b`-bit codes fill
exactly `b` bytes, so 4-bit codes are two per byte, 3-bit codes take 3 bytes per 8 codes,
and so on. The stream is padded with zero codes to a multiple of eight.
"""

from __future__ import annotations

import torch

from engine._types import check_bits


def packed_nbytes(numel: int, bits: int) -> int:
    """Bytes that `pack_codes` uses for `numel` codes of `bits` bits."""
    return -(-numel // 8) * bits


def pack_codes(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """Packs unsigned integer codes in [0, 2**bits) into a flat uint8 tensor.

    Args:
        codes: Integer tensor of any shape; values must lie in [0, 2**bits).
        bits: Code width, 2..8.

    Returns:
        A 1-D uint8 tensor of `packed_nbytes(codes.numel(), bits)` bytes.
    """
    bits = check_bits(bits)
    flat = codes.reshape(-1)
    if bits == 8:
        return flat.to(torch.uint8).clone()
    pad = (-flat.numel()) % 8
    if pad:
        flat = torch.cat([flat, flat.new_zeros(pad)])
    groups = flat.to(torch.int64).reshape(-1, 8)
    shifts = torch.arange(8, dtype=torch.int64, device=codes.device) * bits
    words = (groups << shifts).sum(dim=1)  # <= 56 bits, fits int64
    byte_shifts = torch.arange(bits, dtype=torch.int64, device=codes.device) * 8
    out = (words[:, None] >> byte_shifts) & 0xFF
    return out.to(torch.uint8).reshape(-1)


def unpack_codes(packed: torch.Tensor, bits: int, numel: int) -> torch.Tensor:
    """Inverse of `pack_codes`: returns the first `numel` codes as a flat uint8 tensor."""
    bits = check_bits(bits)
    if bits == 8:
        return packed.reshape(-1)[:numel]
    if bits == 4:  # the hot case of the dequant path: two nibbles per byte
        p = packed.reshape(-1)
        out = torch.stack([p & 0x0F, p >> 4], dim=1).reshape(-1)
        return out[:numel]
    groups = packed.reshape(-1, bits).to(torch.int64)
    byte_shifts = torch.arange(bits, dtype=torch.int64, device=packed.device) * 8
    words = (groups << byte_shifts).sum(dim=1)
    shifts = torch.arange(8, dtype=torch.int64, device=packed.device) * bits
    codes = (words[:, None] >> shifts) & ((1 << bits) - 1)
    return codes.to(torch.uint8).reshape(-1)[:numel]
