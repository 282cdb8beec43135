"""Every kernel path against the float reference (SQNR), on Gaussian weights and inputs."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from engine import KernelPath, QuantConv2d, QuantLinear, QuantScheme, quantize, sqnr_db
from engine import _kernels as K
from engine._int8_paths import fbgemm_max_code

GEN = torch.Generator().manual_seed(2)
W = torch.randn(256, 512, generator=GEN) * 0.05
X = torch.randn(48, 512, generator=GEN)
B = torch.randn(256, generator=GEN)
REF = F.linear(X, W, B)


def _linear(bits, symmetric, group):
    return QuantLinear(quantize(W, QuantScheme(bits, symmetric, group)), B)


cpu_int8 = pytest.mark.skipif(not (K.fbgemm_available() and K.onednn_available()),
                              reason="needs torch's x86 int8 kernels")


@cpu_int8
@pytest.mark.parametrize("path", [KernelPath.FBGEMM_INT8_DYNAMIC, KernelPath.ONEDNN_INT8_DYNAMIC,
                                  KernelPath.FBGEMM_INT8_ROWS, KernelPath.CPU_INT8_INTMM,
                                  KernelPath.CPU_INT8_EMULATED])
def test_int8_linear_paths(path):
    if path is KernelPath.CPU_INT8_INTMM and not K.int_mm_cpu_available():
        pytest.skip("no torch._int_mm on this CPU build")
    if path is KernelPath.ONEDNN_INT8_DYNAMIC and not K.onednn_int8_exact():
        pytest.skip("oneDNN's int8 matmul saturates on this CPU (the engine does not use it)")
    layer = _linear(8, True, None)
    assert sqnr_db(REF, layer.run_path(path, X)) >= 30.0


@cpu_int8
def test_per_row_int8_paths_agree():
    """oneDNN, torch._int_mm and the fp32 emulation run the same per-row arithmetic; auto
    picks the exact, fast one."""
    if not K.int_mm_cpu_available():
        pytest.skip("no torch._int_mm on this CPU build")
    layer = _linear(8, True, None)
    layer(X)
    expected = K.cpu_int8_linear_path(len(X))
    assert layer.last_kernel == expected.value
    assert sqnr_db(REF, layer(X)) >= 30.0  # the path auto picks is exact
    emulated = layer.run_path(KernelPath.CPU_INT8_EMULATED, X)
    assert torch.allclose(layer.run_path(KernelPath.CPU_INT8_INTMM, X), emulated,
                          rtol=1e-5, atol=1e-5)
    if not K.onednn_int8_exact():
        pytest.skip("oneDNN's int8 matmul saturates on this CPU (the engine does not use it)")
    a = layer.run_path(KernelPath.ONEDNN_INT8_DYNAMIC, X)
    b = layer.run_path(KernelPath.CPU_INT8_INTMM, X)
    assert torch.allclose(a, b, rtol=1e-4, atol=1e-4)


def test_tensor_grid_is_dynamic_quantize_linears():
    """ONNX's DynamicQuantizeLinear: the range widened to 0, scale = range / 255, zero point
    -min / scale rounded half to even; an all-zero input gets scale 1."""
    scale, zero = K.tensor_grid(torch.tensor([[-1.0, 0.5], [2.0, 0.25]]))
    assert scale.item() == pytest.approx(3.0 / 255.0)
    assert zero.item() == 85.0  # 1 / (3 / 255) = 85
    scale, zero = K.tensor_grid(torch.tensor([0.5, 2.0]))  # the range widened to hold 0
    assert scale.item() == pytest.approx(2.0 / 255.0) and zero.item() == 0.0
    scale, zero = K.tensor_grid(torch.zeros(3))
    assert (scale.item(), zero.item()) == (1.0, 0.0)


def test_tensor_grid_linear_is_the_integer_arithmetic():
    """(codes - zero) @ W on the integer values, times the scales, is what the emulation
    returns; fbgemm's dynamic linear, where the engine runs it, rounds on the same grid."""
    layer = QuantLinear(quantize(W, QuantScheme(8, True, None)), B, activation_grid="tensor")
    scale, zero = K.tensor_grid(X)
    codes = torch.clamp(torch.round(X / scale) + zero, 0, 255)
    w = layer.int8_weight().double()
    want = ((codes - zero).double() @ w.T) * (scale.double() * layer.scales[:, 0].double()) \
        + B.double()
    got = layer.run_path(KernelPath.INT8_TENSOR_EMULATED, X)
    assert torch.allclose(got.double(), want, rtol=1e-5, atol=1e-5)
    assert sqnr_db(REF, got) >= 30.0
    layer(X)
    assert "activation grid 'tensor'" in layer.last_kernel_reason
    if K.fbgemm_available() and fbgemm_max_code() == 255:
        assert layer.last_kernel == KernelPath.FBGEMM_INT8_DYNAMIC.value
        fbgemm = layer.run_path(KernelPath.FBGEMM_INT8_DYNAMIC, X)
        assert torch.allclose(fbgemm, got, rtol=1e-5, atol=1e-5)
    else:
        assert layer.last_kernel == KernelPath.INT8_TENSOR_EMULATED.value


