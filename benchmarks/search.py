"""Search benchmark: how long a cold search takes, how fast a warm cache re-solves, and
MobileNetV2 on int8 activations.

- `mobilenetv2_cold_search_seconds`: `allocator solve --model mobilenetv2 --budget 4bits
  --bits 2,4,8` in a new process on an empty cache (a fresh `ALLOCATOR_DATA_DIR` that
  shares only the built model checkpoints, so no sensitivity or latency table exists),
  wall time from start to exit; `mobilenetv2_agreement_at_4bits` its measured top-1
  agreement with FP32; `*_stages_s` the solve's own stage timings (`timings_s`).
  `--estimator` picks the sensitivity estimator of this run (default: the model's).
- `minilm_cold_search_seconds`: `allocator solve --model minilm --budget 5bits` likewise
  (`minilm_cosine_at_5bits` its measured cosine to FP32).
- `warm_resolve_seconds_max`: in one process on the caches those runs left,
  `allocator.solve(..., measure=False)` at three further budgets per model (sensitivity and
  latency tables read from disk, the ILP solved); the slowest of the six.
- `pareto_200x6_20pts_seconds`: a 20-point front on a random 200-layer x 6-width problem
  with the ILP built once (as `benchmarks.solvers`).
- `mobilenetv2_w8a8_agreement_calibrated`, `mobilenetv2_w8a8_speedup_vs_fp32`: every layer
  at 8 bits W8A8 with calibrated rounding and activation ranges, agreement with FP32 on the
  evaluation crops and engine latency against FP32 at the model's latency batch.

The CPU's ISA flags and the int8 probe results are printed first. The last line printed is
one JSON object.

    python -m benchmarks.search [--skip-cold] [--estimator fisher]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

import engine
import zoo
from allocator import pareto_front, solve
from allocator.testing_problems import random_problem

CPU_FLAGS = ("avx2", "fma", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8")
COLD = {
    "mobilenetv2": ["--budget", "4bits", "--bits", "2,4,8"],
    "minilm": ["--budget", "5bits"],
}
WARM_BUDGETS = {"mobilenetv2": ("3.5bits", "4.5bits", "5bits"),
                "minilm": ("4.5bits", "5.5bits", "6bits")}
WARM_BITS = {"mobilenetv2": (2, 4, 8), "minilm": None}
PRIMARY = {"mobilenetv2": ("agreement", "mobilenetv2_agreement_at_4bits"),
           "minilm": ("cosine", "minilm_cosine_at_5bits")}


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def fresh_data_dir(root: Path) -> Path:
    """An empty data dir that shares the built model checkpoints of the current one."""
    folder = root / "data"
    folder.mkdir()
    models = engine.data_dir() / "models"
    if models.is_dir():
        (folder / "models").symlink_to(models, target_is_directory=True)
    return folder


def allocator_command() -> list[str]:
    exe = shutil.which("allocator", path=str(Path(sys.executable).parent))
    return [exe] if exe else [sys.executable, "-m", "allocator.cli"]


def cold_search(model: str, args: list[str], data: Path, estimator: str | None,
                out: dict[str, Any]) -> None:
    cmd = [*allocator_command(), "solve", "--model", model, *args, "--json"]
    if estimator:
        cmd += ["--estimator", estimator]
    env = os.environ | {"ALLOCATOR_DATA_DIR": str(data), "HF_HUB_OFFLINE": "1"}
    log(f"cold: {' '.join(cmd[1:])}")
    start = time.perf_counter()
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"{model}: exit {done.returncode}: {done.stderr.strip()[-800:]}")
    report = json.loads(done.stdout)
    metric, key = PRIMARY[model]
    out[f"{model}_cold_search_seconds"] = seconds
    out[key] = report["measured"]["metrics"][metric]
    out[f"{model}_stages_s"] = report.get("timings_s", {})
    out[f"{model}_cold_estimator"] = report["config"].get("extra", {}).get(
        "reproducibility", {}).get("estimator", estimator)
    stages = ", ".join(f"{k} {v:.0f}" for k, v in out[f"{model}_stages_s"].items())
    log(f"  {seconds:.0f} s ({stages}); {metric} {out[key]:.4f}")


def warm_resolves(data: Path, out: dict[str, Any]) -> None:
    """Further budgets in this process on the caches the cold runs left."""
    os.environ["ALLOCATOR_DATA_DIR"] = str(data)
    worst = 0.0
    for model, budgets in WARM_BUDGETS.items():
        spec = zoo.get_model(model)
        kwargs: dict[str, Any] = {"measure": False}
        if WARM_BITS[model]:
            kwargs["bits"] = WARM_BITS[model]
        solve(spec, [budgets[0]], **kwargs)  # loads the model and reads the tables once
        for budget in budgets:
            start = time.perf_counter()
            solve(spec, [budget], **kwargs)
            seconds = time.perf_counter() - start
            worst = max(worst, seconds)
            log(f"warm {model} {budget}: {seconds:.2f} s")
    out["warm_resolve_seconds_max"] = worst


def pareto_seconds(out: dict[str, Any]) -> None:
    problem = random_problem(200, (2, 3, 4, 5, 6, 8), seed=2, integer_params=False)
    start = time.perf_counter()
    front = pareto_front(problem, "bits", 20)
    out["pareto_200x6_20pts_seconds"] = time.perf_counter() - start
    log(f"Pareto front of {len(front.points)} points on 200 x 6: "
        f"{out['pareto_200x6_20pts_seconds']:.2f} s")


def mobilenet_w8a8(out: dict[str, Any]) -> None:
    spec = zoo.get_model("mobilenetv2")
    bits = {x.name: 8 for x in spec.layers()}
    config = engine.BitConfig.calibrated(bits, activation_bits=8,
                                         group_size=spec.default_group_size)
    qmodel = spec.quantize(config)
    metrics = spec.evaluate(qmodel)
    fp32_us = spec.measure_latency_us(spec.build())
    q_us = spec.measure_latency_us(qmodel)
    out["mobilenetv2_w8a8_agreement_calibrated"] = metrics["agreement"]
    out["mobilenetv2_w8a8_speedup_vs_fp32"] = fp32_us / q_us
    out["mobilenetv2_w8a8_kernels"] = dict(engine.kernel_counts(qmodel))
    log(f"MobileNetV2 W8A8 (calibrated): agreement {metrics['agreement']:.4f}, "
        f"{fp32_us / q_us:.2f}x FP32 ({fp32_us / 1e3:.1f} vs {q_us / 1e3:.1f} ms); kernels "
        f"{out['mobilenetv2_w8a8_kernels']}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--skip-cold", action="store_true",
                        help="leave out the cold searches and the warm re-solves")
    parser.add_argument("--estimator", default=None,
                        help="sensitivity estimator of the cold searches")
    args = parser.parse_args()
    torch.set_num_threads(2)
    engine.configure_runtime()
    from engine._int8_paths import int8_capabilities

    out: dict[str, Any] = {"cpu_model": engine.cpu_model(),
                           "cpu_isa_flags": sorted(engine.cpu_flags() & set(CPU_FLAGS)),
                           "int8_paths": int8_capabilities(),
                           "threads": torch.get_num_threads()}
    log(f"CPU {out['cpu_model']}, ISA {out['cpu_isa_flags']}, int8 {out['int8_paths']}")
    if not args.skip_cold:
        with tempfile.TemporaryDirectory(prefix="allocator-search-") as folder:
            data = fresh_data_dir(Path(folder))
            for model, cold_args in COLD.items():
                cold_search(model, cold_args, data, args.estimator, out)
            warm_resolves(data, out)
    pareto_seconds(out)
    mobilenet_w8a8(out)
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
