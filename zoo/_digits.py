"""`digits-mlp` and `digits-cnn`: small classifiers trained here on scikit-learn's digits.

Training is seeded and takes seconds on 2 cores; the weights are cached as safetensors in
the data dir under a hash of (model name, training recipe, data), so they are trained once:

    models/<model>-<hash>.safetensors          the trained state dict
    models/<model>-<hash>.safetensors.sha256   its sidecar: SHA-256 and the key (model,
                                               recipe, full hash; see `engine._cache`)

Cached weights are used only when the sidecar vouches for them and they hold exactly the
model's tensors, shapes and dtypes, all finite; anything else is moved to
`<data dir>/quarantine/` (logged and warned about) and the model is trained again, to the
same weights (training is seeded).
"""

from __future__ import annotations

import json
import logging
import warnings

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

import engine
from engine import InvalidSpecError
from zoo._base import Batch, ModelSpec, batched

log = logging.getLogger(__name__)

# version 2: the initial weights come from `seed` too (version 1 drew them from whatever
# state the process's global generator was in, so two machines trained different models).
RECIPE = {"epochs": 40, "batch": 64, "lr": 2e-3, "weight_decay": 1e-4, "seed": 0,
          "test_fraction": 0.3, "split_seed": 1234, "version": 2}
WEIGHTS_FOLDER = "models"


