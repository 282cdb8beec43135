"""CUDA kernel check: int8 (torch._int_mm) and int4 (tinygemm, or bf16 unpack + cuBLAS)
linears vs fp32 and bf16 `F.linear`, per shape and row count.

Two timings per case: `us`, one eager call synchronized (what a Python caller waits: the
launches of every small op included), and `graph_us`, the same call replayed from a CUDA
graph (GPU time alone). Each int4 path is also timed on its own, which sets
`engine._kernels.INT4PACK_MAX_ROWS_CUDA`. Prints per-shape lines; the last line is one JSON
object. Needs a GPU.

    python -m benchmarks.engine_cuda
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable

import torch
import torch.nn.functional as F

import engine
from engine import KernelPath, QuantLinear, QuantScheme, quantize, time_call

SHAPES = ((4096, 4096), (4096, 14336))
ROWS = (1, 16, 64, 128, 512, 2048)
INT4_PATHS = (KernelPath.CUDA_INT4PACK_BF16, KernelPath.CUDA_DEQUANT_BF16)


def graph_us(fn: Callable[[], object], replays: int = 50) -> float:
    """Mean GPU time of `fn` replayed from a CUDA graph (launch overhead removed)."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(3):
            fn()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    graph.replay()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(replays):
        graph.replay()
    end.record()
    end.synchronize()
    return start.elapsed_time(end) * 1e3 / replays


def both(fn: Callable[[], object]) -> dict[str, float]:
    eager = time_call(lambda _i: fn(), repeats=50).p50_us
    with torch.inference_mode():
        return {"us": eager, "graph_us": graph_us(fn)}


def main() -> int:
    argparse.ArgumentParser(description=__doc__.splitlines()[0]).parse_args()
    if not torch.cuda.is_available():
        print(json.dumps({"error": "no CUDA device"}))
        return 1
    engine.configure_runtime()
    dev = torch.device("cuda")
    out: dict = {"device": torch.cuda.get_device_name(0), "torch_version": torch.__version__,
                 "int4pack_max_rows_cuda": engine._kernels.INT4PACK_MAX_ROWS_CUDA,
                 "shapes": {}}
    gen = torch.Generator().manual_seed(0)
    for k, n in SHAPES:
        w = torch.randn(n, k, generator=gen) / k**0.5
        mods = {
            "int8": QuantLinear(quantize(w, QuantScheme(8, True, None)), None).to(dev),
            "int4": QuantLinear(quantize(w, QuantScheme(4, False, 128)), None).to(dev),
        }
        wd, wb = w.to(dev), w.to(dev, torch.bfloat16)
        for m in ROWS:
            x = torch.randn(m, k, generator=gen).to(dev)
            xb = x.to(torch.bfloat16)
            ref = F.linear(x, wd)
            row: dict = {"fp32": both(lambda x=x, wd=wd: F.linear(x, wd)),
                         "bf16": both(lambda xb=xb, wb=wb: F.linear(xb, wb))}
            for label, mod in mods.items():
                with torch.inference_mode():
                    y = mod(x)
                row[label] = both(lambda q=mod, x=x: q(x)) | {
                    "path": mod.last_kernel, "sqnr_db": engine.sqnr_db(ref.cpu(), y.cpu())}
                for key in ("us", "graph_us"):
                    row[label][f"speedup_vs_fp32_{key}"] = row["fp32"][key] / row[label][key]
                    row[label][f"speedup_vs_bf16_{key}"] = row["bf16"][key] / row[label][key]
            row["int4_paths_graph_us"] = {
                p.value: both(lambda p=p, x=x, q=mods["int4"]: q.run_path(p, x))["graph_us"]
                for p in INT4_PATHS}
            out["shapes"][f"{k}x{n}_m{m}"] = row
            print(f"{k}x{n} m={m}: fp32 {row['fp32']['us']:.0f}/{row['fp32']['graph_us']:.0f} us "
                  f"bf16 {row['bf16']['us']:.0f}/{row['bf16']['graph_us']:.0f} us; " + "; ".join(
                      f"{lab} {row[lab]['us']:.0f}/{row[lab]['graph_us']:.0f} us "
                      f"{row[lab]['sqnr_db']:.1f} dB {row[lab]['path']}" for lab in mods)
                  + "; int4 paths (graph us) " + ", ".join(
                      f"{p} {t:.0f}" for p, t in row["int4_paths_graph_us"].items()),
                  file=sys.stderr, flush=True)
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
