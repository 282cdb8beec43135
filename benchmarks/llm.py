"""SmolLM2-135M benchmark: uniform int4 against the mixed allocation at 4.5 bits.

Evaluation is on Shakespeare windows (the built-in text), disjoint from the calibration
windows (help topics and other Shakespeare paragraphs). Weight-only, groups of 64 (576,
the width, is no multiple of 128), calibrated rounding (GPTQ + bias correction + clipping
search).

Caveat: this model's "FP32" weights are a dequantized Q4_1 grid (group 32, asymmetric,
float minimum); a 4-bit group-32 asymmetric quantizer would reproduce them exactly. The
schemes measured here (symmetric, group 64) are not that grid.

Measured: FP32 perplexity; uniform int4 KL and perplexity; the product's command cold
(`allocator solve --model smollm2-135m --budget 4.5bits`: default widths, the model's
estimator, an empty cache but the checkpoint; applying and measuring the result and the
best uniform) and a warm re-solve (cached table, no measuring), peak RSS of both; the
same budget over int4/int8 only, calibrated and RTN; llama.cpp's Q4_K_M layer rule at
the same budget (another optimizer's allocation, same windows and rounding); the
estimator's Spearman rank correlation with measured single-layer ΔKL (int4 RTN) on a
seeded subset of layers. The last line printed is one JSON object.

    python -m benchmarks.llm [--check-layers 30]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import resource
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import torch

import engine


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def spearman(a: list[float], b: list[float]) -> float:
    """Spearman rank correlation (average ranks for ties)."""
    from scipy.stats import spearmanr

    return float(spearmanr(a, b).statistic)


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def measured_delta_kl(spec, names: list[str], bits: int, group_size: int) -> dict[str, float]:
    """Calibration KL with each named layer alone at `bits` (RTN, weights only)."""
    from sensitivity import calibration_loss

    model = spec.build()
    out = {}
    for name in names:
        cfg = engine.BitConfig.with_rounding({name: bits}, "rtn", activation_bits=None,
                                             group_size=group_size)
        out[name] = calibration_loss(spec, engine.apply(model, cfg))
    return out


def calibrated(bits: dict[str, int], group: int | None) -> engine.BitConfig:
    """The pipeline's weight-only calibrated rounding config for `bits`."""
    return engine.BitConfig.with_rounding(bits, "gptq", activation_bits=None, group_size=group)


