"""Sensitivity benchmark: Hutchinson traces, their cost and their ranking, and FracBits.

- `hvp_cost_vs_fwd_bwd`: one Hessian-vector product probe over all MiniLM layers (gradient
  graph built once per batch, reused) against one forward+backward on the same batch.
- `exact_trace_max_rel_err_tiny`: Hutchinson vs the exact float64 trace (`torch.func.hessian`)
  on a tiny MLP, worst layer.
- `spearman_hutchinson_vs_measured_*`: rank correlation of Hutchinson Ω at 4 bits with the
  measured loss change at 4 bits (one layer at a time on the engine), digits-cnn and MiniLM.
- `minilm_trace_seconds`, `minilm_layers_within_10pct`: the full MiniLM trace estimate (all 36
  layers, default settings) and the share of layers whose std-error is within 10 % of the
  trace; `minilm_upper_half_within_10pct` for the upper half of layers by trace.
- `fracbits_*`: FracBits on digits-cnn at 2.5 bits over {2,3,4,8} against uniform 2-bit (the
  best uniform that fits), calibration loss (KL to FP32) of each.

Run with nothing else busy on the machine (torch's threads stall when another process
competes for the cores). The last line is one JSON object.

    python -m benchmarks.sensitivity            # everything (~10-15 min on 2 cores)
    python -m benchmarks.sensitivity --quick    # skips the MiniLM measured ranking
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time

import torch
import torch.nn.functional as F
from scipy.stats import spearmanr

import sensitivity
import zoo
from engine import configure_runtime
from sensitivity import math_attention, weight_errors


def hvp_cost(spec, repeats: int = 5) -> dict:
    """Seconds of one forward+backward and of one HVP probe (graph reused) on one batch."""
    model = spec.build()
    params = [m.weight for m in (dict(model.named_modules())[x.name] for x in spec.layers())]
    batch = spec.calibration_batches()[0]
    for p in params:
        p.requires_grad_(True)
    try:
        with math_attention():
            fwd_bwd = []
            for _ in range(repeats + 1):
                t = time.perf_counter()
                torch.autograd.grad(spec.loss(model, batch), params)
                fwd_bwd.append(time.perf_counter() - t)
            loss = spec.loss(model, batch)
            grads = torch.autograd.grad(loss, params, create_graph=True)
            gen = torch.Generator().manual_seed(0)
            probes = []
            for _ in range(repeats + 1):
                vs = [torch.randint(0, 2, p.shape, generator=gen).mul_(2).sub_(1).to(p.dtype)
                      for p in params]
                t = time.perf_counter()
                torch.autograd.grad(grads, params, grad_outputs=vs, retain_graph=True)
                probes.append(time.perf_counter() - t)
    finally:
        for p in params:
            p.requires_grad_(False)
    fb = sorted(fwd_bwd[1:])[len(fwd_bwd[1:]) // 2]
    hv = sorted(probes[1:])[len(probes[1:]) // 2]
    return {"fwd_bwd_s": fb, "hvp_probe_s": hv, "ratio": hv / fb}


def exact_error_tiny() -> float:
    """Worst relative error of Hutchinson traces vs exact ones on a tiny float64 MLP."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.Tanh(),
                                torch.nn.Linear(5, 3)).double()
    x, y = torch.randn(40, 6, dtype=torch.float64), torch.randn(40, 3, dtype=torch.float64)

    class Tiny:
        name = "tiny"

        def build(self):
            return model

        def calibration_batches(self):
            return [zoo.Batch(x, y, 40)]

        def loss(self, m, batch):
            return F.mse_loss(m(batch.inputs), batch.target)

    cfg = sensitivity.HutchinsonConfig(min_probes=64, max_probes=4000, rel_tol=0.01)
    est = sensitivity.hessian_traces(Tiny(), ["0", "2"], cfg, seed=0)

    def loss_with(ps):
        h = torch.tanh(F.linear(x, ps[0], model[0].bias))
        return F.mse_loss(F.linear(h, ps[1], model[2].bias), y)

    exact = sensitivity.exact_traces(loss_with, [model[0].weight, model[2].weight])
    return max(abs(est[n][0].mean - t) / abs(t) for n, t in zip(["0", "2"], exact, strict=True))


