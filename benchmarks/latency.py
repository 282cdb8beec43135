"""Latency tables: profile time, and whole-model predictions against measurement.

    python -m benchmarks.latency [--models digits-cnn,minilm] [--threads 2]

Profiles digits-cnn (its evaluation batch) and MiniLM (32 sentences padded to 128 tokens)
at 2..8 bits and FP32, then quantizes each model with a few configs (uniform 8, uniform 4,
mixed 4/8), and compares the table's prediction (with the layout correction; the plain
additive sum is reported too) with the measured quantized model on the same batch.
A table goes to stderr; the last line printed is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch

import engine
import hwprofiles
import zoo
from engine import BitConfig

MINILM_BATCH, MINILM_TOKENS = 32, 128


def model_inputs(spec: zoo.ModelSpec):
    """The batch each model is profiled and timed at."""
    if spec.name == "minilm":
        texts = spec.texts()["eval"][:MINILM_BATCH]
        enc = spec.tokenizer()(texts, padding="max_length", truncation=True,
                               max_length=MINILM_TOKENS, return_tensors="pt")
        return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}
    return spec.latency_batch()


def configs_for(layers: list[engine.LayerSpec]) -> dict[str, BitConfig]:
    names = [x.name for x in layers]
    return {"uniform8": BitConfig.uniform(layers, 8), "uniform4": BitConfig.uniform(layers, 4),
            "mixed4/8": BitConfig(bits={n: 8 if i % 2 == 0 else 4 for i, n in enumerate(names)})}


def run_model(name: str, bits: tuple[int, ...], repeats: int, log) -> dict:
    spec = zoo.get_model(name)
    model = spec.build()
    inputs = model_inputs(spec)
    layers = engine.discover_layers(model, inputs, skip=spec.skip_layers)
    start = time.perf_counter()
    table = hwprofiles.profile_layers(model, layers, inputs, bits, repeats=repeats,
                                      progress=True, model_name=name)
    profile_s = time.perf_counter() - start
    log(f"{name}: profiled {len(table.entries)} shapes x {len(bits) + 1} widths for "
        f"{len(layers)} layers at batch {table.batch} in {profile_s:.1f} s; non-layer time "
        f"{table.overhead_us / 1e3:.2f} ms")
    rows = hwprofiles.additivity(spec, table, configs_for(layers), inputs=inputs,
                                 layers=layers, repeats=repeats)
    for r in rows:
        log(f"  {r.config:>9}: predicted {r.predicted_us / 1e3:8.2f} ms (plain sum "
            f"{r.additive_us / 1e3:8.2f}), measured {r.measured_us / 1e3:8.2f} ms, error "
            f"{100 * r.rel_err:+6.1f}% (plain {100 * r.additive_rel_err:+6.1f}%; the "
            f"measurement's own noise +-{100 * (r.noise_rel or 0.0):.1f}%); kernels "
            f"{dict(r.measured_kernels)}")
    return {"profile_seconds": profile_s, "batch": table.batch, "shapes": len(table.entries),
            "layers": len(layers), "overhead_us": table.overhead_us,
            "pred_vs_measured_rel_err": max(abs(r.rel_err) for r in rows),
            "additive_rel_err": max(abs(r.additive_rel_err) for r in rows),
            "noise_rel_max": max(r.noise_rel or 0.0 for r in rows),
            "rows": [r.to_dict() for r in rows]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="digits-cnn,minilm")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--bits", default="2,3,4,5,6,8")
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    engine.configure_runtime()
    bits = tuple(int(b) for b in args.bits.split(","))

    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    out: dict = {"torch_version": torch.__version__, "threads": args.threads,
                 "loadavg_before": os.getloadavg(),
                 "device": hwprofiles.DeviceFingerprint.current().to_dict(), "models": {}}
    for name in args.models.split(","):
        res = run_model(name, bits, args.repeats, log)
        out["models"][name] = res
        key = name.replace("-", "_")
        out[f"{key}_pred_vs_measured_rel_err"] = res["pred_vs_measured_rel_err"]
        out[f"{key}_additive_rel_err"] = res["additive_rel_err"]
        out[f"{key}_noise_rel_max"] = res["noise_rel_max"]
        out[f"{key}_profile_seconds"] = res["profile_seconds"]
    out["loadavg_after"] = os.getloadavg()  # other work on the machine skews every time
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
