"""The Fisher estimator: its scale on an exactly quadratic model, its output curvature,
its rank agreement with `measured` (digits-mlp, a tiny random Llama with a sampled
`fisher_loss`), seeding, and one layer's candidates at a time."""

from __future__ import annotations

import math
import weakref

import pytest
import torch
import torch.nn.functional as F
from scipy.stats import spearmanr

import engine
import sensitivity
from engine import InvalidSpecError
from sensitivity import FisherConfig, curvature_sampler, estimator_for, make_config
from sensitivity import _fisher as fisher_module
from sensitivity._candidates import weight_only_config
from tests.zoo.conftest import need
from zoo import Batch, ModelSpec

BITS = [2, 3, 4, 8]


class _LinearSpec(ModelSpec):
    """Two linear layers (no activation) and a conv, squared distance to FP32: the loss is
    exactly quadratic in each layer's weights, so measured Δloss = ½ δzᵀ H δz."""

    name = "linear-toy"
    primary_metric = "mse"

    def _build(self) -> torch.nn.Module:
        torch.manual_seed(1)
        return torch.nn.Sequential(torch.nn.Conv2d(2, 4, 3, padding=1), torch.nn.Flatten(),
                                   torch.nn.Linear(64, 32), torch.nn.Linear(32, 6))

    def _batches(self, seed: int) -> list[Batch]:
        g = torch.Generator().manual_seed(seed)
        out = []
        for _ in range(2):
            x = torch.randn(24, 2, 4, 4, generator=g)
            with torch.no_grad():
                out.append(Batch(x, self.build()(x), 24))
        return out

    def _calibration_batches(self) -> list[Batch]:
        return self._batches(0)

    def _evaluation_batches(self) -> list[Batch]:
        return self._batches(1)

    def loss(self, model: torch.nn.Module, batch: Batch) -> torch.Tensor:
        return ((model(batch.inputs) - batch.target) ** 2).sum(-1).mean()

    def evaluate(self, model: torch.nn.Module) -> dict[str, float]:
        return {"mse": float(self.loss(model, self.evaluation_batches()[0]))}