def spearman_at(h_table, m_table, bits: int = 4) -> float:
    names = list(h_table.layers)
    h = [h_table.layers[n].omega[bits] for n in names]
    m = [m_table.layers[n].extra["delta_loss"][str(bits)] for n in names]
    return float(spearmanr(h, m).statistic)


def fracbits_vs_uniform(spec) -> dict:
    from allocator import solve
    from engine import BitConfig
    from sensitivity import calibration_loss

    opts = {"rounding": "rtn", "bits": (2, 3, 4, 8), "measure": False, "weight_only": True,
            "latency": False}
    t = time.perf_counter()
    mixed = solve(spec, ["2.5bits"], solver="fracbits", **opts).config
    seconds = time.perf_counter() - t
    uniform = solve(spec, ["2.5bits"], solver="uniform", **opts).config

    def loss(cfg):
        return calibration_loss(spec, spec.quantize(BitConfig(bits=cfg.bits, activation_bits=None,
                                                             group_size=128)))

    return {"fracbits_avg_bits": mixed.cost["avg_bits"], "fracbits_kl": loss(mixed),
            "uniform_kl": loss(uniform), "fracbits_seconds": seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="skip the MiniLM measured ranking")
    args = parser.parse_args()
    configure_runtime()
    out: dict = {"torch_threads": torch.get_num_threads()}

    minilm = zoo.get_model("minilm")
    cost = hvp_cost(minilm)
    out["hvp_cost_vs_fwd_bwd"] = cost["ratio"]
    out["minilm_fwd_bwd_s"] = cost["fwd_bwd_s"]
    print(f"HVP probe {cost['hvp_probe_s']:.3f} s vs fwd+bwd {cost['fwd_bwd_s']:.3f} s "
          f"({cost['ratio']:.2f}x)", file=sys.stderr)

    out["exact_trace_max_rel_err_tiny"] = exact_error_tiny()

    cnn = zoo.get_model("digits-cnn")
    h = sensitivity.estimate(cnn, "hutchinson", seed=0, use_cache=False)
    m = sensitivity.estimate(cnn, "measured", seed=0, bits=(4,), use_cache=False)
    out["spearman_hutchinson_vs_measured_digits_cnn"] = spearman_at(h, m)

    names = [x.name for x in minilm.layers()]
    t = time.perf_counter()
    traces = sensitivity.hessian_traces(minilm, names, sensitivity.HutchinsonConfig(), seed=0)
    out["minilm_trace_seconds"] = time.perf_counter() - t
    rows = [traces[n][0] for n in names]
    ok = [len(r.values) > 1 and r.std_error <= 0.1 * abs(r.mean) for r in rows]
    out["minilm_layers_within_10pct"] = sum(ok) / len(rows)
    order = sorted(range(len(rows)), key=lambda i: -abs(rows[i].mean))
    upper = order[: math.ceil(len(rows) / 2)]
    out["minilm_upper_half_within_10pct"] = sum(ok[i] for i in upper) / len(upper)
    reasons = [traces[n][1] for n in names]
    out["minilm_stop_reasons"] = {r: reasons.count(r) for r in sorted(set(reasons))}
    print(f"MiniLM traces: {out['minilm_trace_seconds']:.0f} s, {sum(ok)}/{len(ok)} within 10%",
          file=sys.stderr)
    if not args.quick:
        t = time.perf_counter()
        mm = sensitivity.estimate(minilm, "measured", seed=0, bits=(4,), progress=True,
                                  use_cache=False)
        out["minilm_measured_seconds"] = time.perf_counter() - t
        errors = weight_errors(minilm.build(), names,
                               [b.inputs for b in minilm.calibration_batches()], [4],
                               rounding="gptq", group_size=128)
        x = {x.name: x.params for x in minilm.layers()}
        omega = [max(traces[n][0].mean, 0.0) / x[n] * errors[n][4] for n in names]
        measured = [mm.layers[n].extra["delta_loss"]["4"] for n in names]
        out["spearman_hutchinson_vs_measured_minilm"] = float(spearmanr(omega, measured).statistic)
    out |= fracbits_vs_uniform(cnn)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
