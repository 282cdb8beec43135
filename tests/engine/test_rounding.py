"""Calibrated rounding: GPTQ, bias correction, clipping search."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F

import engine
from allocator.testing import TinyCNN
from engine import BitConfig, InvalidSpecError, QuantScheme, apply, load_quantized, quantize
from engine._gptq import gptq, gptq_many, group_qparams
from engine._stats import ConvGeometry, collect_input_stats, layer_rows


def _correlated_inputs(n: int, k: int, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    mix = torch.randn(k, k, generator=gen) / k**0.5 + torch.eye(k)
    return torch.randn(n, k, generator=gen) @ mix + 0.5


def _output_error(w: torch.Tensor, wq: torch.Tensor, x: torch.Tensor) -> float:
    return float(((x @ (wq - w).T) ** 2).sum())


def _gptq_weight(w, x, scheme, **kw):
    h = (2.0 / len(x)) * (x.double().T @ x.double())
    codes, scales, zeros = gptq(w[None], h[None], scheme, **kw)
    return quantize(w, scheme, scales=scales, zeros=zeros, codes=codes).dequantize()


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("scheme", [QuantScheme(4, False, None), QuantScheme(3, False, 32),
                                    QuantScheme(4, True, 64), QuantScheme(8, True, None)])
def test_gptq_output_error_never_above_rtn(seed, scheme):
    gen = torch.Generator().manual_seed(100 + seed)
    w = torch.randn(48, 128, generator=gen)
    x = _correlated_inputs(512, 128, seed)
    rtn = quantize(w, scheme).dequantize()
    for act_order in (False, True):
        err_gptq = _output_error(w, _gptq_weight(w, x, scheme, act_order=act_order), x)
        assert err_gptq <= _output_error(w, rtn, x) * 1.0001


@pytest.mark.parametrize("act_order", [True, False])
def test_gptq_of_many_schemes_equals_each_alone(act_order):
    """One pass over several schemes (shared factorization, stacked column loop) gives
    each scheme exactly what `gptq` gives it alone, dead inputs and conv groups included."""
    gen = torch.Generator().manual_seed(3)
    w = torch.randn(3, 8, 40, generator=gen)
    x = torch.randn(3, 120, 40, generator=gen)
    h = (2.0 / 120) * (x.double().transpose(1, 2) @ x.double())
    h[:, 7, :] = 0
    h[:, :, 7] = 0
    schemes = [QuantScheme(2, False, 32), QuantScheme(4, True, 32), QuantScheme(8, True, None),
               QuantScheme(3, False, None)]
    many = gptq_many(w, h, schemes, clip_search=True, act_order=act_order)
    for scheme, got in zip(schemes, many, strict=True):
        alone = gptq(w, h, scheme, clip_search=True, act_order=act_order)
        assert torch.equal(got[0], alone[0]) and torch.equal(got[1], alone[1])
        assert (got[2] is None) == (alone[2] is None)
        assert got[2] is None or torch.equal(got[2], alone[2])


def test_one_column_gptq_is_rtn():
    w = torch.randn(16, 1)
    x = torch.randn(64, 1)
    scheme = QuantScheme(4, False, None)
    assert torch.equal(_gptq_weight(w, x, scheme), quantize(w, scheme).dequantize())


def test_gptq_is_deterministic():
    w = torch.randn(32, 64)
    x = _correlated_inputs(256, 64, 3)
    scheme = QuantScheme(3, False, 32)
    assert torch.equal(_gptq_weight(w, x, scheme), _gptq_weight(w, x, scheme))


def test_conv_via_unfold_matches_linear_on_patches():
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(4, 8, 3, padding=1, stride=2)
    x = torch.randn(6, 4, 9, 9)
    stats = collect_input_stats(conv, {"": conv}, [x])[""]
    patches = layer_rows(x, ConvGeometry.of(conv))[0]  # (rows, 36)
    exact = 2 * patches.double().T @ patches.double() / len(patches)
    assert torch.allclose(stats.hessian[0], exact, rtol=1e-4, atol=1e-6)
    linear = torch.nn.Linear(36, 8, bias=False)
    lin_stats = collect_input_stats(linear, {"": linear}, [patches])[""]
    assert torch.allclose(stats.hessian, lin_stats.hessian, rtol=1e-5, atol=1e-7)
    scheme = QuantScheme(4, False, 32)
    w2d = conv.weight.detach().reshape(8, -1)
    assert torch.equal(gptq(w2d[None], stats.hessian, scheme)[0],
                       gptq(w2d[None], lin_stats.hessian, scheme)[0])
    y = F.conv2d(x, conv.weight, stride=2, padding=1)  # same outputs as the patch matmul
    assert torch.allclose(y.permute(0, 2, 3, 1).reshape(-1, 8), patches @ w2d.T, atol=1e-4)


def test_depthwise_conv_is_one_problem_per_channel():
    conv = torch.nn.Conv2d(5, 5, 3, padding=1, groups=5)
    stats = collect_input_stats(conv, {"": conv}, [torch.randn(2, 5, 6, 6)])[""]
    assert stats.hessian.shape == (5, 9, 9)


def _mean_output_error(model, qmodel, name, batches):
    errs = []
    for x in batches:
        ref: dict[str, torch.Tensor] = {}
        got: dict[str, torch.Tensor] = {}
        h1 = dict(model.named_modules())[name].register_forward_hook(
            lambda m, a, o, ref=ref: ref.setdefault("y", o))
        h2 = dict(qmodel.named_modules())[name].register_forward_hook(
            lambda m, a, o, got=got: got.setdefault("y", o))
        with torch.no_grad():
            model(x)
            qmodel(x)
        h1.remove()
        h2.remove()
        errs.append((got["y"] - ref["y"]).mean(dim=(0, 2, 3) if got["y"].dim() == 4 else 0))
    return torch.stack(errs).mean(0)


def test_bias_correction_removes_the_mean_output_shift():
    torch.manual_seed(0)
    model = TinyCNN().eval()
    batches = [torch.randn(8, 3, 8, 8).abs() + 1.0 for _ in range(4)]  # positive inputs
    cfg = dict(bits={"stem": 3}, activation_bits=None)
    plain = apply(model, BitConfig(**cfg), calibration=batches)
    corrected = apply(model, BitConfig(**cfg, bias_correction=True), calibration=batches)
    before = _mean_output_error(model, plain, "stem", batches).abs().max()
    after = _mean_output_error(model, corrected, "stem", batches).abs().max()
    assert after < 1e-4 < before


def test_clip_search_never_increases_weighted_error():
    w = torch.randn(16, 128) * torch.rand(16, 128) ** 4  # heavy-tailed rows
    scheme = QuantScheme(3, False, 32)
    s0, z0 = group_qparams(w, scheme, clip_search=False)
    s1, z1 = group_qparams(w, scheme, clip_search=True)
    e0 = (quantize(w, scheme, scales=s0, zeros=z0).dequantize() - w).pow(2).sum()
    e1 = (quantize(w, scheme, scales=s1, zeros=z1).dequantize() - w).pow(2).sum()
    assert e1 <= e0


def test_gptq_config_round_trips_through_save_load(tmp_path):
    torch.manual_seed(0)
    model = TinyCNN().eval()
    batches = [torch.randn(8, 3, 8, 8) for _ in range(3)]
    cfg = BitConfig.calibrated({"stem": 4, "dw": 8, "pw": 3, "fc1": 4, "fc2": 8})
    q = apply(model, cfg, calibration=batches)
    from engine import save_quantized

    save_quantized(q, cfg, tmp_path)
    loaded, cfg2 = load_quantized(TinyCNN().eval(), tmp_path)
    assert cfg2.rounding == "gptq" and cfg2.bias_correction and cfg2.clip_search
    with torch.no_grad():
        assert torch.equal(q(batches[0]), loaded(batches[0]))
    # the same config and data rebuild the same integers
    again = apply(model, cfg, calibration=batches)
    assert torch.equal(again.fc1.qweight, q.fc1.qweight)


def test_calibrated_rounding_needs_data():
    with pytest.raises(InvalidSpecError, match="calibration data"):
        apply(TinyCNN(), BitConfig(bits={"fc1": 4}, rounding="gptq"))
    with pytest.raises(InvalidSpecError, match="`rounding`"):
        BitConfig(bits={"fc1": 4}, rounding="awq")


def test_fp32_inputs_are_the_same_in_memory_bounded_passes(monkeypatch):
    """Float-model statistics collected a layer per pass give the same model as one pass,
    in place too (where a float copy then feeds the later passes)."""
    import engine._apply as apply_module

    torch.manual_seed(0)
    batches = [torch.randn(8, 3, 8, 8) for _ in range(2)]
    cfg = BitConfig.calibrated({"stem": 4, "dw": 3, "pw": 3, "fc1": 4, "fc2": 8},
                               activation_bits=None)
    model = TinyCNN().eval()
    one_pass = apply(model, cfg, calibration=batches)
    monkeypatch.setattr(apply_module, "STATS_CHUNK_BYTES", 1)
    assert len(apply_module._stats_chunks(apply_module.quantizable_modules(model),
                                          ["stem", "dw", "pw", "fc1", "fc2"])) == 5
    per_layer = apply(model, cfg, calibration=batches)
    for name in ("stem", "dw", "pw", "fc1", "fc2"):
        assert torch.equal(getattr(one_pass, name).qweight, getattr(per_layer, name).qweight)
    own = TinyCNN().eval()
    own.load_state_dict(model.state_dict())
    same = apply(own, cfg, calibration=batches, inplace=True)
    x = batches[0]
    with torch.no_grad():
        assert torch.equal(same(x), one_pass(x))


def test_candidates_of_every_width_equal_uniform_models(monkeypatch):
    """`quantize_candidates` gives each layer, at each width, exactly what `apply` gives it
    in the model quantized uniformly at that width (one statistics pass per chunk for all
    widths), and the float model is left as it was."""
    import engine._apply as apply_module
    from engine import quantize_candidates

    torch.manual_seed(0)
    batches = [torch.randn(8, 3, 8, 8) for _ in range(2)]
    names = ["stem", "dw", "pw", "fc1", "fc2"]
    model = TinyCNN().eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    monkeypatch.setattr(apply_module, "STATS_CHUNK_BYTES", 40_000)  # a few passes
    cfg = BitConfig.calibrated(dict.fromkeys(names, 4), activation_bits=None)
    widths = (3, 4, 8)
    got = dict(quantize_candidates(model, cfg, widths, calibration=batches))
    assert list(got) == names
    for b in widths:
        apply_module._MEMO.clear()  # computed afresh, not the candidates' memo entries
        uniform = apply(model, BitConfig.calibrated(dict.fromkeys(names, b),
                                                    activation_bits=None),
                        calibration=batches)
        for name in names:
            assert torch.equal(got[name][b].dequantized_weight(),
                               getattr(uniform, name).dequantized_weight())
            assert torch.equal(got[name][b].bias, getattr(uniform, name).bias)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    with pytest.raises(InvalidSpecError, match="weight-only"):
        next(quantize_candidates(model, BitConfig.calibrated({"fc1": 8}), widths,
                                 calibration=batches))


def test_rounding_memo_reuses_and_is_invalidated(monkeypatch):
    """A layer rounded the same way again (same float model, unchanged, same inputs) is
    taken from the process memo without gathering statistics; an edited weight, other
    inputs or other settings are rounded afresh."""
    import engine._apply as apply_module

    torch.manual_seed(0)
    batches = [torch.randn(8, 3, 8, 8) for _ in range(2)]
    model = TinyCNN().eval()
    cfg = BitConfig.calibrated({"stem": 4, "pw": 3, "fc1": 4}, activation_bits=None)
    apply_module._MEMO.clear()
    first = apply(model, cfg, calibration=batches)
    passes = []
    real = apply_module.collect_input_stats
    monkeypatch.setattr(apply_module, "collect_input_stats",
                        lambda *a, **k: passes.append(list(a[1])) or real(*a, **k))
    again = apply(model, cfg, calibration=batches)
    assert passes == []
    x = batches[0]
    with torch.no_grad():
        assert torch.equal(first(x), again(x))
    solved = dataclasses.replace(cfg, model="tiny", solver="ilp", status="optimal",
                                 objective=1.0, budgets=("4bits",), cost={"bits": 4.0},
                                 extra={"reproducibility": {"seed": 0}})
    apply(model, solved, calibration=batches)  # what a solve adds does not change rounding
    assert passes == []
    apply(model, cfg, calibration=[b + 1 for b in batches])  # other inputs
    assert passes
    passes.clear()
    apply(model, dataclasses.replace(cfg, clip_search=False), calibration=batches)
    assert passes
    passes.clear()
    with torch.no_grad():
        model.fc1.weight.mul_(1.5)  # the float model changed in place
    edited = apply(model, cfg, calibration=batches)
    assert passes
    assert not torch.equal(edited.fc1.dequantized_weight(), first.fc1.dequantized_weight())
    w8a8 = BitConfig.calibrated({"fc1": 8})  # activations quantized: never memoized
    passes.clear()
    apply(model, w8a8, calibration=batches)
    apply(model, w8a8, calibration=batches)
    assert len(passes) == 2


def test_retain_rounded_keeps_only_what_configs_use(monkeypatch):
    """`retain_rounded` forgets the memo's other (layer, width) roundings: the kept ones are
    reused, the forgotten ones are rounded afresh (their statistics gathered again)."""
    import engine._apply as apply_module

    torch.manual_seed(0)
    batches = [torch.randn(8, 3, 8, 8) for _ in range(2)]
    model = TinyCNN().eval()
    apply_module._MEMO.clear()
    at4 = BitConfig.calibrated({"stem": 4, "fc1": 4}, activation_bits=None)
    at3 = BitConfig.calibrated({"stem": 3, "fc1": 3}, activation_bits=None)
    apply(model, at4, calibration=batches)
    apply(model, at3, calibration=batches)
    assert engine.retain_rounded([at4]) > 0
    assert engine.retain_rounded([at4]) == 0
    passes = []
    real = apply_module.collect_input_stats
    monkeypatch.setattr(apply_module, "collect_input_stats",
                        lambda *a, **k: passes.append(sorted(a[1])) or real(*a, **k))
    apply(model, at4, calibration=batches)
    assert passes == []
    apply(model, at3, calibration=batches)
    assert passes and sorted(n for p in passes for n in p) == ["fc1", "stem"]


def test_calibration_inputs_is_recorded_and_checked():
    torch.manual_seed(0)
    model = TinyCNN().eval()
    batches = [torch.randn(8, 3, 8, 8) for _ in range(2)]
    bits = {"stem": 3, "dw": 3, "pw": 3, "fc1": 3, "fc2": 3}
    fp32 = BitConfig.calibrated(bits, activation_bits=None)
    seq = BitConfig.calibrated(bits, activation_bits=None, calibration_inputs="sequential")
    assert fp32.calibration_inputs == "fp32"
    assert BitConfig.from_json(seq.to_json()).calibration_inputs == "sequential"
    a, b = apply(model, fp32, calibration=batches), apply(model, seq, calibration=batches)
    assert torch.equal(a.stem.qweight, b.stem.qweight)  # the first layer sees the same inputs
    assert not torch.equal(a.fc1.qweight, b.fc1.qweight)  # later ones do not
    with pytest.raises(InvalidSpecError, match="`calibration_inputs`.*'quantized'"):
        BitConfig(bits=bits, calibration_inputs="quantized")


def test_weight_only_8_bits_is_asymmetric_w8a8_symmetric():
    from engine import scheme_for

    assert not scheme_for(BitConfig(bits={}, activation_bits=None), 8).symmetric
    assert scheme_for(BitConfig(bits={}, activation_bits=8), 8).symmetric
    assert scheme_for(BitConfig(bits={}, activation_bits=None, symmetric=True), 8).symmetric


@pytest.mark.parametrize("rounding, bias_correction", [("gptq", False), ("rtn", True)])
def test_calibrated_rounding_names_a_layer_the_batches_never_reach(rounding, bias_correction):
    class Unused(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.used = torch.nn.Linear(8, 8)
            self.unused = torch.nn.Linear(8, 8)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.used(x)

    cfg = BitConfig({"used": 4, "unused": 4}, rounding=rounding,
                    bias_correction=bias_correction, activation_bits=None)
    with pytest.raises(InvalidSpecError, match="'unused' never ran on the calibration"):
        apply(Unused(), cfg, calibration=[torch.randn(4, 8)])


class _Forked(torch.nn.Module):
    """Two layers fed the same tensor (like q/k/v), then two more in sequence; counts how
    often its last layer runs."""

    def __init__(self) -> None:
        super().__init__()
        self.a = torch.nn.Linear(6, 5)
        self.b = torch.nn.Linear(6, 5)
        self.c = torch.nn.Linear(10, 4)
        self.d = torch.nn.Linear(4, 3)
        self.d_calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.cat([self.a(x), self.b(x)], dim=-1)
        y = self.c(h)
        self.d_calls += 1
        return self.d(y)


def test_input_stats_shared_inputs_and_early_stop_equal_a_whole_pass():
    torch.manual_seed(0)
    model = _Forked().eval()
    batches = [torch.randn(7, 6) for _ in range(4)]
    modules = {n: getattr(model, n) for n in ("a", "b", "c")}
    separate = {n: collect_input_stats(model, {n: m}, batches) for n, m in modules.items()}
    model.d_calls = 0
    together = collect_input_stats(model, modules, batches, stop_early=True)
    # the first pass is whole (it learns that each layer runs once); later ones stop at `c`
    assert model.d_calls == 1
    for n in modules:
        assert torch.allclose(together[n].xtx, separate[n][n].xtx, rtol=0, atol=1e-12)
        assert torch.allclose(together[n].x_sum, separate[n][n].x_sum, rtol=0, atol=1e-12)
        assert together[n].rows == separate[n][n].rows == 28
    assert together["a"].xtx is not together["b"].xtx  # shared sums are copied
