"""Solver benchmark: ILP speed on large problems, Pareto sweep, heuristics' gap to the ILP.

    python -m benchmarks.solvers [--ddpg-episodes 300]

Problems are seeded random ones shaped like real tables (allocator.testing_problems). The
last line printed is one JSON object, with the CPU it ran on (`cpu`, `cpu_flags`).

`ilp_200x6_seconds` is the median of three whole solves (`solve`, 200 layers x 6 widths,
one budget); `pareto_200x6_20pts_seconds` a whole 20-point front along bits with the ILP
program built once (`pareto_front`), and `pareto_200x6_20pts_rebuild_seconds` the same
front with a solve from scratch per point (`reuse_program=False`), in the same run;
`pareto_200x6_same_points` says whether both gave the same points.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

import engine
from allocator import pareto_front, parse_budget
from allocator.solvers import solve
from allocator.testing_problems import random_problem

BITS6 = (2, 3, 4, 5, 6, 8)
CPU_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8")


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ddpg-episodes", type=int, default=300)
    parser.add_argument("--ddpg-time-limit", type=float, default=240.0)
    args = parser.parse_args()
    out: dict = {"cpu": engine.cpu_model(),
                 "cpu_flags": sorted(engine.cpu_flags() & set(CPU_FLAGS))}
    print(f"CPU: {out['cpu']}; flags {out['cpu_flags']}", file=sys.stderr, flush=True)

    big = random_problem(1000, BITS6, seed=1, integer_params=False)
    lat_lo = sum(min(x.latency_us.values()) for x in big.layers)
    lat_hi = sum(max(x.latency_us.values()) for x in big.layers)
    budgets = [parse_budget("4.5bits"),
               parse_budget(f"{lat_lo + 0.5 * (lat_hi - lat_lo):.1f}us")]
    sol, sec = timed(lambda: solve(big, budgets, "ilp"))
    out["ilp_1000x6_2budgets_seconds"], out["ilp_1000x6_status"] = sec, sol.status

    mid = random_problem(200, BITS6, seed=2, integer_params=False)
    runs = [timed(lambda: solve(mid, [parse_budget("4.5bits")], "ilp")) for _ in range(3)]
    out["ilp_200x6_seconds"] = statistics.median(sec for _, sec in runs)
    out["ilp_200x6_status"] = runs[0][0].status
    front, sec = timed(lambda: pareto_front(mid, "bits", 20))
    out["pareto_200x6_20pts_seconds"], out["pareto_200x6_points"] = sec, len(front.points)
    rebuilt, sec = timed(lambda: pareto_front(mid, "bits", 20, reuse_program=False))
    out["pareto_200x6_20pts_rebuild_seconds"] = sec
    out["pareto_200x6_same_points"] = rebuilt.to_dict()["points"] == front.to_dict()["points"]
    print(f"ILP 200x6 {out['ilp_200x6_seconds']:.3f} s; front of 20 points "
          f"{out['pareto_200x6_20pts_seconds']:.2f} s (program built once), "
          f"{out['pareto_200x6_20pts_rebuild_seconds']:.2f} s (rebuilt per point)",
          file=sys.stderr, flush=True)

    p50 = random_problem(50, (2, 3, 4, 6, 8), seed=7, integer_params=False)
    b50 = [parse_budget("4bits")]
    ilp = solve(p50, b50, "ilp").objective
    greedy = solve(p50, b50, "greedy").objective
    out["greedy_gap_to_ilp_50_layers"] = (greedy - ilp) / ilp
    print(f"ILP 50 layers: {ilp:.6g}; greedy gap {out['greedy_gap_to_ilp_50_layers']:.2%}",
          file=sys.stderr, flush=True)
    ddpg, sec = timed(lambda: solve(p50, b50, "ddpg", episodes=args.ddpg_episodes, seed=0,
                                    time_limit_s=args.ddpg_time_limit))
    out["ddpg_gap_to_ilp_50_layers"] = (ddpg.objective - ilp) / ilp
    out["ddpg_seconds"], out["ddpg_episodes"] = sec, args.ddpg_episodes
    print(f"DDPG: gap {out['ddpg_gap_to_ilp_50_layers']:.2%} in {sec:.0f} s", file=sys.stderr)
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
