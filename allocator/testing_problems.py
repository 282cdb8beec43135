"""Seeded random allocation problems for solver tests and benchmarks."""

from __future__ import annotations

import random

from allocator._problem import Problem, ProblemLayer


def random_problem(n_layers: int, bits: tuple[int, ...] = (2, 3, 4, 6, 8), *, seed: int = 0,
                   ties: int = 0, latency: bool = True, integer_params: bool = True) -> Problem:
    """A problem shaped like real ones: Ω falls ~4x per extra bit with per-layer scales,
    latency rises with bits but not proportionally; `ties` groups of two layers."""
    rng = random.Random(seed)
    layers = []
    for i in range(n_layers):
        params = rng.randint(50, 5000) if integer_params else rng.randint(10_000, 5_000_000)
        scale = 10 ** rng.uniform(-3, 1)
        omega = {b: scale * 4.0 ** (-b) * rng.uniform(0.5, 2.0) for b in bits}
        for b_lo, b_hi in zip(bits, bits[1:], strict=False):  # more bits never hurt
            omega[b_hi] = min(omega[b_hi], omega[b_lo])
        lat = None
        if latency:
            base = rng.uniform(5, 50)
            lat = {b: base * (0.6 + 0.05 * b) * rng.uniform(0.95, 1.05) for b in bits}
        layers.append(ProblemLayer(f"layer{i}", params, params * rng.randint(8, 200), omega,
                                   latency_us=lat))
    tie_groups = tuple((f"layer{2 * j}", f"layer{2 * j + 1}")
                       for j in range(min(ties, n_layers // 2)))
    return Problem(layers=tuple(layers), bits=bits, ties=tie_groups, model=f"random-{seed}")