class DigitsMLP(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(64, 256)
        self.fc2 = nn.Linear(256, 128)
        self.fc3 = nn.Linear(128, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.flatten(1)
        return self.fc3(F.relu(self.fc2(F.relu(self.fc1(x)))))


class DigitsCNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 32, 3, padding=1)
        self.conv2 = nn.Conv2d(32, 64, 3, padding=1)
        self.conv3 = nn.Conv2d(64, 64, 3, padding=1)
        self.fc1 = nn.Linear(64 * 4 * 4, 128)
        self.fc2 = nn.Linear(128, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.conv1(x))
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        x = F.relu(self.conv3(x))
        return self.fc2(F.relu(self.fc1(x.flatten(1))))


def load_digits_split() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(x_train, y_train, x_test, y_test); images (N, 1, 8, 8) scaled to [0, 1]."""
    from sklearn.datasets import load_digits

    data = load_digits()
    x = torch.tensor(data.images, dtype=torch.float32).unsqueeze(1) / 16.0
    y = torch.tensor(data.target, dtype=torch.long)
    perm = np.random.default_rng(RECIPE["split_seed"]).permutation(len(y))
    n_test = int(round(RECIPE["test_fraction"] * len(y)))
    test, train = perm[:n_test], perm[n_test:]
    return x[train], y[train], x[test], y[test]


def _train(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> nn.Module:
    gen = torch.Generator().manual_seed(RECIPE["seed"])
    torch.manual_seed(RECIPE["seed"])
    opt = torch.optim.AdamW(model.parameters(), lr=RECIPE["lr"],
                            weight_decay=RECIPE["weight_decay"])
    steps = RECIPE["epochs"] * (-(-len(y) // RECIPE["batch"]))
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=RECIPE["lr"], total_steps=steps)
    model.train()
    for _ in range(RECIPE["epochs"]):
        perm = torch.randperm(len(y), generator=gen)
        for i in range(0, len(y), RECIPE["batch"]):
            idx = perm[i : i + RECIPE["batch"]]
            opt.zero_grad()
            F.cross_entropy(model(x[idx]), y[idx]).backward()
            opt.step()
            sched.step()
    return model.eval()


def _parse_weights(data: bytes, model: nn.Module) -> dict[str, torch.Tensor]:
    """Cached weights for `model`, validated: safetensors bytes holding exactly the model's
    tensors, each of its shape and dtype, every value finite.

    Raises:
        InvalidSpecError: The first thing that is wrong.
    """
    from safetensors.torch import load

    try:
        state = load(data)
    except Exception as e:  # safetensors raises its own error types on bad bytes
        raise InvalidSpecError(f"not a safetensors file: {e}") from None
    expected = model.state_dict()
    if set(state) != set(expected):
        raise InvalidSpecError(f"tensors {sorted(state)} are not the model's "
                               f"{sorted(expected)}.")
    for name, want in expected.items():
        got = state[name]
        if got.shape != want.shape or got.dtype != want.dtype:
            raise InvalidSpecError(f"`{name}` is {got.dtype} {tuple(got.shape)}, expected "
                                   f"{want.dtype} {tuple(want.shape)}.")
        if got.is_floating_point() and not bool(torch.isfinite(got).all()):
            raise InvalidSpecError(f"`{name}` holds NaN or infinite values.")
    return state


class _DigitsSpec(ModelSpec):
    primary_metric = "accuracy"
    arch: type[nn.Module]

    def __init__(self) -> None:
        super().__init__()
        self._split = None

    def split(self):
        if self._split is None:
            self._split = load_digits_split()
        return self._split

    def _build(self) -> nn.Module:
        from safetensors.torch import save

        x_train, y_train, _, _ = self.split()
        digest = engine.content_hash(self.name, json.dumps(RECIPE, sort_keys=True),
                                     x_train.numpy().tobytes(), y_train.numpy().tobytes(),
                                     length=64)
        path = engine.data_dir() / WEIGHTS_FOLDER / f"{self.name}-{digest[:16]}.safetensors"
        key = {"cache": "weights", "model": self.name, "digest": digest, "recipe": RECIPE}
        with torch.random.fork_rng():
            torch.manual_seed(RECIPE["seed"])
            model = self.arch()
        state = engine.load_cached(path, key, lambda data: _parse_weights(data, model),
                                   what="trained weights", action="retraining")
        if state is not None:
            model.load_state_dict(state)
            return model.eval()
        log.info("training %s on scikit-learn digits (seeded)...", self.name)
        model = _train(model, x_train, y_train)
        data = save({k: v.detach().contiguous() for k, v in model.state_dict().items()})
        try:
            engine.store_cached(path, data, key, what="trained weights")
        except engine.CacheError as e:  # the model is right; only the cache is missing
            log.warning("%s", e)
            warnings.warn(str(e), stacklevel=2)
        return model

    def _calibration_batches(self) -> list[Batch]:
        # Targets are the FP32 model's logits: the loss is label-free (KL to FP32), so at
        # the FP32 weights its gradient is 0 and its Hessian is the Gauss-Newton matrix,
        # the second-order picture Ω rests on. Cross-entropy to the labels of this
        # (memorized) training split is ~0 with a noisy first-order part instead.
        x, _, _, _ = self.split()
        model = self.build()
        out = []
        for i in range(0, min(512, len(x)), 128):
            xb = x[i : i + 128]
            with torch.inference_mode():
                logits = model(xb)
            out.append(Batch(xb, logits, len(xb)))
        return out

    def _evaluation_batches(self) -> list[Batch]:
        _, _, x, y = self.split()
        return [Batch(xb, yb, len(yb)) for xb, yb in zip(batched(x, 256), batched(y, 256),
                                                         strict=True)]

    def loss(self, model: nn.Module, batch: Batch) -> torch.Tensor:
        if batch.target.dtype == torch.long:  # labelled batch (evaluation split)
            return F.cross_entropy(model(batch.inputs), batch.target)
        return F.kl_div(F.log_softmax(model(batch.inputs), -1),
                        F.log_softmax(batch.target, -1), log_target=True, reduction="batchmean")

    def evaluate(self, model: nn.Module) -> dict[str, float]:
        batches = self.evaluation_batches()
        logits = self.outputs(model, batches)
        correct = sum(int((lg.argmax(1) == b.target).sum()) for lg, b in zip(logits, batches,
                                                                              strict=True))
        total = sum(b.size for b in batches)
        nll = sum(float(F.cross_entropy(lg, b.target, reduction="sum"))
                  for lg, b in zip(logits, batches, strict=True))
        return {"accuracy": correct / total, "nll": nll / total}


class DigitsMLPSpec(_DigitsSpec):
    name = "digits-mlp"
    description = "3-layer MLP trained here on scikit-learn's 8x8 digits; top-1 accuracy."
    arch = DigitsMLP


class DigitsCNNSpec(_DigitsSpec):
    name = "digits-cnn"
    description = "3-conv CNN trained here on scikit-learn's 8x8 digits; top-1 accuracy."
    arch = DigitsCNN
