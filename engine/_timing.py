"""Wall-clock timing of kernels: warm-up, repeats, median and p90."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from engine._platform import configure_runtime


@dataclass(frozen=True)
class Timing:
    """Repeated wall-clock measurements of one call, in microseconds."""

    samples_us: tuple[float, ...]

    @property
    def p50_us(self) -> float:
        return statistics.median(self.samples_us)

    @property
    def p90_us(self) -> float:
        s = sorted(self.samples_us)
        return s[min(len(s) - 1, round(0.9 * (len(s) - 1)))]


def time_call(
    fn: Callable[[int], object], *, repeats: int = 20, warmup: int = 3, min_time_s: float = 0.0
) -> Timing:
    """Times `fn(i)` (i = call index, so callers can cycle through a working set).

    Runs `warmup` untimed calls, then at least `repeats` timed ones, continuing until
    `min_time_s` of timed calls have passed. CUDA work is synchronized per call.
    """
    configure_runtime()
    sync = torch.cuda.synchronize if torch.cuda.is_available() else (lambda: None)
    with torch.inference_mode():
        for i in range(warmup):
            fn(i)
        sync()
        samples: list[float] = []
        start = time.perf_counter()
        i = warmup
        while len(samples) < repeats or time.perf_counter() - start < min_time_s:
            t0 = time.perf_counter()
            fn(i)
            sync()
            samples.append((time.perf_counter() - t0) * 1e6)
            i += 1
    return Timing(tuple(samples))