def test_activation_grid_is_checked():
    with pytest.raises(ValueError, match="activation_grid"):
        QuantLinear(quantize(W, QuantScheme(8, True, None)), B, activation_grid="column")


@pytest.mark.skipif(not K.int4pack_cpu_available(), reason="no int4pack CPU kernel")
@pytest.mark.parametrize("group", [32, 64, 128])
def test_int4pack_linear_matches_dequant(group):
    layer = _linear(4, False, group)
    fast = layer.run_path(KernelPath.INT4PACK_BF16, X)
    slow = layer.run_path(KernelPath.DEQUANT, X)
    assert sqnr_db(REF, fast) >= 18.0
    assert sqnr_db(slow, fast) >= 35.0  # only bf16 activations differ


def test_symmetric_int4_runs_on_int4pack():
    layer = _linear(4, True, 128)
    if not K.int4pack_cpu_available():
        pytest.skip("no int4pack CPU kernel")
    assert sqnr_db(layer.run_path(KernelPath.DEQUANT, X),
                   layer.run_path(KernelPath.INT4PACK_BF16, X)) >= 35.0


@pytest.mark.parametrize("bits, floor_db", [(2, 4.0), (3, 10.0), (5, 22.0), (6, 28.0)])
def test_dequant_path_low_bits(bits, floor_db):
    layer = _linear(bits, False, 128)
    y = layer(X)
    assert layer.last_kernel == KernelPath.DEQUANT.value
    assert torch.isfinite(y).all()
    assert sqnr_db(REF, y) >= floor_db


def test_dispatch_by_bits_and_rows():
    int8 = _linear(8, True, None)
    int8(X[:1])
    assert int8.last_kernel == K.cpu_int8_linear_path(1).value
    int8(X)
    assert int8.last_kernel == K.cpu_int8_linear_path(len(X)).value
    int4 = _linear(4, False, 128)
    int4(X[:1])
    small = int4.last_kernel
    int4(torch.randn(K.INT4PACK_MAX_ROWS_CPU + 1, 512))
    assert int4.last_kernel == KernelPath.DEQUANT.value
    if K.int4pack_cpu_available():
        assert small == KernelPath.INT4PACK_BF16.value
    ref = QuantLinear(quantize(W, QuantScheme(8, True, None)), B, kernel="reference")
    ref(X)
    assert ref.last_kernel == KernelPath.DEQUANT.value


