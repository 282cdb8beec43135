"""Dense bit-packing of unsigned integer codes (2..8 bits) into bytes.

A `b`-bit code is split into bit planes of widths 4, 2 and 1 (e.g. 3 = 2 + 1, 5 = 4 + 1,
6 = 4 + 2, 7 = 4 + 2 + 1); each plane is packed densely, 8 // width values per byte, low
bits first. The total is exactly `b` bits per code (4-bit codes: two per byte), and
unpacking needs only byte-wide shifts, which keeps the dequant path fast. The code stream
is padded with zeros to a multiple of eight codes.
"""

from __future__ import annotations

import functools

import torch

from engine._types import check_bits


@functools.cache
def _planes(bits: int) -> tuple[tuple[int, int], ...]:
    """(width, bit offset) of each plane, low bits first: widths 4, 2, 1, each at most once."""
    planes, offset = [], 0
    for width in (4, 2, 1):
        if bits - offset >= width:
            planes.append((width, offset))
            offset += width
    return tuple(planes)


def packed_nbytes(numel: int, bits: int) -> int:
    """Bytes that `pack_codes` uses for `numel` codes of `bits` bits."""
    if bits == 8:
        return numel
    return -(-numel // 8) * bits


def _shifts(width: int, device: torch.device) -> torch.Tensor:
    return torch.arange(0, 8, width, dtype=torch.uint8, device=device)


def pack_codes(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """Packs unsigned integer codes in [0, 2**bits) into a flat uint8 tensor.

    Args:
        codes: Integer tensor of any shape; values must lie in [0, 2**bits).
        bits: Code width, 2..8.

    Returns:
        A 1-D uint8 tensor of `packed_nbytes(codes.numel(), bits)` bytes.
    """
    bits = check_bits(bits)
    flat = codes.reshape(-1).to(torch.uint8)
    if bits == 8:
        return flat.clone()
    pad = (-flat.numel()) % 8
    if pad:
        flat = torch.cat([flat, flat.new_zeros(pad)])
    out = []
    for width, offset in _planes(bits):
        vals = (flat >> offset) & ((1 << width) - 1)
        per_byte = vals.reshape(-1, 8 // width) << _shifts(width, flat.device)
        out.append(per_byte.sum(dim=1, dtype=torch.uint8))
    return torch.cat(out)


def unpack_codes(packed: torch.Tensor, bits: int, numel: int) -> torch.Tensor:
    """Inverse of `pack_codes`: returns the first `numel` codes as a flat uint8 tensor."""
    bits = check_bits(bits)
    packed = packed.reshape(-1)
    if bits == 8:
        return packed[:numel]
    padded = -(-numel // 8) * 8
    codes: torch.Tensor | None = None
    start = 0
    for width, offset in _planes(bits):
        nbytes = padded * width // 8
        plane = packed[start : start + nbytes]
        start += nbytes
        vals = (plane[:, None] >> _shifts(width, plane.device)) & ((1 << width) - 1)
        vals = vals.reshape(-1)
        codes = vals if codes is None else codes | (vals << offset)
    assert codes is not None  # every width has at least one plane
    return codes[:numel]
