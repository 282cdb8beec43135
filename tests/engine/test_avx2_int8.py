"""Exact int8 on CPUs without VNNI: the probes, the per-row fbgemm path and the choice.

Without VNNI, x86 int8 kernels add adjacent u8 x s8 products in saturating int16, so 8-bit
activation codes can give wrong sums; these tests check that the probes see that with the
codes the paths really produce, that the paths then stay exact, and that the choice and
its reason follow the probes. On a VNNI CPU the same tests check the 8-bit side.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from engine import KernelPath, QuantConv2d, QuantLinear, QuantScheme, quantize, sqnr_db
from engine import _fbgemm_rows as R
from engine import _int8_paths as P
from engine import _kernels as K

needs_fbgemm = pytest.mark.skipif(not K.fbgemm_available(), reason="needs torch's fbgemm")
GEN = torch.Generator().manual_seed(5)


def _layer(n=96, k=160, bias=True, smoothing=None):
    w = torch.randn(n, k, generator=GEN) * 0.05
    b = torch.randn(n, generator=GEN) if bias else None
    layer = QuantLinear(quantize(w, QuantScheme(8, True, None)), b, act_smoothing=smoothing)
    return layer, w, b


def _gelu_like(rows, k):
    """Skewed activations with a few outlier channels, as inside a transformer MLP."""
    z = torch.randn(rows, k, generator=GEN) * 2
    z[:, :3] = z[:, :3].abs() * 6 + 12
    return F.gelu(z)


@needs_fbgemm
def test_fbgemm_max_code_is_the_widest_exact_range():
    max_code = P.fbgemm_max_code()
    assert max_code in P.MAX_CODE_CANDIDATES
    assert P._linear_rows_exact(127)  # 2 * 127 * 127 fits int16 on every CPU
    # 2 * 129 * 127 = 32766 is the int16 limit against int8 weights
    assert P._linear_rows_exact(129)
    # where 8-bit codes are refused, the kernel really gets them wrong on this CPU
    assert P._linear_rows_exact(255) is (max_code == 255)


@needs_fbgemm
@pytest.mark.parametrize("code", [130, 255])
def test_saturation_is_real_where_the_probe_says_so(code):
    """Codes above 129 against +-127 weights: exact only where the probe allows 255."""
    w = P._saturating_weight(32, 128, GEN)
    packed = R.prepare_fbgemm_rows(w, torch.ones(32), None)[0]
    codes = torch.full((4, 128), float(code))
    acc = torch.ops.quantized.linear_with_input_q_dq_qweight_dq_output_fp32(codes, 1.0, 0, packed)
    exact = codes @ w.float().t()
    assert torch.equal(acc, exact) is (P.fbgemm_max_code() == 255)


def test_u8_rows_codes_and_reconstruction():
    x = torch.randn(5, 64, generator=GEN) * torch.tensor([[0.1], [1.0], [10.0], [3.0], [1.0]])
    x[3] = 2.5  # a constant row
    x[4] = 0.0
    codes, scale, lo = R.u8_rows(x, None, 127)
    q = codes.round()
    assert q.min() >= 0 and q.max() <= 127
    assert torch.equal(q[:3].amax(dim=1), torch.full((3,), 127.0))
    assert torch.equal(q[3:], torch.zeros(2, 64))
    recon = lo + scale * q
    step = scale.squeeze(1)
    assert ((recon - x).abs().amax(dim=1) <= 0.5 * step + 1e-6).all()
    assert torch.equal(recon[3], x[3]) and torch.equal(recon[4], x[4])


def test_u8_rows_applies_smoothing_first():
    x = torch.randn(3, 16, generator=GEN)
    s = torch.rand(16, generator=GEN) + 0.5
    a = R.u8_rows(x, s, 127)
    b = R.u8_rows(x * s, None, 127)
    for t, u in zip(a, b, strict=True):
        assert torch.allclose(t, u)


def test_outlier_channels_are_the_dominant_ones():
    x = torch.randn(200, 160, generator=GEN)
    assert R.outlier_channels(x).numel() == 0  # no channel stands out
    x[:, [7, 40, 41]] *= 20.0
    assert R.outlier_channels(x).tolist() == [7, 40, 41]
    x[:, :64] *= 50.0  # more than the limit: the largest ones, at most the limit
    assert R.outlier_channels(x).numel() == min(R.OUTLIER_MAX_CHANNELS, 160 // 8)
    assert R.outlier_channels(torch.randn(4, 7)).numel() == 0  # too few inputs


@needs_fbgemm
@pytest.mark.parametrize("rows", [1, 7, 64])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("outliers", [True, False])
def test_fbgemm_rows_matches_its_own_arithmetic(rows, bias, outliers):
    """The kernel's output equals the path's arithmetic done in float64: per-row grids
    over the ordinary channels, the outlier channels exact."""
    layer, _, b = _layer(bias=bias)
    x = _gelu_like(rows, 160) if outliers else torch.randn(rows, 160, generator=GEN)
    x_in = x.clone()
    y = layer.run_path(KernelPath.FBGEMM_INT8_ROWS, x)
    assert torch.equal(x, x_in)  # the caller's tensor is left alone
    idx = R.outlier_channels(x)
    if outliers and rows > 1:
        assert {0, 1, 2} <= set(idx.tolist())  # the boosted channels
    elif rows >= 64:
        assert idx.numel() == 0
    ordinary = x.index_fill(1, idx, 0.0)
    codes, scale, lo = R.u8_rows(ordinary, None, P.fbgemm_max_code())
    x_hat = lo + scale * codes.round()
    x_hat[:, idx] = x[:, idx]
    ref = x_hat.double() @ layer.dequantized_weight().double().t()
    if b is not None:
        ref = ref + b.double()
    assert torch.allclose(y.double(), ref, rtol=1e-4, atol=1e-4)


@needs_fbgemm
def test_fbgemm_rows_accuracy_with_outliers_and_smoothing():
    k = 160
    x = _gelu_like(48, k)
    smoothing = (x.abs().amax(0).clamp(min=1e-5) ** -0.5).clamp(max=10.0)
    w = torch.randn(96, k, generator=GEN) * 0.05
    ref = F.linear(x, w)
    # SmoothQuant as the engine applies it: weight columns divided by the input factors
    layer = QuantLinear(quantize(w / smoothing, QuantScheme(8, True, None)), None,
                        act_smoothing=smoothing)
    y = layer.run_path(KernelPath.FBGEMM_INT8_ROWS, x)
    assert sqnr_db(ref, y) >= 30.0
    plain, _, _ = _layer(bias=False)
    assert sqnr_db(F.linear(x, plain.dequantized_weight()),
                   plain.run_path(KernelPath.FBGEMM_INT8_ROWS, x)) >= 30.0


@needs_fbgemm
def test_module_runs_3d_inputs_and_records_the_reason():
    layer, w, b = _layer()
    x = torch.randn(2, 24, 160, generator=GEN)
    y = layer(x)
    assert y.shape == (2, 24, 96)
    choice = P.int8_linear_choice(48)
    assert layer.last_kernel == choice.path.value
    assert layer.last_kernel_reason == choice.reason
    assert layer.kernel_reasons == {choice.path.value: choice.reason}
    assert sqnr_db(F.linear(x, w, b), y) >= 30.0


def test_choice_rule_takes_the_first_exact_path_not_slower_than_emulation(monkeypatch):
    """The rule, on controlled probe timings."""
    P._choose.cache_clear()
    monkeypatch.setattr(P, "_exact_candidates", lambda rows: (
        [KernelPath.ONEDNN_INT8_DYNAMIC, KernelPath.FBGEMM_INT8_ROWS], ["why not others"]))
    monkeypatch.setattr(P, "_probe_runner", lambda path, *a: (lambda: torch.zeros(1)))
    times = {"onednn": [5000.0, 800.0, 1000.0], "fast": [300.0, 200.0, 1000.0],
             "none": [5000.0, 4000.0, 1000.0]}
    try:
        for case, expected in (("onednn", KernelPath.FBGEMM_INT8_ROWS),
                               ("fast", KernelPath.ONEDNN_INT8_DYNAMIC),
                               ("none", KernelPath.CPU_INT8_EMULATED)):
            monkeypatch.setattr(K, "fastest_us", lambda calls, c=case: times[c][: len(calls)])
            P._choose.cache_clear()
            choice = P.int8_linear_choice(40)
            assert choice.path is expected, case
            assert choice.probe_rows == 32
            assert "why not others" in choice.reason
            assert choice.timings_us["cpu-int8-emulated"] == 1000.0
        assert "slower than the fp32 emulation" in choice.reason
    finally:
        P._choose.cache_clear()


def test_probe_rows_buckets():
    assert [P.probe_rows(r) for r in (1, 2, 3, 31, 32, 33, 4096)] == [1, 2, 2, 16, 32, 32, 512]
    with pytest.raises(ValueError, match="rows"):
        P.probe_rows(0)


@needs_fbgemm
def test_chosen_path_is_exact_here():
    """On this CPU the chosen path is exact (SQNR) and never an inexact oneDNN matmul."""
    for rows in (1, 32, 128):
        choice = P.int8_linear_choice(rows)
        assert choice.reason
        if choice.path is KernelPath.ONEDNN_INT8_DYNAMIC:
            assert K.onednn_int8_exact()
        layer, w, b = _layer()
        x = torch.randn(rows, 160, generator=GEN)
        assert sqnr_db(F.linear(x, w, b), layer.run_path(choice.path, x)) >= 30.0


@needs_fbgemm
def test_single_row_dynamic_path_uses_the_probed_range(monkeypatch):
    layer, w, b = _layer()
    x = torch.randn(1, 160, generator=GEN)
    ranges = []
    real = K.fbgemm_linear

    def spy(x, packed, reduce_range):
        ranges.append(reduce_range)
        return real(x, packed, reduce_range)

    monkeypatch.setattr(K, "fbgemm_linear", spy)
    y = layer.run_path(KernelPath.FBGEMM_INT8_DYNAMIC, x)
    assert ranges == [P.fbgemm_max_code() < 255]
    assert sqnr_db(F.linear(x, w, b), y) >= 30.0


@pytest.mark.skipif(not (K.fbgemm_available() and K.onednn_available()),
                    reason="needs torch's x86 int8 kernels")
@pytest.mark.parametrize("kernel", ["fbgemm", "onednn"])
def test_conv_max_code_and_saturation(kernel):
    max_code = P.conv_max_code(kernel)
    assert max_code in P.MAX_CODE_CANDIDATES
    for groups in (1, 32):
        assert P._conv_exact(kernel, 129, groups)
    assert (P._conv_exact(kernel, 255, 1) and P._conv_exact(kernel, 255, 32)) is (max_code == 255)
    with pytest.raises(ValueError, match="kernel"):
        P.conv_max_code("qnnpack")


@pytest.mark.skipif(not (K.fbgemm_available() and K.onednn_available()),
                    reason="needs torch's x86 int8 kernels")
def test_calibrated_conv_feeds_codes_the_kernel_sums_exactly(monkeypatch):
    w = torch.randn(16, 16, 3, 3, generator=GEN) * 0.1
    x = torch.rand(1, 16, 8, 8, generator=GEN) * 4
    layer = QuantConv2d(quantize(w, QuantScheme(8, True, None)), None, (1, 1), (1, 1), (1, 1), 1)
    layer.calibrating = True
    layer(x)
    layer.calibrating = False
    seen = []
    real = K._quantize_uint8

    def spy(t, scale, zero, qmax):
        seen.append(qmax)
        return real(t, scale, zero, qmax)

    monkeypatch.setattr(K, "_quantize_uint8", spy)
    y = layer.run_path(KernelPath.ONEDNN_INT8_STATIC_CONV, x)
    assert seen == [P.conv_max_code("onednn")]
    assert sqnr_db(F.conv2d(x, w, padding=1), y) >= 30.0


@pytest.mark.skipif(not (K.fbgemm_available() and K.onednn_available()),
                    reason="needs torch's x86 int8 kernels")
def test_forced_avx2_kernels_pick_seven_bit_codes():
    """fbgemm and oneDNN forced to their AVX2 kernels (how an AVX-512 VNNI machine
    emulates an AVX2-only one): the probes refuse 8-bit codes (129 is the widest exact
    range) and oneDNN's s8 matmul."""
    code = ("from engine import _int8_paths as P, _kernels as K\n"
            "print(P.fbgemm_max_code(), P.conv_max_code('onednn'), K.onednn_int8_exact())\n")
    env = os.environ | {"FBGEMM_ENABLE_INSTRUCTIONS": "AVX2", "ONEDNN_MAX_CPU_ISA": "AVX2"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, env=env, timeout=300)
    assert out.stdout.split() == ["129", "129", "False"]