def _conv(groups=1):
    cin = 16
    w = torch.randn(32 if groups == 1 else cin, cin // groups, 3, 3, generator=GEN) * 0.1
    b = torch.randn(w.shape[0], generator=GEN)
    x = torch.randn(2, cin, 12, 12, generator=GEN).relu()
    layer = QuantConv2d(quantize(w, QuantScheme(8, True, None)), b, (1, 1), (1, 1), (1, 1),
                        groups)
    return layer, x, F.conv2d(x, w, b, padding=1, groups=groups)


@cpu_int8
@pytest.mark.parametrize("groups", [1, 16])
def test_int8_conv_dynamic_then_static(groups):
    layer, x, ref = _conv(groups)
    y_dyn = layer(x)
    assert layer.last_kernel == KernelPath.ONEDNN_INT8_DYNAMIC.value
    assert "not calibrated" in layer.last_kernel_reason
    layer.calibrating = True
    layer(x)
    layer.calibrating = False
    y_static = layer(x)
    assert layer.last_kernel == layer.select_path(x.device).value
    assert layer.last_kernel in {KernelPath.ONEDNN_INT8_STATIC_CONV.value,
                                 KernelPath.FBGEMM_INT8_STATIC_CONV.value}
    assert sqnr_db(ref, y_dyn) >= 30.0
    assert sqnr_db(ref, y_static) >= 30.0
    for path in (KernelPath.ONEDNN_INT8_STATIC_CONV, KernelPath.FBGEMM_INT8_STATIC_CONV):
        assert sqnr_db(ref, layer.run_path(path, x)) >= 30.0


def test_int4_conv_runs_dequant():
    w = torch.randn(8, 4, 3, 3, generator=GEN)
    layer = QuantConv2d(quantize(w, QuantScheme(4, False, 32)), None, (2, 2), (1, 1), (1, 1), 1)
    x = torch.randn(1, 4, 9, 9, generator=GEN)
    y = layer(x)
    assert layer.last_kernel == "dequant"
    assert y.shape == F.conv2d(x, w, stride=2, padding=1).shape
    assert sqnr_db(F.conv2d(x, w, stride=2, padding=1), y) > 14


def test_mse_range_lets_go_of_extremes_its_samples_do_not_hold():
    """The observed range came from whole tensors; the samples are strided, so values rarer
    than one in a sample's stride are not in them and the least-squares range ends near
    the samples' own extremes."""
    gen = torch.Generator().manual_seed(5)
    samples = torch.rand(50_000, generator=gen) * 2.0 - 1.0

    def mse(a, b):
        scale, zero = K.uint8_affine_params(a, b)
        codes = torch.clamp(torch.round(samples / scale) + zero, 0, 255)
        return float(((codes - zero) * scale - samples).pow(2).mean())

    lo, hi = K.mse_range(samples, -1.0, 40.0)  # one far value the samples missed
    assert -1.0 <= lo and hi <= 1.05
    assert mse(lo, hi) <= min(mse(-1.0 * f, 40.0 * f) for f in K.RANGE_FACTORS)
    assert mse(lo, hi) < 0.01 * mse(-1.0, 40.0)
    flat = K.mse_range(samples, -1.0, 1.0)  # nothing to clip: the range stays
    assert flat == pytest.approx((-1.0, 1.0), abs=0.01)


def test_conv_followed_by_relu6_calibrates_its_output_grid_to_what_relu6_keeps():
    """engine.apply marks a conv whose Sequential runs ReLU6 on its output: the output grid
    spans [0, <= 6] and the model's output is unchanged in kind (SQNR kept)."""
    from torch import nn

    import engine

    torch.manual_seed(3)
    model = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.Identity(), nn.ReLU6(),
                          nn.Conv2d(16, 8, 1), nn.Conv2d(8, 8, 1)).eval()
    with torch.no_grad():
        model[0].weight.mul_(4.0)  # outputs well beyond [0, 6] on both sides
    x = torch.randn(4, 3, 8, 8)
    config = engine.BitConfig(bits={"0": 8, "3": 8, "4": 8}, activation_bits=8)
    q = engine.apply(model, config, calibration=[x])
    assert q[0].output_clamp == (0.0, 6.0)
    assert q[3].output_clamp is None and q[4].output_clamp is None  # conv -> conv
    lo, hi = q[0].output_range.tolist()
    assert lo >= 0.0 and hi <= 6.0
    with torch.no_grad():
        assert sqnr_db(model(x), q(x)) >= 25.0
