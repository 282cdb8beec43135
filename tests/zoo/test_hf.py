"""Hugging Face checkpoints (`hf:<folder>`): tiny random Llama, GPT-2, BERT and ViT models
made here with transformers, solved under budgets, applied, saved, reloaded; refusals."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("transformers")

import allocator  # noqa: E402
import engine  # noqa: E402
import zoo  # noqa: E402
from allocator.cli import main  # noqa: E402
from engine import InvalidSpecError  # noqa: E402
from zoo._hf_data import split_indices  # noqa: E402
from zoo.testing import tiny_checkpoint  # noqa: E402

ARCHS = {"llama": "causal-lm", "gpt2": "causal-lm", "bert": "feature-extraction",
         "bert-classifier": "sequence-classification", "vit": "image-classification"}


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("hf")
    return {arch: tiny_checkpoint(arch, root / arch) for arch in ARCHS}


def _spec(folder: Path, **kwargs) -> zoo.HfModelSpec:
    """A small data setting: the models are tiny, the test time is the data's."""
    kwargs = {"window_tokens": 64, "calibration_samples": 4, "evaluation_samples": 8} | kwargs
    return zoo.HfModelSpec(f"hf:{folder}", **kwargs)


# Llama and BERT in the default run; the other three in `make test-all` (same code paths).
SLOW_ARCHS = ("gpt2", "bert-classifier", "vit")


@pytest.mark.parametrize("arch", [pytest.param(a, marks=pytest.mark.slow) if a in SLOW_ARCHS
                                  else a for a in ARCHS])
def test_each_architecture_solves_applies_and_reloads(checkpoints, arch, tmp_path):
    spec = _spec(checkpoints[arch])
    assert spec.task == ARCHS[arch]
    layers = spec.layers()
    assert layers and all(x.kind == "linear" for x in layers)
    report = allocator.solve(spec, ["6bits"], bits=(4, 8), estimator="measured",
                             rounding="rtn", latency=False)
    cfg = report.config
    assert cfg.status != "infeasible"
    assert engine.mean_bits(layers, cfg.bits) <= 6.0 + 1e-9
    assert set(cfg.bits.values()) <= {4, 8}
    assert spec.primary_metric in report.measured["metrics"]
    if arch == "llama":  # same seed, same bytes
        again = allocator.solve(spec, ["6bits"], bits=(4, 8), estimator="measured",
                                rounding="rtn", latency=False)
        assert again.config.to_json() == cfg.to_json()
    # Apply, save, reload: the reloaded model gives the same outputs.
    qmodel = spec.quantize(cfg)
    engine.save_quantized(qmodel, cfg, tmp_path / "q")
    fresh = _spec(checkpoints[arch])
    reloaded, _ = engine.load_quantized(fresh.build(), tmp_path / "q")
    batch = spec.evaluation_batches()[0]
    with torch.inference_mode():
        a, b = spec.forward(qmodel, batch.inputs), fresh.forward(reloaded, batch.inputs)
    assert torch.allclose(a, b, atol=1e-5)


def test_causal_lm_metrics_and_skipped_head(checkpoints):
    spec = _spec(checkpoints["llama"])
    base = spec.baseline()
    assert base["kl"] == pytest.approx(0.0, abs=1e-5) and base["top1_agreement"] == 1.0
    assert 1.0 < base["ppl"] < 2 * 384  # a random model over a 384-token vocabulary
    assert spec.primary_metric == "kl" and not spec.higher_is_better
    assert spec.default_estimator == "fisher"
    rows = {r["name"]: r for r in spec.describe_layers()}
    assert not rows["lm_head"]["quantized"] and "tied" in rows["lm_head"]["reason"]
    assert "embedding" in rows["model.embed_tokens"]["reason"]
    q2 = spec.evaluate(spec.quantize(engine.BitConfig.uniform(spec.layers(), 2,
                                                              activation_bits=None)))
    q8 = spec.evaluate(spec.quantize(engine.BitConfig.uniform(spec.layers(), 8,
                                                              activation_bits=None)))
    assert 0 <= q8["kl"] < q2["kl"]
    head = _spec(checkpoints["llama"], quantize_head=True)
    assert "lm_head" in {x.name for x in head.layers()}


