from __future__ import annotations

import torch

from engine import BitConfig
from tests.zoo.conftest import need
from zoo._images import center_crop, random_resized_crops, sample_photos
from zoo._mobilenet import MobileNetV2, fold_batch_norms, mobilenet_weights_path

CAT_CLASSES = set(range(281, 286))  # tabby, tiger cat, Persian, Siamese, Egyptian cat


def test_twelve_photos_ship_with_the_packages():
    need("mobilenetv2")
    names = [n for n, _ in sample_photos()]
    assert len(names) == 12 and "chelsea" in names and "china" in names


def test_predicts_a_cat_for_chelsea():
    spec = need("mobilenetv2")
    with torch.no_grad():
        top = int(spec.build()(center_crop("chelsea")).argmax())
    assert top in CAT_CLASSES


def test_batch_norm_folding_preserves_outputs():
    need("mobilenetv2")
    raw = MobileNetV2().eval()
    raw.load_state_dict(torch.load(mobilenet_weights_path(), weights_only=True))
    x = random_resized_crops(2, seed=5)
    with torch.no_grad():
        ref = raw(x)
        folded = fold_batch_norms(raw)(x)
    assert torch.allclose(ref, folded, atol=1e-3, rtol=1e-3)


def test_layers_and_int8_runs_on_kernels():
    spec = need("mobilenetv2")
    layers = spec.layers()
    assert len(layers) == 53 and sum(x.is_depthwise for x in layers) == 17
    q = spec.quantize(BitConfig.uniform(layers, 8))
    m = spec.evaluate(q)
    assert m["agreement"] >= 0.7  # per-tensor static int8 activations cost some agreement
    assert q.features[1].conv[0][0].last_kernel == "fbgemm-int8-static"


def test_crops_are_seeded():
    need("mobilenetv2")
    assert torch.equal(random_resized_crops(3, seed=9), random_resized_crops(3, seed=9))
    assert not torch.equal(random_resized_crops(3, seed=9), random_resized_crops(3, seed=10))


def test_fisher_surrogate_has_the_kl_hessian_as_its_covariance():
    """MobileNetV2's `fisher_loss`: over many draws, the covariance of its gradient w.r.t.
    the logits is the batch-mean KL's Hessian there, (diag p - p pᵀ) / crops per crop."""
    import torch.nn.functional as F

    spec = need("mobilenetv2")
    torch.manual_seed(0)
    logits = torch.randn(2, 1000) * 3
    p = F.softmax(logits, -1)
    gen = torch.Generator().manual_seed(1)
    top = p.argsort(-1, descending=True)[:, :5]  # the entries large enough to check
    draws = 3000
    cov = torch.zeros(2, 5, 5)
    for _ in range(draws):
        z = logits.clone().requires_grad_(True)
        (g,) = torch.autograd.grad(_surrogate(spec, z, gen), z)
        g = g.gather(1, top)
        cov += g[:, :, None] * g[:, None, :]
    cov /= draws
    p_top = p.gather(1, top)
    hessian = (torch.diag_embed(p_top) - p_top[:, :, None] * p_top[:, None, :]) / 2
    assert torch.allclose(cov, hessian, atol=0.1 * float(hessian.abs().max()))
    assert spec.fisher_loss_reads_targets is False


def _surrogate(spec, z, gen):
    from zoo import Batch

    return spec.fisher_loss(lambda _inputs: z, Batch(None, None, 2), gen)


def test_baseline_scores_the_float_targets_as_a_forward_pass_would():
    spec = need("mobilenetv2")
    assert spec.targets_are_float_outputs
    assert spec.baseline() == spec.evaluate(spec.build())
