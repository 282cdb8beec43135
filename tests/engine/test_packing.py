from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from engine import pack_codes, packed_nbytes, unpack_codes


@settings(max_examples=200, deadline=None)
@given(bits=st.integers(2, 8), data=st.data())
def test_pack_round_trip_is_exact(bits, data):
    values = data.draw(st.lists(st.integers(0, (1 << bits) - 1), min_size=1, max_size=300))
    codes = torch.tensor(values, dtype=torch.uint8)
    packed = pack_codes(codes, bits)
    assert packed.dtype == torch.uint8
    assert packed.numel() == packed_nbytes(len(values), bits)
    assert torch.equal(unpack_codes(packed, bits, len(values)), codes)


@pytest.mark.parametrize("bits", [2, 3, 4, 5, 6, 7, 8])
def test_packing_is_dense(bits):
    n = 1 << 16
    codes = torch.randint(0, 1 << bits, (n,), dtype=torch.uint8)
    assert pack_codes(codes, bits).numel() == n * bits // 8


def test_int4_is_two_per_byte_low_nibble_first():
    packed = pack_codes(torch.tensor([1, 2, 3, 4, 5, 6, 7, 8], dtype=torch.uint8), 4)
    assert packed.tolist() == [0x21, 0x43, 0x65, 0x87]
