"""Fisher estimator: each layer's output error weighted by the loss's curvature.

The losses Ω is measured in (KL or squared distance to the FP32 model) have zero gradient
at the FP32 weights, so quantizing layer l costs, to second order,

    Ω_l(b) ≈ ½ δzᵀ H δz,   δz = J_l ΔY_l(b),   ΔY_l(b) = X_l (Ŵ_l(b) - W_l)ᵀ

with H the loss's Hessian w.r.t. the model output z (the Fisher / Gauss-Newton matrix) and
J_l the Jacobian of z w.r.t. layer l's output. A sampled surrogate s whose gradient u =
∂s/∂z has E[u uᵀ] = H gives g_l = ∂s/∂Y_l = J_lᵀ u, and E[(g_l · ΔY_l)²] = δzᵀ H δz. So one
backward pass of s scores every layer x every candidate width at once: a backward hook on
each layer's output gets g_l, rounds that layer's weight at each width (the engine's RTN,
one layer's candidates at a time), and contracts g_l with the output error on the inputs a
forward hook kept. `samples` draws of s per calibration batch reuse one forward pass.

The surrogate is the spec's `fisher_loss(model, batch, generator)` when it has one (the
causal LMs: their output is too wide for anything else); otherwise the output Hessian of
the spec's own `loss` is found numerically and u drawn as a Gaussian with that covariance
(a squared-distance loss gives u = sqrt(2/B) r; a KL gives per-row (diag p - ppᵀ)/B).

`form` says which part of (g · ΔY)² is kept. "sample" squares per calibration sample
(sequence, image): the cross terms between samples vanish in expectation, so this is the
unbiased Gauss-Newton form with the least noise. "token" squares per token (or pixel) and
drops the cross-token terms; "diagonal" squares per output element (the diagonal Fisher of
the layer's outputs, as BRECQ weights reconstruction errors): smoother but biased. Against
`measured` (RTN) on minilm, Spearman of Ω at 4 bits was 0.98 for "sample" and 0.80 for the
other two, whose Ω came out at about 2/3 of the measured scale.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from typing import Any, ClassVar

import torch
from torch import nn

import engine
from engine import InvalidSpecError
from sensitivity._base import BaseSensitivityEstimator, ProgressFn
from sensitivity._candidates import rounding_inputs, weight_only_config
from sensitivity._table import LayerSensitivity, SensitivityTable

FORMS = ("sample", "token", "diagonal")
# The numeric output Hessian keeps one d x d block per output row; beyond this many bytes
# the spec must say its curvature itself (`fisher_loss`).
MAX_CURVATURE_BYTES = 256 << 20
# Output elements per block of output errors (one layer, one width): bounds their memory.
CHUNK_ELEMENTS = 1 << 22


@dataclass(frozen=True)
class FisherConfig:
    """Settings of the Fisher estimator.

    Attributes:
        samples: Draws of the sampled surrogate per calibration batch (backward passes over
            one forward pass).
        rounding: The pipeline's rounding, "rtn" or "gptq". With "gptq" and
            `calibrated_deltas`, the candidate weights below 8 bits are the engine's own
            calibrated rounding (GPTQ + bias correction + clipping search, the model
            quantized uniformly once per width), so Ω ranks layers by the error that will
            ship; otherwise (and at 8 bits, where both roundings agree) the engine's RTN.
        calibrated_deltas: Use the calibrated rounding's weights for "gptq" (one quantized
            copy per width below 8 bits; the differences kept in float16).
        group_size: Group size of the scales below 8 bits (None: per channel).
        form: Which products of g · ΔY are squared: "sample", "token" or "diagonal".
        max_batches: Calibration batches used at most (the first ones; None: all).
    """

    name: ClassVar[str] = "fisher"
    samples: int = 2
    rounding: str = "gptq"
    group_size: int | None = 128
    form: str = "sample"
    max_batches: int | None = None
    calibrated_deltas: bool = True

    def __post_init__(self) -> None:
        if isinstance(self.samples, bool) or not isinstance(self.samples, int) \
                or self.samples < 1:
            raise InvalidSpecError(f"`samples` must be an int >= 1, got {self.samples!r}.")
        if self.form not in FORMS:
            raise InvalidSpecError(f"`form` must be one of {FORMS}, got {self.form!r}.")
        if self.max_batches is not None and (
                isinstance(self.max_batches, bool) or not isinstance(self.max_batches, int)
                or self.max_batches < 1):
            raise InvalidSpecError(
                f"`max_batches` must be an int >= 1 or null, got {self.max_batches!r}.")
        weight_only_config({}, rounding=self.rounding, group_size=self.group_size)


def candidate_deltas(module: nn.Linear | nn.Conv2d, bits: Sequence[int], *,
                     group_size: int | None) -> list[torch.Tensor]:
    """Ŵ(b) - W for each width of `bits`: the engine's weight-only RTN (float32), as
    `engine.quantize(...).dequantize()` gives it, without packing the codes."""
    cfg = weight_only_config({}, rounding="rtn", group_size=group_size)
    w = module.weight.detach().float()
    w2d = w.reshape(w.shape[0], -1)
    out = []
    for b in bits:
        scheme = engine.scheme_for(cfg, b)
        scales, zeros = engine.compute_qparams(w2d, scheme)
        codes = engine.quantize_codes(w2d, scales, zeros, scheme)
        wq = engine.dequantize_codes(codes, scales, zeros, scheme)
        out.append(wq.reshape(w.shape) - w)
    return out


def _output_error(module: nn.Module, x: torch.Tensor, delta: torch.Tensor,
                  dbias: torch.Tensor | None = None) -> torch.Tensor:
    if isinstance(module, nn.Conv2d):
        return module._conv_forward(x, delta, dbias)
    return nn.functional.linear(x, delta, dbias)


@dataclass(frozen=True)
class RoundedCandidate:
    """A layer's calibrated-rounding candidate, kept packed (the engine's quantized layer:
    ~1/4 of float16 deltas at 4 bits); `delta` unpacks Ŵ - W when it is scored."""

    layer: engine.QuantizedLayer
    module: nn.Linear | nn.Conv2d

    def delta(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(Ŵ - W, the bias change bias correction makes, or None), float32."""
        w = self.module.weight.detach()
        delta = self.layer.dequantized_weight().reshape(w.shape).float() - w.float()
        if self.layer.bias is None:
            return delta, None
        bias = self.module.bias
        return delta, (self.layer.bias.detach().float()
                       - (0.0 if bias is None else bias.detach().float()))


