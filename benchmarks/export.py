"""Export benchmark: each format loaded back in its own library and compared with the engine.

- ONNX, MiniLM, weight-only: the 5-bit mixed config over {4, 8} (the same `solve` call as
  `benchmarks.pipeline` with float activations; a cached sensitivity table makes re-runs
  fast), exported as the product does (MatMulNBits, float compute: accuracy level 0) and
  with ONNX Runtime's int8 compute (accuracy level 4: keys ending `_int8`); cosine to the
  engine's and to FP32 outputs on the first evaluation batch.
- ONNX, MiniLM, the onnx target's own solves (MiniLM's default W8A8: 8-bit layers on
  DynamicQuantizeMatMul, 4-bit on MatMulNBits) at `W8A8_BUDGETS`; each checked layer by
  layer on ONNX Runtime's inputs, and its outputs' cosine to FP32 on the speed batch.
  `minilm_onnx_speedup_vs_onnx_fp32` is the first budget's ONNX Runtime speed against the
  FP32 export at batch 32 x 128 tokens (all sessions run in turn, median of `--repeats`).
  An ONNX Runtime latency table of the model at that batch (W8A8 settings) predicts each
  W8A8 config's whole-model time against its measured one.
- ONNX, MobileNetV2: a mixed weight-only config by rule (the stem, the depthwise convs and
  the classifier at 8 bits, the 1x1 convs at 4; its Fisher sensitivity needs a
  `fisher_loss` the spec lacks, and the measured one takes many minutes); top-1 agreement
  of ONNX Runtime's logits with the engine's on the 128 evaluation images, and speed
  against the FP32 export at batch 32.
- compressed-tensors and GGUF: SmolLM2-135M when it is available (else a tiny Llama),
  mixed 4/8 (compressed-tensors) and 4/5/8 (GGUF) round-to-nearest; the largest difference
  between the weights the format's library decodes and the engine's.

The last line printed is one JSON object.

    python -m benchmarks.export [--repeats 7] [--skip-minilm] [--skip-mobilenet] [--skip-llm]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

import engine
import zoo
from allocator import solve

ORT_ISA = ("avx2", "fma", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8")
# MiniLM solved for the onnx target (W8A8) at these sizes; the headline speed is the first
W8A8_BUDGETS = ("7bits", "6.5bits", "8bits")
HEADLINE_BUDGET = W8A8_BUDGETS[0]


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def interleaved_ms(models: list[Any], inputs: Any, repeats: int) -> list[float]:
    """Median run time (ms) of each ONNX model or session, the models run in turn."""
    from hwprofiles import time_in_turn

    return [us / 1e3 for us in time_in_turn(models, inputs, repeats=repeats, warmup=1)]


def ort_outputs(path: Path, inputs: Any) -> torch.Tensor:
    from hwprofiles import onnxruntime_feed, onnxruntime_session

    session = onnxruntime_session(path)
    return torch.from_numpy(session.run(None, onnxruntime_feed(session, inputs))[0])


def cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    from allocator.export._onnx import cosine as flat_cosine

    return flat_cosine(a.numpy(), b.numpy())


def _big_batch(lm: Any) -> dict[str, torch.Tensor]:
    """32 evaluation texts padded to 128 tokens: the batch the speed keys are measured at."""
    texts = (lm.texts()["eval"] * 2)[:32]
    enc = lm.tokenizer()(texts, padding="max_length", truncation=True, max_length=128,
                         return_tensors="pt")
    return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}


def minilm(out: dict[str, Any], tmp: Path, repeats: int) -> None:
    from allocator.export._onnx import export_onnx, float_onnx
    from hwprofiles import onnxruntime_additivity, profile_onnxruntime

    lm = zoo.get_model("minilm")
    model = lm.build()
    batch = lm.example_inputs()
    big = _big_batch(lm)
    fp32_path = tmp / "minilm-fp32.onnx"
    fp32_path.write_bytes(float_onnx(model, batch).SerializeToString())
    with torch.inference_mode():
        fp32_big = model(**big)

    # weight-only: the engine computes in float, so the export must match it at 0.9999
    config = solve(lm, ["5bits"], bits=(4, 8), weight_only=True, measure=False,
                   latency=False).config
    log(f"MiniLM 5-bit mixed (weight-only): {config.cost.get('avg_bits'):.2f} bits, "
        f"{sorted(set(config.bits.values()))}")
    qmodel = lm.quantize(config)
    files = {}
    for label, level in (("float", 0), ("int8", 4)):
        start = time.perf_counter()
        report = export_onnx(model, qmodel, config, batch, tmp / f"minilm-{label}.onnx",
                             accuracy_level=level)
        seconds = time.perf_counter() - start
        files[label] = report.path
        with torch.inference_mode():
            fp32 = model(**batch)
        got = ort_outputs(report.path, batch)
        cos_engine, cos_fp32 = min(report.check["cosines"]), cosine(got, fp32)
        suffix = "" if label == "float" else "_int8"
        out[f"minilm_onnx_cos_vs_engine{suffix}"] = cos_engine
        out[f"minilm_onnx_cos_vs_fp32{suffix}"] = cos_fp32
        out[f"export_seconds_minilm{suffix}"] = seconds
        log(f"MiniLM ONNX ({label}, accuracy_level {level}): cos vs engine {cos_engine:.6f}, "
            f"vs FP32 {cos_fp32:.6f}; export + check {seconds:.0f} s, "
            f"{report.size_bytes / 1e6:.1f} MB")

    # the onnx target's own solves (MiniLM's default W8A8): 8-bit layers on
    # DynamicQuantizeMatMul, 4-bit on MatMulNBits, at several sizes
    w8a8: dict[str, tuple[Any, Path]] = {}
    for budget in W8A8_BUDGETS:
        solved = solve(lm, [budget], bits=(4, 8), weight_only=False, measure=False,
                       latency=False, target="onnx").config
        path = tmp / f"minilm-w8a8-{budget}.onnx"
        report = export_onnx(model, lm.quantize(solved), solved, batch, path)
        w8a8[budget] = (solved, path)
        got = ort_outputs(path, big)
        key = budget.removesuffix("bits").replace(".", "_")
        out[f"minilm_onnx_w8a8_{key}_cos_vs_fp32"] = cosine(got, fp32_big.last_hidden_state
                                                           if hasattr(fp32_big,
                                                                      "last_hidden_state")
                                                           else fp32_big)
        out[f"minilm_onnx_w8a8_{key}_worst_layer_cosine"] = report.check["worst_layer_cosine"]
        log(f"MiniLM ONNX W8A8 {budget}: {solved.cost.get('avg_bits'):.2f} bits, "
            f"{sum(b == 8 for b in solved.bits.values())}/{len(solved.bits)} layers at 8; "
            f"worst layer cos on ORT's inputs {report.check['worst_layer_cosine']:.7f}, "
            f"outputs vs FP32 {out[f'minilm_onnx_w8a8_{key}_cos_vs_fp32']:.5f}")
    paths = [fp32_path, files["float"], files["int8"]] + [p for _, p in w8a8.values()]
    times = interleaved_ms(paths, big, repeats)
    fp32_ms, float_ms, int8_ms = times[:3]
    out["minilm_onnx_fp32_ms"] = fp32_ms
    out["minilm_onnx_speedup_weight_only"] = fp32_ms / float_ms
    out["minilm_onnx_speedup_weight_only_int8"] = fp32_ms / int8_ms
    speedups = {b: fp32_ms / ms for b, ms in zip(w8a8, times[3:], strict=True)}
    out["minilm_onnx_w8a8_speedups"] = speedups
    out["minilm_onnx_speedup_vs_onnx_fp32"] = speedups[HEADLINE_BUDGET]
    out["minilm_onnx_speedup_config"] = (f"onnx-target solve at {HEADLINE_BUDGET} over "
                                         "{4, 8}, W8A8")
    log(f"MiniLM 32x128 in ONNX Runtime: FP32 {fp32_ms:.0f} ms; weight-only 5 bits "
        f"{fp32_ms / float_ms:.2f}x (int8 compute {fp32_ms / int8_ms:.2f}x); W8A8 "
        + ", ".join(f"{b} {x:.2f}x" for b, x in speedups.items()))

    layers = engine.discover_layers(model, big)
    headline = w8a8[HEADLINE_BUDGET][0]
    table = profile_onnxruntime(model, layers, big, bits=(4, 8), config=headline,
                                fp32_model=fp32_path, repeats=max(3, repeats // 2),
                                model_name="minilm", max_copies=4)
    rows = onnxruntime_additivity(table, layers, fp32_path,
                                  {b: w8a8[b] for b in w8a8}, big, repeats=repeats)
    errors = {r.config: r.rel_err for r in rows}
    worst = max(rows, key=lambda r: abs(r.rel_err))
    out["onnx_pred_vs_measured_rel_err"] = worst.rel_err
    out["onnx_pred_vs_measured_by_config"] = errors
    out["minilm_onnx_predicted_ms"] = {r.config: r.predicted_us / 1e3 for r in rows}
    out["minilm_onnx_measured_ms"] = {r.config: r.measured_us / 1e3 for r in rows}
    log("ONNX Runtime latency table: " + ", ".join(
        f"{r.config} predicted {r.predicted_us / 1e3:.0f} ms, measured "
        f"{r.measured_us / 1e3:.0f} ms ({r.rel_err:+.1%})" for r in rows))


def mobilenet(out: dict[str, Any], tmp: Path, repeats: int) -> None:
    from allocator.export._onnx import export_onnx, float_onnx
    from engine import BitConfig
    from hwprofiles import onnxruntime_session

    mb = zoo.get_model("mobilenetv2")
    model = mb.build()
    modules = engine.quantizable_modules(model)
    bits = {x.name: 4 if getattr(modules[x.name], "kernel_size", (3,))[0] == 1 else 8
            for x in mb.layers()}
    config = BitConfig.calibrated(bits, activation_bits=None, group_size=mb.default_group_size)
    qmodel = mb.quantize(config)
    batches = mb.evaluation_batches()
    report = export_onnx(model, qmodel, config, batches[0].inputs, tmp / "mobilenetv2.onnx")
    agree = total = 0
    for b in batches:
        got = ort_outputs(report.path, b.inputs)
        with torch.inference_mode():
            want = qmodel(b.inputs)
        agree += int((got.argmax(-1) == want.argmax(-1)).sum())
        total += got.shape[0]
    out["mobilenetv2_onnx_agreement_vs_engine"] = agree / total
    out["mobilenetv2_onnx_cos_vs_engine"] = min(report.check["cosines"])
    fp32_path = tmp / "mobilenetv2-fp32.onnx"
    fp32_path.write_bytes(float_onnx(model, batches[0].inputs).SerializeToString())
    sessions = [onnxruntime_session(p) for p in (fp32_path, report.path)]
    # ONNX Runtime keeps DequantizeLinear out of constant folding unless told to: then the
    # conv weights are dequantized once, at load, and its prepacked conv kernels apply
    sessions.append(onnxruntime_session(report.path, config={"session.disable_quant_qdq": "1"}))
    fp32_ms, q_ms, folded_ms = interleaved_ms(sessions, batches[0].inputs, repeats)
    out["mobilenetv2_onnx_speedup_vs_onnx_fp32"] = fp32_ms / q_ms
    out["mobilenetv2_onnx_speedup_vs_onnx_fp32_folded"] = fp32_ms / folded_ms
    avg = engine.mean_bits(mb.layers(), config.bits)
    log(f"MobileNetV2 {avg:.2f} bits: ONNX top-1 agreement with the engine "
        f"{agree / total:.4f}; batch 32: FP32 {fp32_ms:.0f} ms, quantized {q_ms:.0f} ms, "
        f"weights dequantized at load {folded_ms:.0f} ms")


def llm(tmp: Path) -> tuple[torch.nn.Module, Path, str]:
    """SmolLM2-135M when it is available, else a tiny seeded Llama saved to `tmp`."""
    if zoo.MODELS.entry("smollm2-135m").available():
        spec = zoo.get_model("smollm2-135m")
        return spec.build(), Path(spec.checkpoint_folder()), "smollm2-135m"
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    folder = tmp / "tiny-llama"
    config = LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, vocab_size=320)
    LlamaForCausalLM(config).save_pretrained(folder)
    return LlamaForCausalLM.from_pretrained(folder).eval(), folder, "tiny-llama"


def weight_formats(out: dict[str, Any], tmp: Path) -> None:
    from allocator.export import export_compressed_tensors, export_gguf, target_settings
    from engine import BitConfig

    model, folder, name = llm(tmp)
    names = [n for n, m in model.named_modules()
             if isinstance(m, torch.nn.Linear) and n != "lm_head"]
    mixed = {n: (4, 8)[i % 2] for i, n in enumerate(names)}
    ct = target_settings("compressed-tensors",
                         BitConfig(bits=mixed, activation_bits=None, group_size=32))
    report = export_compressed_tensors(model, engine.apply(model, ct), ct, tmp / "ct",
                                       source_dir=folder)
    out["ct_max_abs_weight_diff"] = report.check["max_abs_diff"]
    gguf_bits = {n: (4, 5, 8)[i % 3] for i, n in enumerate(names)}
    gg = target_settings("gguf", BitConfig(bits=gguf_bits, symmetric=True))
    report = export_gguf(model, engine.apply(model, gg), gg, tmp / "model.gguf",
                         tokenizer_dir=folder)
    out["gguf_max_abs_weight_diff"] = report.check["max_abs_diff"]
    out["llm_for_weight_formats"] = name
    log(f"{name}: compressed-tensors max |library - engine| {out['ct_max_abs_weight_diff']:.3g}, "
        f"GGUF {out['gguf_max_abs_weight_diff']:.3g}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7, help="timed runs per model")
    parser.add_argument("--skip-minilm", action="store_true")
    parser.add_argument("--skip-mobilenet", action="store_true")
    parser.add_argument("--skip-llm", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(2)
    engine.configure_runtime()
    import onnxruntime

    flags = sorted(engine.cpu_flags() & set(ORT_ISA))
    out: dict[str, Any] = {"cpu_model": engine.cpu_model(), "cpu_isa_flags": flags,
                           "threads": torch.get_num_threads(),
                           "onnxruntime_version": onnxruntime.__version__,
                           "torch_version": torch.__version__}
    log(f"CPU {out['cpu_model']}, ISA {flags}, {out['threads']} threads, "
        f"onnxruntime {onnxruntime.__version__}")
    with tempfile.TemporaryDirectory(prefix="allocator-export-") as folder:
        tmp = Path(folder)
        if not args.skip_minilm:
            minilm(out, tmp, args.repeats)
        if not args.skip_mobilenet:
            mobilenet(out, tmp, args.repeats)
        if not args.skip_llm:
            weight_formats(out, tmp)
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
