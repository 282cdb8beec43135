from __future__ import annotations

import pytest
import torch

from engine import InvalidSpecError, QuantScheme, UnsupportedBitWidthError, quantize, sqnr_db
from engine._quantizer import compute_qparams, quantize_codes

W = torch.randn(256, 512, generator=torch.Generator().manual_seed(1))

# Measured on Gaussian weights (seed 1); thresholds sit ~1 dB below.
MIN_WEIGHT_SQNR_DB = {
    (8, True, None): 41.0, (4, False, 128): 19.0, (4, False, None): 17.0,
    (3, False, 128): 12.5, (2, False, 128): 5.0, (6, False, 64): 31.0, (5, True, 32): 26.0,
}


@pytest.mark.parametrize("bits, symmetric, group", list(MIN_WEIGHT_SQNR_DB))
def test_weight_sqnr(bits, symmetric, group):
    q = quantize(W, QuantScheme(bits, symmetric, group))
    assert sqnr_db(W, q.dequantize()) >= MIN_WEIGHT_SQNR_DB[(bits, symmetric, group)]


@pytest.mark.parametrize("bits", range(2, 9))
def test_more_bits_less_error(bits):
    if bits == 2:
        return
    lo = quantize(W, QuantScheme(bits - 1, False, 128)).dequantize()
    hi = quantize(W, QuantScheme(bits, False, 128)).dequantize()
    assert sqnr_db(W, hi) > sqnr_db(W, lo) + 4.0


def test_reported_size_is_real_bytes():
    q = quantize(W, QuantScheme(4, False, 128))
    n_groups = 256 * 4
    assert q.nbytes == 256 * 512 // 2 + n_groups * 4 + n_groups * 1
    q8 = quantize(W, QuantScheme(8, True, None))
    assert q8.nbytes == 256 * 512 + 256 * 4  # symmetric: no zero points
    assert q.zeros is not None and q8.zeros is None


def test_codes_stay_on_grid_and_dequantize_matches_codes():
    scheme = QuantScheme(3, False, 64)
    q = quantize(W, scheme)
    codes = q.codes()
    assert int(codes.max()) <= 7
    scales, zeros = compute_qparams(W, scheme)
    assert torch.equal(codes, quantize_codes(W, scales, zeros, scheme))


def test_ragged_last_group_and_conv_shape():
    w = torch.randn(8, 3, 3, 3)  # K = 27, not a multiple of 32
    q = quantize(w, QuantScheme(4, False, 32))
    assert q.scales.shape == (8, 1)
    assert q.dequantize().shape == w.shape
    assert sqnr_db(w, q.dequantize()) > 15


def test_zero_weight_is_exact():
    w = torch.zeros(4, 64)
    assert torch.equal(quantize(w, QuantScheme(4)).dequantize(), w)


def test_bad_inputs_are_named():
    with pytest.raises(UnsupportedBitWidthError, match="bits"):
        QuantScheme(9)
    with pytest.raises(InvalidSpecError, match="group_size"):
        QuantScheme(4, group_size=48)
    with pytest.raises(InvalidSpecError, match="NaN"):
        quantize(torch.tensor([[float("nan"), 1.0]]), QuantScheme(4))
    with pytest.raises(InvalidSpecError, match="2 dims"):
        quantize(torch.ones(4), QuantScheme(4))
