"""Wall-clock timing: the median's confidence interval and timing that stops on it."""

from __future__ import annotations

import math

import pytest
from torch import nn

from engine import time_call
from engine._timing import median_rel_ci
from hwprofiles._profiler import copies_for


def test_median_interval_shrinks_with_samples_and_ignores_one_outlier():
    assert median_rel_ci([100.0] * 4) == math.inf  # too few to say
    steady = [100.0, 101.0, 99.0, 100.5, 99.5]
    assert median_rel_ci(steady) < 0.02
    assert median_rel_ci(steady + [400.0]) < 0.03  # one slow call does not hold it open
    spread = [60.0, 140.0, 80.0, 120.0, 100.0]
    assert median_rel_ci(spread) > 0.2
    assert median_rel_ci(spread * 16) < median_rel_ci(spread)


def test_time_call_stops_once_the_median_is_known():
    calls = []
    timing = time_call(lambda i: calls.append(i), repeats=50, warmup=1, rel_ci=10.0)
    assert len(timing.samples_us) == 5  # the minimum, the interval already within bounds
    assert len(calls) == 6
    capped = time_call(lambda _i: None, repeats=7, warmup=0, rel_ci=0.0)
    assert len(capped.samples_us) == 7  # never within 0 %: the cap
    plain = time_call(lambda _i: None, repeats=7, warmup=0)
    assert len(plain.samples_us) == 7


@pytest.mark.parametrize(("call_bytes", "copies"), [(0, 16), (12 << 20, 4), (64 << 20, 1)])
def test_copies_cover_the_working_set_with_what_each_call_moves(call_bytes, copies):
    layer = nn.Linear(1024, 1024)  # 4 MiB of FP32 weights
    assert copies_for(layer, call_bytes=call_bytes, working_set_bytes=64 << 20,
                      max_copies=16) == copies
