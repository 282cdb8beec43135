"""CUDA kernel check: int8 (torch._int_mm) and int4 (tinygemm) linears vs fp32/bf16.

Prints per-shape SQNR and speed-ups; the last line is one JSON object. Needs a GPU.

    python benchmarks/engine_cuda.py
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).parent.resolve()]

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

import engine  # noqa: E402
from engine import QuantLinear, QuantScheme, quantize, time_call  # noqa: E402


def main() -> int:
    if not torch.cuda.is_available():
        print(json.dumps({"error": "no CUDA device"}))
        return 1
    dev = torch.device("cuda")
    out: dict = {"device": torch.cuda.get_device_name(0), "torch_version": torch.__version__,
                 "shapes": {}}
    gen = torch.Generator().manual_seed(0)
    for k, n in ((4096, 4096), (4096, 14336)):
        w = torch.randn(n, k, generator=gen) / k**0.5
        mods = {
            "int8": QuantLinear(quantize(w, QuantScheme(8, True, None)), None).to(dev),
            "int4": QuantLinear(quantize(w, QuantScheme(4, False, 128)), None).to(dev),
        }
        wd, wb = w.to(dev), w.to(dev, torch.bfloat16)
        for m in (1, 16, 128, 2048):
            x = torch.randn(m, k, generator=gen).to(dev)
            xb = x.to(torch.bfloat16)
            ref = F.linear(x, wd)
            fp = time_call(lambda i: F.linear(x, wd), repeats=50).p50_us
            bf = time_call(lambda i: F.linear(xb, wb), repeats=50).p50_us
            row = {"fp32_us": fp, "bf16_us": bf}
            for label, mod in mods.items():
                t = time_call(lambda i, q=mod: q(x), repeats=50).p50_us
                with torch.inference_mode():
                    y = mod(x)
                row[label] = {"us": t, "speedup_vs_fp32": fp / t, "speedup_vs_bf16": bf / t,
                              "sqnr_db": engine.sqnr_db(ref.cpu(), y.cpu()),
                              "path": mod.last_kernel}
            out["shapes"][f"{k}x{n}_m{m}"] = row
            print(f"{k}x{n} m={m}: " + ", ".join(
                f"{lab} {row[lab]['speedup_vs_bf16']:.2f}x bf16 {row[lab]['sqnr_db']:.1f}dB "
                f"{row[lab]['path']}" for lab in mods), file=sys.stderr, flush=True)
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