def test_causal_lm_metrics_by_slices_equal_whole_windows(checkpoints, monkeypatch):
    """KL, agreement and perplexity summed a slice of positions at a time (memory) equal the
    whole-window formulas, whatever the slice length (here 5: slices cross no boundary)."""
    import torch.nn.functional as F

    from zoo import _hf

    spec = _spec(checkpoints["llama"])
    qmodel = spec.quantize(engine.BitConfig.uniform(spec.layers(), 2, activation_bits=None))
    monkeypatch.setattr(_hf, "METRIC_POSITIONS", 5)
    got = spec.evaluate(qmodel)
    kl = agree = nll = 0.0
    positions = pairs = 0
    with torch.inference_mode():
        for b in spec.evaluation_batches():
            logq = F.log_softmax(spec.forward(qmodel, b.inputs).float(), dim=-1)
            logp = F.log_softmax(b.target.float(), dim=-1)
            kl += float((logp.exp() * (logp - logq)).sum())
            agree += float((logq.argmax(-1) == logp.argmax(-1)).sum())
            positions += logq.shape[0] * logq.shape[1]
            ids = b.inputs["input_ids"]
            nll -= float(logq[:, :-1].gather(-1, ids[:, 1:].unsqueeze(-1)).sum())
            pairs += ids.shape[0] * (ids.shape[1] - 1)
    assert got["kl"] == pytest.approx(kl / positions, rel=1e-4)
    assert got["top1_agreement"] == pytest.approx(agree / positions)
    assert got["ppl"] == pytest.approx(np.exp(nll / pairs), rel=1e-5)


def test_gpt2_conv1d_becomes_linear_with_the_same_outputs(checkpoints):
    from transformers import GPT2LMHeadModel

    spec = _spec(checkpoints["gpt2"])
    ref = GPT2LMHeadModel.from_pretrained(str(checkpoints["gpt2"])).eval()
    ids = torch.arange(40).reshape(2, 20)
    with torch.inference_mode():
        a = spec.build()(input_ids=ids).logits
        b = ref(input_ids=ids).logits
    assert torch.allclose(a, b, atol=1e-5)
    assert "transformer.h.0.attn.c_attn" in {x.name for x in spec.layers()}


def test_data_files_text_jsonl_and_token_ids(checkpoints, tmp_path):
    text = tmp_path / "calib.txt"
    text.write_text("\n\n".join(" ".join(f"Paragraph {i}, sentence {j}, is about tea."
                                         for j in range(8)) for i in range(40)))
    spec = _spec(checkpoints["llama"], data=text, calibration_samples=None,
                 evaluation_samples=None)
    assert not spec.notes  # no built-in text note with --data
    cal = [b.inputs["input_ids"] for b in spec.calibration_batches()]
    ev = [b.inputs["input_ids"] for b in spec.evaluation_batches()]
    cal_rows = {tuple(r.tolist()) for t in cal for r in t}
    ev_rows = {tuple(r.tolist()) for t in ev for r in t}
    assert cal_rows and ev_rows and not cal_rows & ev_rows  # disjoint
    jsonl = tmp_path / "calib.jsonl"
    jsonl.write_text("\n".join(json.dumps({"text": f"sentence number {i} is here."})
                               for i in range(50)))
    enc = _spec(checkpoints["bert"], data=jsonl)
    assert sum(b.size for b in enc.evaluation_batches()) > 0
    ids = tmp_path / "ids.npy"
    np.save(ids, np.random.default_rng(0).integers(0, 384, size=(6, 32)))
    rows = _spec(checkpoints["llama"], data=ids)
    assert sum(b.size for b in rows.calibration_batches() + rows.evaluation_batches()) == 6


def test_split_is_seeded_and_disjoint():
    a = split_indices(100, 10, 20, seed=3)
    assert a == split_indices(100, 10, 20, seed=3)
    assert a != split_indices(100, 10, 20, seed=4)
    assert not set(a[0]) & set(a[1]) and len(a[0]) == 10 and len(a[1]) == 20
    with pytest.raises(InvalidSpecError, match="at least 2"):
        split_indices(1, 1, 1, seed=0)


def test_bad_data_is_named(checkpoints, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "fine"}\n{"txt": 3}\n')
    with pytest.raises(InvalidSpecError, match="line 2"):
        _spec(checkpoints["llama"], data=bad).calibration_batches()
    floats = tmp_path / "x.npy"
    np.save(floats, np.zeros((4, 8), dtype=np.float32))
    with pytest.raises(InvalidSpecError, match="token ids"):
        _spec(checkpoints["llama"], data=floats).calibration_batches()
    with pytest.raises(InvalidSpecError, match="use a .txt"):
        _spec(checkpoints["llama"], data=tmp_path / "bad.csv" if (tmp_path / "bad.csv")
              .write_text("a") else None)


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def test_refusals_are_named(checkpoints, tmp_path):
    pickled = _copy(checkpoints["llama"], tmp_path / "pickled")
    (pickled / "model.safetensors").unlink()
    torch.save({"x": torch.zeros(1)}, pickled / "pytorch_model.bin")
    with pytest.raises(InvalidSpecError, match="pickle.*safetensors"):
        _spec(pickled).checkpoint()
    remote = _copy(checkpoints["llama"], tmp_path / "remote")
    config = json.loads((remote / "config.json").read_text())
    config["auto_map"] = {"AutoModelForCausalLM": "modeling.MyModel"}
    (remote / "config.json").write_text(json.dumps(config))
    with pytest.raises(InvalidSpecError, match="auto_map"):
        _spec(remote).checkpoint()
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(InvalidSpecError, match="no config.json"):
        _spec(empty).checkpoint()
    with pytest.raises(InvalidSpecError, match="local Hugging Face cache"):
        _spec(Path("nobody-here/no-such-model")).checkpoint()


