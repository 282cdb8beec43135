"""Engine benchmark: FP32 vs every quantized kernel path on the same shapes.

Weights are cycled through a working set of distinct layers whose FP32 copies take at
least 256 MB, so every call reads its weights from DRAM as in a real model (hot-cache
numbers overstate int8 about 2x). Speed-up = FP32 median time / quantized median time,
measured in this process on this machine. It prints the CPU's ISA flags, what the int8
probes found (`engine._int8_paths.int8_capabilities`) and the path chosen per shape with
the reason; `--minilm` adds whole-model MiniLM W8A8 against FP32 at batch 32 x 128 tokens.
The last line printed is one JSON object.

    python -m benchmarks.engine --quick [--minilm]
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time

import torch
import torch.nn.functional as F

import engine
import engine._int8_paths as P
import engine._kernels as K
from engine import (
    KernelPath,
    QuantConv2d,
    QuantLinear,
    QuantScheme,
    quantize,
    time_call,
)

WORKING_SET_BYTES = 256 << 20
# The ISA extensions that decide which int8 kernels are exact and fast.
INT8_ISA_FLAGS = ("avx2", "fma", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni", "amx_int8",
                  "asimd", "sve")


def _layers_for(fp32_bytes_per_layer: int) -> int:
    return max(2, math.ceil(WORKING_SET_BYTES / fp32_bytes_per_layer))


def _prime(modules, x, path=None) -> None:
    """Runs every module once so kernel layouts are prepared before timing starts."""
    with torch.inference_mode():
        for mod in modules:
            mod(x) if path is None else mod.run_path(path, x)


def bench_linear(k: int, n: int, rows: list[int], repeats: int, log) -> dict:
    count = _layers_for(k * n * 4)
    gen = torch.Generator().manual_seed(0)
    weights = [torch.randn(n, k, generator=gen) / k**0.5 for _ in range(count)]
    int8 = [QuantLinear(quantize(w, QuantScheme(8, True, None)), None) for w in weights]
    int4 = [QuantLinear(quantize(w, QuantScheme(4, False, 128)), None) for w in weights]
    out: dict = {"layers_cycled": count, "rows": {}}
    for m in rows:
        x = torch.randn(m, k, generator=gen)
        _prime(int8 + int4, x)
        per_row = [KernelPath.FBGEMM_INT8_DYNAMIC]  # per tensor: exact, not per row
        if P.fbgemm_max_code():
            per_row.append(KernelPath.FBGEMM_INT8_ROWS)
        if K.onednn_int8_usable():  # else oneDNN is inexact or runs its reference code
            per_row.append(KernelPath.ONEDNN_INT8_DYNAMIC)
        if K.int_mm_cpu_fast():  # else a plain loop: seconds per call
            per_row.append(KernelPath.CPU_INT8_INTMM)
        for path in per_row:
            _prime(int8, x, path)
        fp = time_call(lambda i, x=x: F.linear(x, weights[i % count]), repeats=repeats).p50_us
        res = {"fp32_us": fp}
        for label, mods in (("int8", int8), ("int4", int4)):
            t = time_call(lambda i, ms=mods, x=x: ms[i % count](x), repeats=repeats).p50_us
            res[f"{label}_auto_us"] = t
            res[f"{label}_auto_path"] = mods[0].last_kernel
            res[f"{label}_auto_reason"] = mods[0].last_kernel_reason
            res[f"{label}_speedup"] = fp / t
        for path in per_row:
            t = time_call(lambda i, p=path, x=x: int8[i % count].run_path(p, x),
                          repeats=repeats)
            res[f"{path.value}_speedup"] = fp / t.p50_us
        with torch.inference_mode():
            ref = F.linear(x, weights[0])
            res["int8_sqnr_db"] = engine.sqnr_db(ref, int8[0](x))
            res["int4_sqnr_db"] = engine.sqnr_db(ref, int4[0](x))
        out["rows"][m] = res
        others = ", ".join(f"{p.value} {res[f'{p.value}_speedup']:.2f}x" for p in per_row)
        log(f"linear {k}x{n} M={m}: fp32 {fp:,.0f} us, int8 {res['int8_speedup']:.2f}x "
            f"({res['int8_auto_path']}; {others}), int4 {res['int4_speedup']:.2f}x "
            f"({res['int4_auto_path']}), int8 {res['int8_sqnr_db']:.1f} dB")
        log(f"  int8 path: {res['int8_auto_reason']}")
    q4 = int4[0].quantized_weight()
    out["int4_bytes_per_weight"] = q4.nbytes / (k * n)
    out["int8_bytes_per_weight"] = int8[0].quantized_weight().nbytes / (k * n)
    return out


def bench_conv(batch: int, channels: int, size: int, repeats: int, log) -> dict:
    c = channels
    count = _layers_for(c * c * 9 * 4)
    gen = torch.Generator().manual_seed(1)
    weights = [torch.randn(c, c, 3, 3, generator=gen) / (c * 9) ** 0.5 for _ in range(count)]
    biases = [torch.randn(c, generator=gen) * 0.1 for _ in range(count)]
    x = torch.randn(batch, c, size, size, generator=gen).relu()
    x = x.contiguous(memory_format=torch.channels_last)
    w_cl = [w.contiguous(memory_format=torch.channels_last) for w in weights]
    convs = []
    for w, b in zip(weights, biases, strict=True):
        layer = QuantConv2d(quantize(w, QuantScheme(8, True, None)), b, (1, 1), (1, 1), (1, 1), 1)
        layer.calibrating = True
        layer(x)
        layer.calibrating = False
        convs.append(layer)
    paths = [p for p in (KernelPath.ONEDNN_INT8_STATIC_CONV, KernelPath.FBGEMM_INT8_STATIC_CONV,
                         KernelPath.ONEDNN_INT8_DYNAMIC)
             if P.conv_max_code("fbgemm" if p is KernelPath.FBGEMM_INT8_STATIC_CONV
                                else "onednn")]
    _prime(convs, x)
    for path in paths:
        _prime(convs, x, path)
    fp = time_call(lambda i: F.conv2d(x, w_cl[i % count], biases[i % count], padding=1),
                   repeats=repeats).p50_us
    auto = time_call(lambda i: convs[i % count](x), repeats=repeats).p50_us
    per_path = {p.value: fp / time_call(lambda i, p=p: convs[i % count].run_path(p, x),
                                        repeats=repeats).p50_us for p in paths}
    with torch.inference_mode():
        sqnr = engine.sqnr_db(F.conv2d(x, weights[0], biases[0], padding=1), convs[0](x))
    others = ", ".join(f"{p} {v:.2f}x" for p, v in per_path.items())
    log(f"conv3x3 {c}ch {size}x{size} b{batch}: fp32 {fp:,.0f} us, int8 {fp / auto:.2f}x "
        f"({convs[0].last_kernel}; {others}), {sqnr:.1f} dB")
    log(f"  conv path: {convs[0].last_kernel_reason}")
    dynamic = per_path.get(KernelPath.ONEDNN_INT8_DYNAMIC.value, math.nan)
    return {"layers_cycled": count, "fp32_us": fp, "static_speedup": fp / auto,
            "dynamic_speedup": dynamic, "per_path_speedup": per_path,
            "path": convs[0].last_kernel, "reason": convs[0].last_kernel_reason,
            "sqnr_db": sqnr}


def bench_minilm(log) -> dict:
    """Whole-model MiniLM, every linear W8A8 (calibrated), against FP32 at 32 x 128 tokens."""
    import zoo
    from benchmarks.pipeline import speed_at_128_tokens

    spec = zoo.get_model("minilm")
    config = engine.BitConfig.calibrated({x.name: 8 for x in spec.layers()})
    speedup, cosine = speed_at_128_tokens(spec, config)
    log(f"MiniLM W8A8 32x128: {speedup:.2f}x FP32, cosine {cosine:.4f}")
    return {"minilm_w8a8_speedup_vs_fp32": speedup, "minilm_w8a8_cos": cosine}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repeats (< 3 minutes)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--minilm", action="store_true",
                        help="also whole-model MiniLM W8A8 vs FP32 (needs the models extra)")
    args = parser.parse_args()
    if args.threads < 1:
        parser.error(f"--threads must be >= 1, got {args.threads}")
    torch.set_num_threads(args.threads)
    engine.configure_runtime()
    repeats = 15 if args.quick else 50
    start = time.perf_counter()

    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    flags = [f for f in INT8_ISA_FLAGS if f in engine.cpu_flags()]
    capabilities = P.int8_capabilities()
    log(f"CPU: {engine.cpu_model()}; ISA flags: {' '.join(flags) or 'unknown'}")
    log("int8 probes: " + ", ".join(f"{k}={v}" for k, v in capabilities.items()))
    lin = bench_linear(4096, 4096, [1, 32, 128], repeats, log)
    conv = bench_conv(1, 128, 28, repeats, log)
    minilm = bench_minilm(log) if args.minilm else {}
    r = lin["rows"]
    path_names = {p.value for p in KernelPath}
    summary = {
        "int8_linear_speedup_m1": r[1]["int8_speedup"],
        "int8_linear_speedup_m32": r[32]["int8_speedup"],
        "int8_linear_speedup_m128": r[128]["int8_speedup"],
        "int8_conv_speedup": conv["static_speedup"],
        "int8_conv_dynamic_speedup": conv["dynamic_speedup"],
        "int4_linear_speedup_m1": r[1]["int4_speedup"],
        "int4_bytes_per_weight": lin["int4_bytes_per_weight"],
        "int8_sqnr_db": r[32]["int8_sqnr_db"],
        "int4_sqnr_db": r[1]["int4_sqnr_db"],
        "int8_conv_sqnr_db": conv["sqnr_db"],
        "paths": {f"linear_m{m}": {"int8": r[m]["int8_auto_path"], "int4": r[m]["int4_auto_path"]}
                  for m in r} | {"conv": conv["path"]},
        "path_reasons": {f"linear_m{m}": r[m]["int8_auto_reason"] for m in r}
        | {"conv": conv["reason"]},
        "conv_per_path_speedup": conv["per_path_speedup"],
        **minilm,
        "per_path_int8_speedup": {f"m{m}": {k.removesuffix("_speedup"): v
                                            for k, v in r[m].items()
                                            if k.removesuffix("_speedup") in path_names}
                                  for m in r},
        "shapes": {"linear": [4096, 4096], "linear_rows": [1, 32, 128],
                   "conv": {"batch": 1, "channels": 128, "hw": 28, "kernel": 3},
                   "working_set_fp32_mb": WORKING_SET_BYTES >> 20},
        "threads": args.threads,
        "torch_version": torch.__version__,
        "cpu": engine.cpu_model(),
        "isa_flags": flags,
        "int8_capabilities": capabilities,
        "onednn_int8_usable": K.onednn_int8_usable(),
        "int_mm_cpu_fast": K.int_mm_cpu_fast(),
        "seconds": time.perf_counter() - start,
    }
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