class _TinyLlamaSpec(ModelSpec):
    """A random 2-layer Llama scored by KL(FP32 ‖ model) per next-token position, with the
    sampled surrogate a causal-LM spec gives the Fisher estimator."""

    name = "tiny-llama"
    primary_metric = "kl"
    higher_is_better = False

    def _build(self) -> torch.nn.Module:
        transformers = pytest.importorskip("transformers")
        torch.manual_seed(0)
        config = transformers.LlamaConfig(
            hidden_size=64, num_hidden_layers=2, vocab_size=256, num_attention_heads=4,
            num_key_value_heads=2, intermediate_size=128, max_position_embeddings=64,
            initializer_range=0.2)  # peaked next-token distributions, not near-uniform
        lm = transformers.LlamaForCausalLM(config)

        class Logits(torch.nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.lm = lm

            def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
                return self.lm(input_ids=input_ids, use_cache=False).logits

        return Logits()

    def _windows(self, seed: int, count: int) -> list[Batch]:
        g = torch.Generator().manual_seed(seed)
        out = []
        for _ in range(count):
            ids = torch.randint(0, 256, (8, 32), generator=g)
            with torch.no_grad():
                out.append(Batch(ids, self.build()(ids), 8))
        return out

    def _calibration_batches(self) -> list[Batch]:
        return self._windows(1, 4)

    def _evaluation_batches(self) -> list[Batch]:
        return self._windows(2, 1)

    def loss(self, model: torch.nn.Module, batch: Batch) -> torch.Tensor:
        logq = F.log_softmax(model(batch.inputs), -1).flatten(0, 1)
        logp = F.log_softmax(batch.target, -1).flatten(0, 1)
        return F.kl_div(logq, logp, log_target=True, reduction="batchmean")

    def fisher_loss(self, model: torch.nn.Module, batch: Batch,
                    generator: torch.Generator) -> torch.Tensor:
        logq = F.log_softmax(model(batch.inputs), -1).flatten(0, 1)
        p = F.softmax(batch.target, -1).flatten(0, 1)
        y = torch.multinomial(p, 1, generator=generator)  # next tokens drawn from FP32
        return logq.gather(1, y).sum() / math.sqrt(p.shape[0])

    def evaluate(self, model: torch.nn.Module) -> dict[str, float]:
        return {"kl": float(self.loss(model, self.evaluation_batches()[0]))}


def _run(spec, name: str, seed: int = 0, bits=BITS, **options):
    return estimator_for(make_config(name, {"rounding": "rtn", **options})).estimate(
        spec, bits, seed=seed)


def test_matches_measured_exactly_on_a_quadratic_model():
    spec = _LinearSpec()
    measured = _run(spec, "measured").omega()
    estimate = _run(spec, "fisher", samples=64).omega()
    for name, per_bits in measured.items():
        for b, truth in per_bits.items():
            # 64 draws x 24 samples x 2 batches: seeds 0-2 land within 7%
            assert estimate[name][b] == pytest.approx(truth, rel=0.15), (name, b)


def test_output_curvature_of_squared_distance_and_kl():
    z = torch.randn(5, 3)
    squared = _LinearSpec()
    draw = curvature_sampler(squared, Batch(None, z + 1.0, 5), z)
    gen = torch.Generator().manual_seed(0)
    u = torch.stack([draw(gen) for _ in range(4000)])
    assert u.var(0).mean() == pytest.approx(2 / 5, rel=0.05)  # ((z-t)**2).sum(-1).mean()

    class _KL:
        name = "kl"

        def loss(self, model, batch):
            return F.kl_div(F.log_softmax(model(batch.inputs), -1),
                            F.log_softmax(batch.target, -1), log_target=True,
                            reduction="batchmean")

    draw = curvature_sampler(_KL(), Batch(None, z, 5), z)
    u = torch.stack([draw(gen) for _ in range(20000)]).double()
    p = F.softmax(z, -1).double()
    for r in range(5):
        hessian = (torch.diag(p[r]) - torch.outer(p[r], p[r])) / 5
        cov = u[:, r].T @ u[:, r] / len(u)
        assert torch.allclose(cov, hessian, atol=0.05 * float(hessian.abs().max()))


def test_output_curvature_refuses_a_loss_that_couples_rows():
    class _Coupled:
        name = "coupled"

        def loss(self, model, batch):
            return model(batch.inputs).sum(0).square().sum()

    z = torch.randn(4, 3)
    with pytest.raises(InvalidSpecError, match="fisher_loss"):
        curvature_sampler(_Coupled(), Batch(None, None, 4), z)


def test_ranks_layers_and_widths_like_measured_on_digits_mlp():
    spec = need("digits-mlp")
    measured = _run(spec, "measured").omega()
    estimate = _run(spec, "fisher").omega()
    pairs = [(measured[n][b], estimate[n][b]) for n in measured for b in BITS]
    assert spearmanr(*zip(*pairs, strict=True)).statistic >= 0.95
    ratios = [e / m for m, e in pairs if m > 0]
    assert all(0.4 <= r <= 2.5 for r in ratios)  # in the loss's own units


def test_ranks_layers_and_widths_like_measured_on_a_tiny_llama():
    spec = _TinyLlamaSpec()
    measured = _run(spec, "measured").omega()
    table = _run(spec, "fisher")
    estimate = table.omega()
    names = list(measured)
    at4 = spearmanr([measured[n][4] for n in names], [estimate[n][4] for n in names])
    assert at4.statistic >= 0.85  # 0.93-0.99 over seeds 0-5
    pairs = [(measured[n][b], estimate[n][b]) for n in names for b in BITS]
    assert spearmanr(*zip(*pairs, strict=True)).statistic >= 0.95  # 0.99 over seeds 0-5
    assert all(0.3 <= e / m <= 4.0 for m, e in pairs)
    assert {x.extra["surrogate"] for x in table.layers.values()} == {"fisher_loss"}


def test_same_seed_same_table_other_seed_other_draws():
    spec = need("digits-mlp")
    a, b = (_run(spec, "fisher", seed=7) for _ in range(2))
    other = _run(spec, "fisher", seed=8)
    assert a.to_dict()["layers"] == b.to_dict()["layers"]
    assert a.omega() != other.omega()
    layer = a.layers["fc1"]
    assert layer.stop_reason == "max_probes" and layer.probes == 2 * len(
        spec.calibration_batches())
    mse = layer.extra["output_mse"]
    assert float(mse["2"]) > float(mse["4"]) > float(mse["8"]) > 0


def test_candidates_are_the_engines_rtn_weights():
    for module in (torch.nn.Linear(300, 17), torch.nn.Conv2d(8, 16, 3, groups=2)):
        for group_size in (None, 32):
            cfg = weight_only_config({}, rounding="rtn", group_size=group_size)
            deltas = fisher_module.candidate_deltas(module, BITS, group_size=group_size)
            for b, delta in zip(BITS, deltas, strict=True):
                w = module.weight.detach()
                wq = engine.quantize(w, engine.scheme_for(cfg, b)).dequantize()
                assert torch.equal(delta, wq - w)


def test_one_layers_candidates_at_a_time_and_model_untouched(monkeypatch):
    spec = _LinearSpec()
    model = spec.build()
    state = sensitivity.hash_tensors(dict(model.state_dict()))
    alive: list[weakref.ref] = []
    most = 0
    real = fisher_module.candidate_deltas

    def counting(module, bits, *, group_size):
        nonlocal most
        most = max(most, sum(r() is not None for r in alive))
        out = real(module, bits, group_size=group_size)
        alive.extend(weakref.ref(t) for t in out)
        return out

    monkeypatch.setattr(fisher_module, "candidate_deltas", counting)
    whole = _run(spec, "fisher").omega()
    assert alive and most == 0  # the previous layer's candidates were freed first
    monkeypatch.setattr(fisher_module, "CHUNK_ELEMENTS", 40)  # output errors in slices
    sliced = _run(spec, "fisher").omega()
    for name, per_bits in whole.items():
        assert sliced[name] == pytest.approx(per_bits, rel=1e-5)
    assert sensitivity.hash_tensors(dict(model.state_dict())) == state
    assert not any(p.requires_grad or p.grad is not None for p in model.parameters())
    assert not any(m._forward_hooks for m in model.modules())


def test_config_validates_its_fields():
    for bad, field in [({"samples": 0}, "samples"), ({"form": "full"}, "form"),
                       ({"max_batches": 0}, "max_batches"), ({"rounding": "awq"}, "rounding")]:
        with pytest.raises(InvalidSpecError, match=field):
            FisherConfig(**bad)