def more_bits_blocks(n_blocks: int) -> list[int]:
    """The blocks whose `attn_v` and `ffn_down` llama.cpp's Q4_K_M mixture stores with more
    bits: the first and last eighth, and every third block between."""
    eighth = n_blocks // 8
    return [i for i in range(n_blocks)
            if i < eighth or i >= 7 * n_blocks // 8 or (i - eighth) % 3 == 2]


def llamacpp_rule(layers, low: int, high: int, budget_bits: float) -> dict[str, int]:
    """llama.cpp's Q4_K_M layer rule on this model's candidates: every layer at `low`, then
    the rule's `v_proj`s and `down_proj`s (those of `more_bits_blocks`, in that order) at
    `high` while the mean stays within `budget_bits`. A fixed rule, blind to the model."""
    names = [x.name for x in layers]
    n_blocks = 1 + max(int(n.split(".")[2]) for n in names if n.startswith("model.layers."))
    blocks = more_bits_blocks(n_blocks)
    wanted = [f"model.layers.{i}.{kind}" for kind in ("self_attn.v_proj", "mlp.down_proj")
              for i in blocks]
    bits = {n: low for n in names}
    for name in wanted:
        trial = bits | {name: high}
        if engine.mean_bits(layers, trial) <= budget_bits + 1e-9:
            bits = trial
    return bits


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check-layers", type=int, default=30,
                        help="layers whose measured ΔKL the estimator is ranked against")
    parser.add_argument("--budget", default="4.5bits")
    args = parser.parse_args()
    torch.set_num_threads(2)
    engine.configure_runtime()
    # Cold: an empty data dir, but the checkpoint folder (built once from the GGUF, ~40 s
    # more) is shared with the default one when it exists there.
    shared = engine.data_dir() / "models" / "smollm2-135m"
    cold = Path(tempfile.mkdtemp(prefix="allocator-llm-"))
    if shared.is_dir():
        (cold / "models").mkdir()
        (cold / "models" / "smollm2-135m").symlink_to(shared)
    os.environ["ALLOCATOR_DATA_DIR"] = str(cold)
    import zoo
    from allocator import solve
    from zoo._smollm2 import smollm2_checkpoint

    log(f"cpu: {engine.cpu_model()} flags: {' '.join(sorted(engine.cpu_flags()))[:200]}")
    out: dict = {"cpu": engine.cpu_model(), "python": platform.python_version(),
                 "torch": torch.__version__, "threads": torch.get_num_threads()}
    start = time.perf_counter()
    smollm2_checkpoint()
    out["smollm2_checkpoint_seconds"] = time.perf_counter() - start

    spec = zoo.get_model("smollm2-135m")
    group = spec.default_group_size
    # The product's own command, cold: `allocator solve --model smollm2-135m --budget
    # 4.5bits` (default candidate widths, the model's estimator), without latency tables.
    start = time.perf_counter()
    report = solve(spec, [args.budget], group_size=group, latency=False, progress=False,
                   log=log)
    out["smollm2_cold_solve_seconds"] = time.perf_counter() - start
    out["timings_s"] = report.timings_s
    out["smollm2_sensitivity_seconds"] = report.timings_s.get("sensitivity_s")
    out["smollm2_bits_candidates"] = list(report.problem.bits)
    measured = report.measured
    out["smollm2_fp32_ppl"] = measured["fp32_metrics"]["ppl"]
    out["smollm2_mixed_avg_bits"] = engine.mean_bits(spec.layers(), report.config.bits)
    out["smollm2_mixed_kl"] = measured["metrics"]["kl"]
    out["smollm2_mixed_ppl"] = measured["metrics"]["ppl"]
    out["smollm2_mixed_top1"] = measured["metrics"]["top1_agreement"]
    out["smollm2_mixed_layers_per_width"] = dict(sorted(
        Counter(str(b) for b in report.config.bits.values()).items()))
    uniform = report.uniform
    if uniform.get("bits") == 4:
        out["smollm2_uniform_int4_kl"] = uniform["metrics"]["kl"]
        out["smollm2_uniform_int4_ppl"] = uniform["metrics"]["ppl"]
    else:  # the best uniform under the budget was not int4: measure int4 itself
        metrics = spec.evaluate(spec.quantize(calibrated({x.name: 4 for x in spec.layers()},
                                                          group)))
        out["smollm2_uniform_int4_kl"] = metrics["kl"]
        out["smollm2_uniform_int4_ppl"] = metrics["ppl"]
    out["smollm2_mixed_kl_ratio_vs_uniform_int4"] = (
        out["smollm2_mixed_kl"] / out["smollm2_uniform_int4_kl"])
    log(json.dumps(out))

    start = time.perf_counter()
    warm = solve(spec, [args.budget], group_size=group, latency=False, measure=False)
    out["smollm2_warm_solve_seconds"] = time.perf_counter() - start
    out["smollm2_warm_same_bits"] = warm.config.bits == report.config.bits
    out["smollm2_peak_rss_mb"] = peak_rss_mb()  # the cold and warm solves' peak

    # Only int4 and int8 at the same budget (the first framing): under calibrated
    # rounding int4's error is spread over many layers, and the few layers int8 can take
    # within 4.5 bits cannot remove most of it.
    bits = (4, 8)
    pair = solve(spec, [args.budget], bits=bits, group_size=group, latency=False)
    out["smollm2_int4_int8_mixed_kl"] = pair.measured["metrics"]["kl"]
    out["smollm2_int4_int8_mixed_ppl"] = pair.measured["metrics"]["ppl"]
    out["smollm2_int4_int8_mixed_kl_ratio_vs_uniform_int4"] = (
        out["smollm2_int4_int8_mixed_kl"] / out["smollm2_uniform_int4_kl"])

    # The same {4, 8} problem with plain round-to-nearest weights (the prototype the issue
    # quotes judged RTN): how much of the gap calibrated rounding closes by itself.
    rtn = solve(spec, [args.budget], bits=bits, group_size=group, rounding="rtn",
                latency=False)
    out["smollm2_rtn_mixed_kl"] = rtn.measured["metrics"]["kl"]
    out["smollm2_rtn_uniform_int4_kl"] = rtn.uniform["metrics"]["kl"]
    out["smollm2_rtn_mixed_kl_ratio_vs_uniform_int4"] = (
        out["smollm2_rtn_mixed_kl"] / out["smollm2_rtn_uniform_int4_kl"])

    # Another optimizer's allocation on the same model, windows and rounding: llama.cpp's
    # Q4_K_M rule (v_proj / down_proj of chosen blocks at more bits), filled to the budget,
    # on int4/int8 and on int4/int6 (Q4_K_M's own pair).
    budget_bits = float(args.budget.removesuffix("bits"))
    for high in (8, 6):
        rule = llamacpp_rule(spec.layers(), 4, high, budget_bits)
        rule_metrics = spec.evaluate(spec.quantize(calibrated(rule, group)))
        key = f"comparison_llamacpp_rule_4_{high}"
        out[f"{key}_avg_bits"] = engine.mean_bits(spec.layers(), rule)
        out[f"{key}_kl"] = rule_metrics["kl"]
        out[f"{key}_ppl"] = rule_metrics["ppl"]
        out[f"{key}_kl_ratio_vs_uniform_int4"] = rule_metrics["kl"] / out[
            "smollm2_uniform_int4_kl"]
    out["smollm2_mixed_beats_llamacpp_rule"] = out["smollm2_mixed_kl"] < min(
        out["comparison_llamacpp_rule_4_8_kl"], out["comparison_llamacpp_rule_4_6_kl"])
    log(json.dumps({k: v for k, v in out.items() if k.startswith("comparison")}))

    # The estimator's ranking against measured single-layer ΔKL on a subset, both with
    # int4 RTN weights (like for like; the solve's own table scores calibrated weights).
    import sensitivity

    table = sensitivity.estimate(spec, spec.default_estimator, bits=bits,
                                 options={"rounding": "rtn", "group_size": group})
    names = [x.name for x in spec.layers()]
    subset = sorted(random.Random(0).sample(names, min(args.check_layers, len(names))),
                    key=names.index)
    start = time.perf_counter()
    base = sensitivity.calibration_loss(spec, spec.build())
    delta = {n: v - base for n, v in measured_delta_kl(spec, subset, 4, group).items()}
    out["measured_subset_seconds"] = time.perf_counter() - start
    omega = table.omega()
    out["smollm2_estimator"] = spec.default_estimator
    out["smollm2_estimator_spearman_vs_measured"] = spearman(
        [omega[n][4] for n in subset], [delta[n] for n in subset])
    out["estimator_check_layers"] = len(subset)
    out["estimator_check"] = {n: {"omega_4": omega[n][4], "measured_delta_kl_4": delta[n]}
                              for n in subset}
    out["peak_rss_mb_with_estimator_check"] = peak_rss_mb()
    out["caveat"] = ("SmolLM2's FP32 weights are a dequantized Q4_1 grid (group 32, "
                     "asymmetric, float min); measured here with symmetric group-64 scales")
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
