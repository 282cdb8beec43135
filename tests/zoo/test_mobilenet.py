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
