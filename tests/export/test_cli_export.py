"""`allocator export`: a config solved for a format, applied on the engine, written and
checked per format; bad input is exit 2 with nothing left at `--out`."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from allocator._pipeline import quantization_settings
from allocator.cli import main
from allocator.export import target_settings
from engine import BitConfig
from tests.export import tiny_llama

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


@pytest.fixture(autouse=True)
def _no_project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # no allocator.toml around


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("llama")
    tiny_llama(folder)
    return folder


def _config(tmp_path: Path, target: str, bits: dict[str, int], *, group_size: int | None = 32,
            extra: dict | None = None, name: str = "cfg.json") -> Path:
    settings = target_settings(target, quantization_settings("rtn", group_size, True))
    cfg = dataclasses.replace(settings, bits=bits, extra=extra or {"target": target})
    path = tmp_path / name
    path.write_text(json.dumps(cfg.to_dict()))
    return path


def _llama_bits(widths: tuple[int, ...]) -> dict[str, int]:
    names = [f"model.layers.{b}.{p}" for b in (0, 1) for p in (
        "self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
        "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")]
    return {n: widths[i % len(widths)] for i, n in enumerate(names)}


def test_onnx_export_of_a_digits_mlp_runs_in_onnxruntime(tmp_path: Path, capsys) -> None:
    ort = pytest.importorskip("onnxruntime")
    cfg = _config(tmp_path, "onnx", {"fc1": 8, "fc2": 4, "fc3": 8})
    out = tmp_path / "m.onnx"
    code = main(["export", "--model", "digits-mlp", "--config", str(cfg), "--format", "onnx",
                 "--out", str(out), "--json"])
    assert code == 0, capsys.readouterr().err
    report = json.loads(capsys.readouterr().out)
    assert report["format"] == "onnx" and report["check"]["passed"]
    assert set(report["layers"]) == {"fc1", "fc2", "fc3"}
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    assert session.get_inputs()


def test_gguf_and_compressed_tensors_exports_of_a_tiny_llama(llama_dir: Path, tmp_path: Path,
                                                            capsys) -> None:
    gguf = pytest.importorskip("gguf")
    cfg = _config(tmp_path, "gguf", _llama_bits((4, 5, 8)))
    out = tmp_path / "m.gguf"
    assert main(["export", "--model", f"hf:{llama_dir}", "--config", str(cfg), "--format",
                 "gguf", "--out", str(out)]) == 0, capsys.readouterr().err
    line = capsys.readouterr().out.strip()
    assert line.startswith("exported 14 quantized layer(s) as gguf") and "passed" in line
    types = {t.name: t.tensor_type.name for t in gguf.GGUFReader(out).tensors}
    assert types["blk.0.attn_q.weight"] == "Q4_1" and types["blk.0.attn_v.weight"] == "Q8_0"

    ct = _config(tmp_path, "compressed-tensors", _llama_bits((4, 8)), name="ct.json")
    folder = tmp_path / "ct"
    assert main(["export", "--model", f"hf:{llama_dir}", "--config", str(ct), "--format",
                 "compressed-tensors", "--out", str(folder), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["check"]["passed"]
    qc = json.loads((folder / "config.json").read_text())["quantization_config"]
    assert qc["format"] in ("pack-quantized", "mixed-precision") or qc["config_groups"]
    assert (folder / "tokenizer.json").is_file()  # copied from the hf: folder


@pytest.mark.parametrize("case", ["format", "unknown-layer", "other-target", "settings",
                                  "width"])
def test_bad_input_is_exit_2_and_nothing_is_written(tmp_path: Path, capsys, case: str) -> None:
    fmt = "onnx"
    cfg = _config(tmp_path, "onnx", {"fc1": 8, "fc2": 4})
    expected = {"format": "`--format`", "unknown-layer": "'nope'",
                "other-target": "--target onnx", "settings": "--target onnx",
                "width": "'fc2' at 5 bits"}[case]
    if case == "format":
        fmt = "tflite"
    elif case == "unknown-layer":
        cfg = _config(tmp_path, "onnx", {"fc1": 8, "nope": 4})
    elif case == "other-target":
        cfg = _config(tmp_path, "gguf", {"fc1": 8, "fc2": 4})
    elif case == "settings":  # solved for the engine with 8-bit groups ONNX cannot hold
        data = json.loads(cfg.read_text()) | {"group_size_8bit": 32, "extra": {}}
        cfg.write_text(json.dumps(data))
    else:
        cfg = _config(tmp_path, "onnx", {"fc1": 8, "fc2": 5})
    out = tmp_path / "out" / "m.onnx"
    code = main(["export", "--model", "digits-mlp", "--config", str(cfg), "--format", fmt,
                 "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 2, err
    assert expected in err and err.count("\n") == 1
    assert not out.exists()
    assert not out.parent.exists() or not any(out.parent.iterdir())


def test_engine_config_of_the_onnx_schemes_is_accepted(tmp_path: Path) -> None:
    """An engine solve's weight schemes are ONNX's (per-channel 8-bit): no re-solve. The
    onnx target's own solves round W8A8 inputs on one grid per call, but ONNX holds the
    engine's per-row grid as well."""
    settings = quantization_settings("rtn", 32, True)
    assert target_settings("onnx", settings) == dataclasses.replace(settings,
                                                                     activation_grid="tensor")
    from allocator.cli._export import check_solved_for

    check_solved_for("onnx", dataclasses.replace(settings, bits={"fc1": 8}))
    with pytest.raises(Exception, match="--target gguf"):
        check_solved_for("gguf", BitConfig(bits={"fc1": 8}))
