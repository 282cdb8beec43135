"""`allocator demo`: quantize a transformer-sized block on the engine; measure speed and error.

Needs no data or trained model (seeded random weights), so it is the first thing to run on a
new machine: it shows which kernels this device has and what they gain over FP32.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class DemoRow:
    """One configuration measured at one batch size.

    Attributes:
        config: Its label ("fp32", "int8", "int4 g128", ...).
        rows: The batch size (input rows).
        latency_us: Median latency of one forward pass.
        speedup: FP32's latency over this one's, at the same batch size.
        sqnr_db: Output SQNR against FP32.
        size_bytes: Weight bytes in memory, packed codes and scales included.
        kernels: The kernel paths the layers ran on (" + "-joined; "float" for FP32).
    """

    config: str
    rows: int
    latency_us: float
    speedup: float
    sqnr_db: float
    size_bytes: int
    kernels: str


class DemoMLP(nn.Module):
    """A transformer-sized feed-forward block (1024 -> 4096 -> 1024), seeded weights."""

    def __init__(self, width: int = 1024, hidden: int = 4096, seed: int = 0):
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        self.up = nn.Linear(width, hidden)
        self.down = nn.Linear(hidden, width)
        with torch.no_grad():
            for lin in (self.up, self.down):
                w = torch.randn(lin.weight.shape, generator=gen)
                lin.weight.copy_(w / lin.in_features**0.5)
                lin.bias.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down(torch.nn.functional.gelu(self.up(x)))


def run_demo(*, rows: tuple[int, ...] = (1, 32), seed: int = 0,
             repeats: int = 30) -> list[DemoRow]:
    """Measures `DemoMLP` at FP32, uniform 8, 4 and 3 bits and mixed 4/8 bits.

    Args:
        rows: Batch sizes to measure at.
        seed: Seed of the weights and inputs.
        repeats: Timed calls per measurement.

    Returns:
        One row per batch size and configuration, FP32 first within each batch size.
    """
    import engine

    torch.manual_seed(seed)
    model = DemoMLP(seed=seed).eval()
    configs = {
        "fp32": None,
        "int8": engine.BitConfig(bits={"up": 8, "down": 8}),
        "int4 g128": engine.BitConfig(bits={"up": 4, "down": 4}),
        "mixed up4/down8": engine.BitConfig(bits={"up": 4, "down": 8}),
        "int3 g128 (dequant)": engine.BitConfig(bits={"up": 3, "down": 3}),
    }
    out: list[DemoRow] = []
    gen = torch.Generator().manual_seed(seed + 1)
    for m in rows:
        x = torch.randn(m, 1024, generator=gen)
        with torch.inference_mode():
            ref = model(x)
        base_us = None
        for label, cfg in configs.items():
            qmodel = model if cfg is None else engine.apply(model, cfg)
            timing = engine.time_call(lambda _i, q=qmodel, x=x: q(x), repeats=repeats,
                                      warmup=3)
            with torch.inference_mode():
                y = qmodel(x)
            base_us = timing.p50_us if base_us is None else base_us
            kernels = " + ".join(
                sorted({r["last_kernel"] for r in engine.kernel_report(qmodel).values()})
            )
            out.append(DemoRow(label, m, timing.p50_us, base_us / timing.p50_us,
                               engine.sqnr_db(ref, y), engine.model_size_bytes(qmodel),
                               kernels or "float"))
    return out
