"""The engine on a CUDA device (marker `gpu`: skipped without one).

Each CUDA kernel path is checked against the arithmetic it must reproduce: tinygemm int4
against the same layer's dequantized weight (only the bf16 activations differ), torch._int_mm
int8 against the CPU's per-row int8 emulation (the same integers). A quantized model moved to
the GPU must compute what it computed on the CPU, and a saved one must load onto the GPU.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from allocator.testing import TinyCNN, TinyMLP
from engine import (
    BitConfig,
    KernelPath,
    QuantLinear,
    QuantScheme,
    apply,
    kernel_report,
    load_quantized,
    quantize,
    save_quantized,
    sqnr_db,
    time_call,
)
from engine import _kernels as K

pytestmark = pytest.mark.gpu
CUDA = torch.device("cuda")
GEN = torch.Generator().manual_seed(7)
W = torch.randn(256, 512, generator=GEN) * 0.05
B = torch.randn(256, generator=GEN)
X = torch.randn(300, 512, generator=GEN)
ROWS = (1, 16, 17, 48, 300)  # _int_mm takes more than 16 rows: the short ones run padded


def _expected_path(bits: int, rows: int) -> KernelPath:
    if bits == 8:
        return KernelPath.CUDA_INT8_INTMM
    return (KernelPath.CUDA_INT4PACK_BF16 if rows <= K.INT4PACK_MAX_ROWS_CUDA
            else KernelPath.CUDA_DEQUANT_BF16)


@pytest.mark.parametrize("bits, floor_db", [(8, 30.0), (4, 18.0)])
def test_auto_picks_the_cuda_kernel_and_is_close_to_fp32(bits, floor_db):
    layer = QuantLinear(quantize(W, QuantScheme(bits, bits == 8, None if bits == 8 else 128)),
                        B).to(CUDA)
    for rows in ROWS:
        with torch.inference_mode():
            y = layer(X[:rows].to(CUDA))
        assert layer.last_kernel == _expected_path(bits, rows).value
        assert sqnr_db(F.linear(X[:rows], W, B), y.cpu()) >= floor_db


@pytest.mark.parametrize("group", [32, 64, 128])
@pytest.mark.parametrize("symmetric", [True, False])
def test_int4pack_cuda_is_the_dequantized_weight(group, symmetric):
    """Packing, nibble order and the zero-point convention: any slip costs tens of dB."""
    layer = QuantLinear(quantize(W, QuantScheme(4, symmetric, group)), B).to(CUDA)
    for rows in ROWS:
        x = X[:rows].to(CUDA)
        with torch.inference_mode():
            exact = layer.run_path(KernelPath.DEQUANT, x).cpu()
            for path in (KernelPath.CUDA_INT4PACK_BF16, KernelPath.CUDA_DEQUANT_BF16):
                fast = layer.run_path(path, x).cpu()
                assert sqnr_db(exact, fast) >= 35.0, (path, group, symmetric, rows)


@pytest.mark.parametrize("smoothing", [False, True])
def test_int8_intmm_cuda_is_the_cpu_per_row_arithmetic(smoothing):
    layer = QuantLinear(quantize(W, QuantScheme(8, True, None)), B)
    if smoothing:  # SmoothQuant's per-input-channel multiply, applied inside both paths
        layer.act_smoothing = torch.rand(512, generator=GEN) + 0.5
    gpu = copy.deepcopy(layer).to(CUDA)
    for rows in ROWS:
        with torch.inference_mode():
            cpu_y = layer.run_path(KernelPath.CPU_INT8_EMULATED, X[:rows])
            gpu_y = gpu.run_path(KernelPath.CUDA_INT8_INTMM, X[:rows].to(CUDA))
        assert sqnr_db(cpu_y, gpu_y.cpu()) >= 60.0, rows


@pytest.mark.parametrize("activation_bits", [None, 8])
def test_quantized_model_moved_to_cuda_matches_cpu(activation_bits, tmp_path):
    torch.manual_seed(0)
    model, x = TinyCNN().eval(), torch.randn(8, 3, 8, 8)
    cfg = BitConfig(bits={"stem": 8, "dw": 8, "pw": 4, "fc1": 8, "fc2": 4}, group_size=32,
                    activation_bits=activation_bits)
    q = apply(model, cfg, calibration=[x])
    save_quantized(q, cfg, tmp_path / "q")
    with torch.inference_mode():
        ref, cpu_y = model(x), q(x)
    q = q.to(CUDA)
    with torch.inference_mode():
        gpu_y = q(x.to(CUDA)).cpu()
    # W8A8 convs run dequant on CUDA (float activations), hence the margin.
    assert sqnr_db(cpu_y, gpu_y) >= 25.0
    assert sqnr_db(ref, gpu_y) >= 15.0
    report = kernel_report(q)
    expected = KernelPath.CUDA_INT8_INTMM if activation_bits == 8 else KernelPath.DEQUANT
    assert expected.value in report["fc1"]["kernel_calls"], report["fc1"]
    loaded, _ = load_quantized(TinyCNN().eval(), tmp_path / "q")
    loaded = loaded.to(CUDA)
    with torch.inference_mode():
        assert torch.equal(loaded(x.to(CUDA)).cpu(), gpu_y)


def test_mlp_int4_runs_tinygemm_and_times_with_sync():
    model, x = TinyMLP().eval(), torch.randn(64, 64)
    q = apply(model, BitConfig(bits={"inp": 4, "shared": 4, "out": 4}, group_size=32))
    q, xc = q.to(CUDA), x.to(CUDA)
    with torch.inference_mode():
        y = q(xc)
        assert sqnr_db(model(x), y.cpu()) >= 10.0
    assert q.shared.last_kernel == KernelPath.CUDA_INT4PACK_BF16.value
    assert q.out.last_kernel == KernelPath.DEQUANT.value  # 10 outputs: not a tile multiple
    timing = time_call(lambda _i: q(xc), repeats=5, warmup=2)
    assert timing.p50_us > 0