Deltas = dict[str, dict[int, RoundedCandidate]]
"""Layer -> width -> its calibrated candidate."""


def calibrated_deltas(spec: Any, model: nn.Module, names: Sequence[str], bits: Sequence[int],
                      group_size: int | None) -> Deltas:
    """Every named layer's candidate under the engine's calibrated rounding, for each width
    below 8: what the model quantized uniformly at b gives each layer (GPTQ's inputs are the
    float model's), every width of a layer from one gathering of its input statistics."""
    modules = engine.quantizable_modules(model)
    widths = [b for b in bits if b < 8]
    out: Deltas = {n: {} for n in names}
    if not widths:
        return out
    cfg = weight_only_config(dict.fromkeys(names, widths[0]), rounding="gptq",
                             group_size=group_size)
    for name, layers in engine.quantize_candidates(model, cfg, widths,
                                                   calibration=rounding_inputs(spec)):
        out[name] = {b: RoundedCandidate(layer, modules[name]) for b, layer in layers.items()}
    return out


def _score(g: torch.Tensor, dy: torch.Tensor, form: str, conv: bool) -> float:
    """The kept part of (g · ΔY)² (dim 0 is the calibration sample; channels are dim 1 of
    a conv output, the last dim of a linear's). Partial sums in float32 (torch's pairwise
    summation keeps them accurate), their squares in float64."""
    prod = g * dy
    if form == "diagonal":
        return float(prod.square().sum())
    if form == "token":
        per = prod.sum(dim=1 if conv else -1)
    else:
        per = (prod.reshape(prod.shape[0], -1) if prod.dim() > 1 else prod.reshape(1, -1)).sum(1)
    return float(per.double().square().sum())


