"""Model zoo figures: FP32 / all-int8 / all-int4 metrics and time per evaluation.

    python -m benchmarks.zoo [--models digits-cnn,minilm]

The last line printed is one JSON object: per model and config, the metrics, seconds per
evaluation and whole-model latency of one evaluation batch.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import torch

import engine
import zoo
from engine import BitConfig


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(zoo.MODELS.names(only_available=True)))
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    engine.configure_runtime()
    start = time.perf_counter()
    out: dict = {"torch_version": torch.__version__, "threads": args.threads, "models": {}}
    for name in args.models.split(","):
        spec = zoo.get_model(name)
        layers = spec.layers()
        fp32 = spec.build()
        rows = {}
        configs = {"fp32": None, "int8": BitConfig.uniform(layers, 8),
                   "int4_g128": BitConfig.uniform(layers, 4)}
        for label, cfg in configs.items():
            model = fp32 if cfg is None else spec.quantize(cfg)
            metrics, seconds = spec.timed_evaluate(model)
            rows[label] = {"metrics": metrics, "evaluate_seconds": seconds,
                           "latency_us": spec.measure_latency_us(model),
                           "size_bytes": engine.model_size_bytes(model)}
            print(f"{name} {label}: {spec.primary_metric}={metrics[spec.primary_metric]:.4f} "
                  f"eval {seconds:.1f}s latency {rows[label]['latency_us'] / 1e3:.1f} ms",
                  file=sys.stderr, flush=True)
        out["models"][name] = rows
    out["seconds"] = time.perf_counter() - start
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
