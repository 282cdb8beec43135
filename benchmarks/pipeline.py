"""End-to-end pipeline benchmark on MiniLM and digits-cnn.

MiniLM with bits {4, 8} under 5 average bits (cold: empty cache, so sensitivity, this
machine's latency profile and the measurements all run; warm: cached tables, model already
loaded, no measurement),
digits-cnn under 4 bits, each against the best uniform configuration at the same budget,
and whole-model all-int8 / mixed MiniLM speed against FP32 at batch 32 x 128 tokens.
The last line printed is one JSON object.

    python -m benchmarks.pipeline
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

import torch

import engine
import zoo
from allocator import solve


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def speed_at_128_tokens(spec, config) -> tuple[float, float]:
    """(speed-up vs FP32, cosine) of a config at batch 32 x 128 tokens."""
    texts = (spec.texts()["eval"] * 2)[:32]
    enc = spec.tokenizer()(texts, padding="max_length", truncation=True, max_length=128,
                           return_tensors="pt")
    inputs = {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}
    fp32, qmodel = spec.build(), spec.quantize(config)
    ref_us = engine.time_call(lambda _i: fp32(**inputs), repeats=7, warmup=2).p50_us
    q_us = engine.time_call(lambda _i: qmodel(**inputs), repeats=7, warmup=2).p50_us
    return ref_us / q_us, spec.evaluate(qmodel)["cosine"]


def main() -> int:
    argparse.ArgumentParser(description=__doc__.splitlines()[0]).parse_args()
    torch.set_num_threads(2)
    engine.configure_runtime()
    out: dict = {}
    cache = tempfile.mkdtemp(prefix="allocator-bench-")
    os.environ["ALLOCATOR_DATA_DIR"] = cache  # cold: nothing cached
    lm = zoo.get_model("minilm")
    start = time.perf_counter()
    cold = solve(lm, ["5bits"], bits=(4, 8), progress=True)  # with this machine's latency table
    out["minilm_cold_solve_seconds"] = time.perf_counter() - start
    start = time.perf_counter()
    warm = solve(lm, ["5bits"], bits=(4, 8), measure=False)
    out["minilm_warm_solve_seconds"] = time.perf_counter() - start
    assert warm.config.bits == cold.config.bits
    m = cold.config.extra["measured"]
    u = cold.config.extra["uniform_baseline"]
    out["minilm_mixed_cos_at_5bits"] = m["metrics"]["cosine"]
    out["minilm_mixed_avg_bits"] = cold.config.cost["avg_bits"]
    out["minilm_uniform4_cos"] = u["metrics"]["cosine"]
    log(f"MiniLM 5 bits: mixed {out['minilm_mixed_cos_at_5bits']:.4f} at "
        f"{out['minilm_mixed_avg_bits']:.2f} bits vs uniform 4: {out['minilm_uniform4_cos']:.4f}; "
        f"cold {out['minilm_cold_solve_seconds']:.0f} s, "
        f"warm {out['minilm_warm_solve_seconds']:.1f} s")

    layers = lm.layers()
    int8 = engine.BitConfig.calibrated({x.name: 8 for x in layers})
    out["minilm_int8_speedup_vs_fp32"], out["minilm_int8_cos"] = speed_at_128_tokens(lm, int8)
    mixed = engine.BitConfig.calibrated(cold.config.bits)
    out["minilm_mixed_speedup_vs_fp32"], _ = speed_at_128_tokens(lm, mixed)
    log(f"MiniLM 32x128: int8 {out['minilm_int8_speedup_vs_fp32']:.2f}x (cos "
        f"{out['minilm_int8_cos']:.4f}), mixed {out['minilm_mixed_speedup_vs_fp32']:.2f}x")

    dc = zoo.get_model("digits-cnn")
    res = solve(dc, ["4bits"], latency=False)
    out["digits_cnn_mixed_acc_at_4bits"] = res.config.extra["measured"]["metrics"]["accuracy"]
    out["digits_cnn_mixed_nll_at_4bits"] = res.config.extra["measured"]["metrics"]["nll"]
    ub = res.config.extra["uniform_baseline"]
    out["digits_cnn_uniform4_acc"] = ub["metrics"]["accuracy"]
    out["digits_cnn_uniform4_nll"] = ub["metrics"]["nll"]
    log(f"digits-cnn 4 bits: mixed acc {out['digits_cnn_mixed_acc_at_4bits']:.4f} "
        f"vs uniform {out['digits_cnn_uniform4_acc']:.4f}")
    res = solve(dc, ["2.5bits"], latency=False)  # where uniform (2-bit) starts to hurt
    out["digits_cnn_mixed_acc_at_2_5bits"] = res.config.extra["measured"]["metrics"]["accuracy"]
    out["digits_cnn_mixed_nll_at_2_5bits"] = res.config.extra["measured"]["metrics"]["nll"]
    ub = res.config.extra["uniform_baseline"]
    out["digits_cnn_uniform2_acc"] = ub["metrics"]["accuracy"]
    out["digits_cnn_uniform2_nll"] = ub["metrics"]["nll"]
    out["torch_version"] = torch.__version__
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
