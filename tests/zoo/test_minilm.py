from __future__ import annotations

import torch

import engine._kernels as K
from engine import BitConfig
from tests.zoo.conftest import need


def test_minilm_loads_offline_with_36_encoder_linears():
    spec = need("minilm")
    layers = spec.layers()
    assert len(layers) == 36
    assert all(x.name.startswith("bert.encoder.layer.") for x in layers)
    assert spec.baseline()["cosine"] > 0.99999


def test_minilm_texts_are_disjoint_real_sentences():
    spec = need("minilm")
    t = spec.texts()
    assert len(t["eval"]) == 500 and len(t["calibration"]) == 64
    assert not set(t["eval"]) & set(t["calibration"])
    assert any("Hamlet" in s or "thee" in s or "thou" in s for s in t["shakespeare"])


def test_minilm_all_int8_keeps_cosine():
    spec = need("minilm")
    q = spec.quantize(BitConfig.uniform(spec.layers(), 8))
    layer = q.bert.encoder.layer[0].attention.self.query
    rows = []
    hook = layer.register_forward_hook(
        lambda _m, args, _out: rows.append(args[0].reshape(-1, args[0].shape[-1]).shape[0]))
    metrics = spec.evaluate(q)
    hook.remove()
    assert metrics["cosine"] >= 0.999
    # the path the probe picked for the rows the layer last saw
    assert layer.last_kernel == K.cpu_int8_linear_path(rows[-1]).value


def test_minilm_loss_is_zero_at_fp32_and_differentiable():
    spec = need("minilm")
    model = spec.build()
    batch = spec.calibration_batches()[0]
    assert float(spec.loss(model, batch)) < 1e-8
    w = model.bert.encoder.layer[0].output.dense.weight
    w.requires_grad_(True)
    try:
        with torch.no_grad():
            w.add_(1e-2 * torch.randn_like(w))
        loss = spec.loss(model, batch)
        loss.backward()
        assert w.grad is not None and float(w.grad.abs().sum()) > 0
    finally:
        with torch.no_grad():
            w.grad = None
        w.requires_grad_(False)
        spec._model = None  # the weights were perturbed: rebuild for other tests
        spec._baseline = None