def _chunks(x: torch.Tensor, g: torch.Tensor) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Slices of whole calibration samples (dim 0) of about `CHUNK_ELEMENTS` outputs."""
    if g.dim() < 2:
        yield x, g
        return
    step = max(1, CHUNK_ELEMENTS // max(g[0].numel(), 1))
    for i in range(0, g.shape[0], step):
        yield x[i : i + step], g[i : i + step]


class _Replay(nn.Module):
    """The model, run once: later calls return the first call's output (and its graph), so
    each draw of a sampled surrogate reuses one forward pass."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.out: Any = None

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        if self.out is None:
            self.out = self.model(*args, **kwargs)
        return self.out


class _Fixed(nn.Module):
    """Stands in for the model in the spec's loss: returns a given output tensor."""

    def __init__(self, out: torch.Tensor) -> None:
        super().__init__()
        self.out = out

    def forward(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        return self.out


def curvature_sampler(spec: Any, batch: Any, z: torch.Tensor
                      ) -> Callable[[torch.Generator], torch.Tensor]:
    """A sampler of u with E[u uᵀ] = the Hessian of `spec.loss` w.r.t. the model output `z`.

    The loss is taken as a function of the output alone (the model replaced by `z`). A
    Hessian that is a multiple c of the identity (squared distance) gives u = sqrt(c) r;
    otherwise it must be block-diagonal over the rows of the output's last dim (a loss
    summed over samples or tokens, as KL is), and u = H_r^½ r row by row.

    Raises:
        InvalidSpecError: The Hessian is neither, or its blocks are too large to hold.
    """
    z0 = z.detach().float().requires_grad_(True)
    d = z0.shape[-1] if z0.dim() else 1
    rows = z0.numel() // max(d, 1)
    (grad,) = torch.autograd.grad(spec.loss(_Fixed(z0), batch), z0, create_graph=True)
    probe = torch.randn(z0.shape, generator=torch.Generator().manual_seed(0))

    def hvp(v: torch.Tensor) -> torch.Tensor:
        (hv,) = torch.autograd.grad(grad, z0, grad_outputs=v, retain_graph=True)
        return hv.detach()

    hp = hvp(probe)
    c = float((probe * hp).sum() / probe.square().sum())
    if torch.allclose(hp, c * probe, rtol=1e-4, atol=1e-6 * float(hp.abs().max()) + 1e-30):
        scale = math.sqrt(max(c, 0.0))
        return lambda gen: scale * torch.randn(z0.shape, generator=gen)
    if rows * d * d * 8 * 2 > MAX_CURVATURE_BYTES:
        raise InvalidSpecError(
            f"spec {getattr(spec, 'name', '?')!r}: its loss's output Hessian is not a multiple "
            f"of the identity and its {rows} blocks of {d}x{d} are too large to hold; give the "
            "spec a `fisher_loss(model, batch, generator)`.")
    blocks = torch.empty(rows, d, d, dtype=torch.float64)
    for k in range(d):
        e = torch.zeros_like(z0)
        e[..., k] = 1.0
        blocks[:, :, k] = hvp(e).reshape(rows, d).double()
    mixed = torch.einsum("rij,rj->ri", blocks, probe.reshape(rows, d).double())
    if not torch.allclose(mixed, hp.reshape(rows, d).double(), rtol=1e-3,
                          atol=1e-4 * float(hp.abs().max()) + 1e-30):
        raise InvalidSpecError(
            f"spec {getattr(spec, 'name', '?')!r}: its loss couples the rows of the model "
            "output, so its curvature cannot be sampled row by row; give the spec a "
            "`fisher_loss(model, batch, generator)`.")
    vals, vecs = torch.linalg.eigh((blocks + blocks.transpose(1, 2)) / 2)
    root = (vecs * vals.clamp(min=0).sqrt()[:, None, :]) @ vecs.transpose(1, 2)
    root = root.float()

    def draw(gen: torch.Generator) -> torch.Tensor:
        r = torch.randn(rows, d, generator=gen)
        return torch.einsum("rij,rj->ri", root, r).reshape(z0.shape)
    return draw


class _Taps:
    """Forward hooks that keep each layer's inputs and score it when its output gradient
    arrives; one instance per estimate, removed in `close`."""

    def __init__(self, modules: dict[str, nn.Module], bits: Sequence[int],
                 config: FisherConfig, fixed: Deltas | None = None) -> None:
        self.modules = modules
        self.fixed = fixed or {}
        self.bits = list(bits)
        self.config = config
        self.anchor = torch.zeros((), requires_grad=True)
        self.score = {n: [0.0] * len(bits) for n in modules}
        self.error_sq = {n: [0.0] * len(bits) for n in modules}
        self.elements = dict.fromkeys(modules, 0)
        self.draw = 0  # which draw of the surrogate the backward pass belongs to
        self.last = True  # whether it is the batch's last draw (inputs dropped after it)
        self.handles = [m.register_forward_hook(self._forward_hook(n))
                        for n, m in modules.items()]

    def close(self) -> None:
        for h in self.handles:
            h.remove()

    def _forward_hook(self, name: str) -> Callable[[nn.Module, tuple, Any], Any]:
        def hook(module: nn.Module, args: tuple, out: Any) -> Any:
            if not isinstance(out, torch.Tensor) or not args:
                return None
            cell = [args[0].detach(), args[0]._version]
            if not out.requires_grad:  # no weight requires grad: connect the graph here
                out = out + self.anchor
            if not out.requires_grad:  # run under no_grad: no gradient will reach it
                return None
            out.register_hook(lambda g: self._backward(name, module, cell, g))
            return out
        return hook

    def _backward(self, name: str, module: nn.Module, cell: list, g: torch.Tensor) -> None:
        x, version = cell
        if x is None:
            return
        if x._version != version:
            raise InvalidSpecError(
                f"layer {name!r}: its input was modified in place after the layer ran, so "
                "its output error cannot be measured on it.")
        conv = isinstance(module, nn.Conv2d)
        with torch.no_grad():
            fixed = self.fixed.get(name, {})
            rtn = [b for b in self.bits if b not in fixed]
            computed = dict(zip(rtn, candidate_deltas(module, rtn,
                                                      group_size=self.config.group_size),
                                strict=True))
            deltas = [fixed[b].delta() if b in fixed else (computed[b], None)
                      for b in self.bits]
            for xc, gc in _chunks(x, g):
                xc, gc = xc.float(), gc.float()
                for i, (delta, dbias) in enumerate(deltas):
                    dy = _output_error(module, xc, delta, dbias)
                    self.score[name][i] += _score(gc, dy, self.config.form, conv)
                    if self.draw == 0:
                        self.error_sq[name][i] += float(dy.square().sum())
            if self.draw == 0:
                self.elements[name] += g.numel()
        if self.last:
            cell[0] = None


class FisherEstimator(BaseSensitivityEstimator):
    """Ω_l(b) = ½ E[(g_l · ΔY_l(b))²] from one forward and `samples` backward passes per
    calibration batch: the output error of layer l's b-bit weights weighted by the loss's
    Fisher / Gauss-Newton curvature, for every layer and width at once.

    A spec may define `fisher_loss(model, batch, generator) -> Tensor`: a scalar whose
    gradient u w.r.t. the model output has, over the generator's draws, mean 0 and E[u uᵀ]
    equal to the Hessian of `loss(model, batch)` w.r.t. that output at the FP32 weights.
    For loss = (1/N) Σ_n KL(p_n ‖ q_n) over N positions: Σ_n log q_n(y_n) / sqrt(N), with
    y_n ~ p_n (the FP32 distribution). It must call `model` once; later draws of a batch
    get the first call's output back. Without it, the output Hessian of `loss` is computed
    (`curvature_sampler`), which needs a tensor output. A spec whose `fisher_loss` does not
    read `batch.target` says so (`fisher_loss_reads_targets = False`): the batches are then
    passed without targets and the spec may let its references go (`release_references`).

    Memory: the model's activations of one batch (as in training, but no weight gradients),
    plus one layer's candidate weights and output errors at a time.
    """

    config_cls = FisherConfig
    progress_unit = "batch-samples"
    config: FisherConfig

    def _batches(self, spec: Any) -> list[Any]:
        batches = list(spec.calibration_batches())
        if self.config.max_batches is not None:
            batches = batches[: self.config.max_batches]
        return batches

    def progress_total(self, spec: Any, bits: Sequence[int]) -> int:
        return len(self._batches(spec)) * self.config.samples

    def estimate(self, spec: Any, bits: Sequence[int], *, seed: int,
                 progress: ProgressFn | None = None) -> SensitivityTable:
        start = time.perf_counter()
        config = self.config
        bits = list(bits)
        model = spec.build()
        layers = spec.layers()
        all_modules = engine.quantizable_modules(model)
        modules = {x.name: all_modules[x.name] for x in layers}
        batches = self._batches(spec)
        total_size = sum(b.size for b in batches) or 1
        fisher_loss = getattr(spec, "fisher_loss", None)
        if callable(fisher_loss) and not getattr(spec, "fisher_loss_reads_targets", True):
            batches = _without_targets(spec, batches)
        gen = torch.Generator().manual_seed(seed)
        fixed = (calibrated_deltas(spec, model, list(modules), bits, config.group_size)
                 if config.rounding == "gptq" and config.calibrated_deltas else None)
        engine.release_free_memory()  # the rounding's statistics, before the passes
        taps = _Taps(modules, bits, config, fixed)
        weighted = {n: [0.0] * len(bits) for n in modules}
        try:
            for batch in batches:
                for n in modules:
                    taps.score[n] = [0.0] * len(bits)
                _draws(spec, model, batch, fisher_loss, taps, gen, config.samples, progress)
                w = batch.size / total_size
                for n in modules:
                    for i in range(len(bits)):
                        weighted[n][i] += w * 0.5 * taps.score[n][i] / config.samples
        finally:
            taps.close()
        out = {}
        for x in layers:
            n = x.name
            flags: list[str] = []
            omega = {}
            for i, b in enumerate(bits):
                v = weighted[n][i]
                if not math.isfinite(v) or v < 0:
                    flags.append("nonfinite_omega")
                    v = 0.0
                omega[b] = v
            if taps.elements[n] == 0:
                flags.append("no_gradient")
            elements = max(taps.elements[n], 1)
            out[n] = LayerSensitivity(
                omega, probes=len(batches) * config.samples, stop_reason="max_probes",
                params=x.params, flags=tuple(dict.fromkeys(flags)),
                extra={"output_mse": {str(b): taps.error_sq[n][i] / elements
                                      for i, b in enumerate(bits)},
                       "output_elements": taps.elements[n],
                       "surrogate": "fisher_loss" if callable(fisher_loss) else "output_hessian",
                       "form": config.form})
        return SensitivityTable(out, tuple(bits), self.name, seed, spec.name, asdict(config),
                                time.perf_counter() - start)


def _without_targets(spec: Any, batches: list[Any]) -> list[Any]:
    """The batches without their reference outputs, which the spec then lets go
    (`release_references`): its `fisher_loss` does not read them, and an LLM's take 200 MB
    beside the backward passes' activations."""
    out = [dataclasses.replace(b, target=None) if dataclasses.is_dataclass(b) else b
           for b in batches]
    release = getattr(spec, "release_references", None)
    if callable(release):
        release()
    return out


def _draws(spec: Any, model: nn.Module, batch: Any, fisher_loss: Any, taps: _Taps,
           gen: torch.Generator, samples: int, progress: ProgressFn | None) -> None:
    """One forward pass of `batch` and `samples` backward passes of the surrogate."""
    surrogate: Callable[[], torch.Tensor]
    if callable(fisher_loss):
        replay = _Replay(model)

        def surrogate() -> torch.Tensor:
            return fisher_loss(replay, batch, gen)
    else:
        z = engine.call_model(model, batch.inputs)
        if not isinstance(z, torch.Tensor):
            raise InvalidSpecError(
                f"spec {getattr(spec, 'name', '?')!r}: the model returns a "
                f"{type(z).__name__}, not a tensor; give the spec a "
                "`fisher_loss(model, batch, generator)`.")
        draw = curvature_sampler(spec, batch, z)

        def surrogate() -> torch.Tensor:
            return (draw(gen).to(z.dtype) * z).sum()
    for k in range(samples):
        taps.draw, taps.last = k, k == samples - 1
        s = surrogate()
        if s.requires_grad:
            torch.autograd.grad(s, taps.anchor, retain_graph=not taps.last, allow_unused=True)
        if progress is not None:
            progress(1)
