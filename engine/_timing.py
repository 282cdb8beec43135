"""Wall-clock timing of kernels: warm-up, repeats, median and p90."""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable, Sequence
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


def median_rel_ci(samples_us: Sequence[float]) -> float:
    """Half-width of the median's ~95% confidence interval, relative to the median; inf
    below 5 samples. The median's standard error is taken as 1.253 sigma / sqrt(n) with
    sigma from the interquartile range (IQR / 1.349), so one slow outlier call, common on
    a shared machine, does not hold a steady timing open as a min-max interval would."""
    n = len(samples_us)
    if n < 5:
        return math.inf
    q1, median, q3 = statistics.quantiles(samples_us, n=4, method="inclusive")
    if median <= 0:
        return math.inf
    return 1.96 * 1.253 * (q3 - q1) / 1.349 / math.sqrt(n) / median


def time_call(
    fn: Callable[[int], object], *, repeats: int = 20, warmup: int = 3, min_time_s: float = 0.0,
    rel_ci: float | None = None, min_repeats: int = 5,
) -> Timing:
    """Times `fn(i)` (i = call index, so callers can cycle through a working set).

    Runs `warmup` untimed calls, then at least `repeats` timed ones, continuing until
    `min_time_s` of timed calls have passed. CUDA work is synchronized per call.

    With `rel_ci`, `repeats` is a cap instead: timing stops once at least `min_repeats`
    calls were timed and the median's confidence interval is within `rel_ci` of it
    (`median_rel_ci`), so steady kernels are timed in a few calls and noisy ones longer.
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
            if (rel_ci is not None and len(samples) >= min_repeats
                    and time.perf_counter() - start >= min_time_s
                    and median_rel_ci(samples) <= rel_ci):
                break
    return Timing(tuple(samples))