def test_cli_solve_on_a_checkpoint_folder(checkpoints, capsys, tmp_path):
    ids = tmp_path / "ids.npy"
    np.save(ids, np.random.default_rng(0).integers(0, 384, size=(6, 32)))
    code = main(["solve", "--model", f"hf:{checkpoints['gpt2']}", "--budget", "6bits",
                 "--data", str(ids),
                 "--bits", "4,8", "--estimator", "measured", "--rounding", "rtn", "--json"])
    out = capsys.readouterr()
    assert code == 0, out.err
    doc = json.loads(out.out)
    assert set(doc["config"]["bits"].values()) <= {4, 8}
    assert "built-in text" not in out.err
    code = main(["solve", "--model", f"hf:{checkpoints['gpt2']}", "--budget", "6bits",
                 "--weights", "w.safetensors"])
    assert code == 2


def test_device_is_checked(checkpoints):
    assert _spec(checkpoints["llama"], device="cpu").device == "cpu"
    with pytest.raises(InvalidSpecError, match="auto, cpu or cuda"):
        _spec(checkpoints["llama"], device="tpu")
    with pytest.raises(InvalidSpecError, match="applies to Hugging Face models"):
        zoo.get_model("digits-mlp", device="cuda")
    if not torch.cuda.is_available():
        with pytest.raises(InvalidSpecError, match="no CUDA device"):
            _spec(checkpoints["llama"], device="cuda")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_causal_lm_on_cuda_matches_cpu(checkpoints):
    cpu, gpu = _spec(checkpoints["llama"], device="cpu"), _spec(checkpoints["llama"],
                                                                   device="cuda")
    cfg = engine.BitConfig.uniform(cpu.layers(), 4, activation_bits=None, rounding="rtn",
                                   bias_correction=False)
    a, b = cpu.evaluate(cpu.quantize(cfg)), gpu.evaluate(gpu.quantize(cfg))
    assert b["kl"] == pytest.approx(a["kl"], rel=0.05, abs=1e-6)
    report = allocator.solve(gpu, ["6bits"], bits=(4, 8), latency=False)
    assert report.config.status != "infeasible"


def test_fisher_lets_the_calibration_references_go(checkpoints, monkeypatch):
    """A causal LM's Fisher surrogate samples from the FP32 output itself, so the estimator
    runs without the references and the spec lets them go: same table either way, and the
    calibration inputs (what reports digest) are the same without the references."""
    import sensitivity
    from sensitivity import hash_tensors, make_config
    from sensitivity._estimate import cache_key
    from zoo import _base

    options = {"rounding": "rtn", "samples": 2}
    kept = _spec(checkpoints["llama"])
    run = {"bits": (2, 4), "seed": 3, "options": options, "use_cache": False}
    a = sensitivity.estimate(kept, "fisher", **run)
    assert kept._calibration is not None  # tiny references: below the release threshold
    monkeypatch.setattr(_base, "RELEASE_REFERENCE_BYTES", 0)
    freed = _spec(checkpoints["llama"])
    assert hash_tensors(freed.calibration_inputs()) == hash_tensors(kept.calibration_inputs())
    assert freed._calibration is None  # the inputs came without running the model
    config = make_config("fisher", options)
    key = cache_key(kept, "fisher", config, 3, (2, 4))
    assert cache_key(freed, "fisher", config, 3, (2, 4)) == key  # as a solve does first
    b = sensitivity.estimate(freed, "fisher", **run)
    assert freed._calibration is None
    assert a.omega() == b.omega()
    # The key again (a warm solve): the same, without remaking the references let go; a
    # model edited in place gets another key.
    assert cache_key(freed, "fisher", config, 3, (2, 4)) == key
    assert freed._calibration is None
    with torch.no_grad():
        freed.build().lm_head.weight.mul_(1.01)
    assert cache_key(freed, "fisher", config, 3, (2, 4)) != key
