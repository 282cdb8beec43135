"""Calibrated rounding benchmark: RTN vs GPTQ + bias correction (+ clipping search).

Uniform configs on MobileNetV2 (top-1 agreement with FP32 on 128 crops) and MiniLM (mean
cosine to FP32 embeddings on 500 held-out sentences), weights quantized with each rounding,
activations float (weight-only), so the figures isolate the rounding; the W8A8 figures
(8-bit activations on the int8 kernels) are reported beside them. Calibration: the models'
own calibration batches (64 crops / 64 sentences). The last line is one JSON object.

    python -m benchmarks.rounding
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import torch

import zoo
from engine import BitConfig, configure_runtime


def run(spec, bits: int, group_size: int | None, calibrated: bool,
        activation_bits: int | None = None, inputs: str = "fp32",
        metrics: dict | None = None) -> tuple[float, float]:
    """Primary metric and calibration seconds of one uniform config (all metrics into
    `metrics` when given)."""
    layers = spec.layers()
    kw = {"group_size": group_size, "activation_bits": activation_bits}
    cfg = (BitConfig.calibrated({x.name: bits for x in layers}, calibration_inputs=inputs, **kw)
           if calibrated else BitConfig.uniform(layers, bits, **kw))
    start = time.perf_counter()
    qmodel = spec.quantize(cfg)
    seconds = time.perf_counter() - start
    measured = spec.evaluate(qmodel)
    if metrics is not None:
        metrics.update(measured)
    metric = measured[spec.primary_metric]
    how = f"calibrated ({inputs} inputs)" if calibrated else "rtn"
    print(f"{spec.name} int{bits} g{group_size} {how:28s} act={activation_bits}: "
          f"{spec.primary_metric}={metric:.4f} ({seconds:.1f} s)", file=sys.stderr, flush=True)
    return metric, seconds


ABLATION = {  # the rounding steps one at a time (weight-only, per-channel asymmetric)
    "rtn": {},
    "rtn_bc": {"bias_correction": True},
    "gptq": {"rounding": "gptq"},
    "gptq_bc": {"rounding": "gptq", "bias_correction": True},
    "gptq_bc_clip": {"rounding": "gptq", "bias_correction": True, "clip_search": True},
}


def ablation(spec, out: dict) -> None:
    """Agreement and KL of each rounding step at uniform int8 and int4."""
    names = [x.name for x in spec.layers()]
    for bits in (8, 4):
        for label, kw in ABLATION.items():
            cfg = BitConfig(bits={n: bits for n in names}, activation_bits=None,
                            group_size=None, **kw)
            m = spec.evaluate(spec.quantize(cfg))
            key = f"ablation_mobilenetv2_int{bits}_{label}"
            out[f"{key}_agreement"], out[f"{key}_kl"] = m["agreement"], m["kl_divergence"]
            print(f"{key}: agreement={m['agreement']:.4f} kl={m['kl_divergence']:.5f}",
                  file=sys.stderr, flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--ablation", action="store_true",
                        help="Also each rounding step alone on MobileNetV2 (about 4 min more).")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    configure_runtime()
    out: dict = {}
    mb = zoo.get_model("mobilenetv2")
    mb.baseline()
    out["mobilenetv2_int8_agreement_rtn"] = run(mb, 8, None, False)[0]
    out["mobilenetv2_int8_agreement_calibrated"], sec8 = run(mb, 8, None, True)
    out["mobilenetv2_int4_agreement_rtn"] = run(mb, 4, None, False)[0]
    out["mobilenetv2_int4_agreement_calibrated"], sec4 = run(mb, 4, None, True)
    out["mobilenetv2_int4_g128_agreement_calibrated"] = run(mb, 4, 128, True)[0]
    out["mobilenetv2_int8_w8a8_agreement_rtn"] = run(mb, 8, None, False, 8)[0]
    out["mobilenetv2_int8_w8a8_agreement_calibrated"] = run(mb, 8, None, True, 8)[0]
    out["calibrate_seconds_mobilenetv2"] = max(sec8, sec4)
    # the two sources of calibration inputs, side by side (KL to FP32 is the finer measure)
    for bits in (8, 4):
        for inputs in ("fp32", "sequential"):
            m: dict = {}
            _, sec = run(mb, bits, None, True, inputs=inputs, metrics=m)
            key = f"mobilenetv2_int{bits}_{inputs}_inputs"
            out[f"{key}_agreement"] = m["agreement"]
            out[f"{key}_kl"] = m["kl_divergence"]
            out[f"{key}_seconds"] = sec

    if args.ablation:
        ablation(mb, out)

    lm = zoo.get_model("minilm")
    lm.baseline()
    out["minilm_int4_cos_rtn"] = run(lm, 4, None, False)[0]
    out["minilm_int4_cos_calibrated"], sec_lm = run(lm, 4, None, True)
    out["minilm_int4_g128_cos_rtn"] = run(lm, 4, 128, False)[0]
    out["minilm_int4_g128_cos_calibrated"] = run(lm, 4, 128, True)[0]
    out["minilm_int3_g128_cos_rtn"] = run(lm, 3, 128, False)[0]
    out["minilm_int3_g128_cos_calibrated"] = run(lm, 3, 128, True)[0]
    out["minilm_int8_w8a8_cos_calibrated"] = run(lm, 8, None, True, 8)[0]
    out["calibrate_seconds_minilm"] = sec_lm
    out["calibration_inputs"] = BitConfig(bits={}).calibration_inputs
    out["torch_version"] = torch.__version__
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
