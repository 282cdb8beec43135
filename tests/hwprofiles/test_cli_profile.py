from __future__ import annotations

import json

import pytest
import torch

import allocator
import zoo
from allocator.cli import main
from allocator.cli._profile import profile_command, profiles_command
from engine import InvalidSpecError
from hwprofiles import LatencyTable, list_profiles


def need(name: str):
    if not zoo.MODELS.entry(name).available():
        pytest.skip(f"model {name} not installed (models extra)")
    return zoo.get_model(name)


def test_batch_inputs_resizes_tensor_batches():
    spec = need("digits-mlp")
    assert allocator.batch_inputs(spec, 8).shape[0] == 8
    big = allocator.batch_inputs(spec, 1000)
    assert big.shape[0] == 1000 and torch.equal(big[:8], allocator.batch_inputs(spec, 8))
    with pytest.raises(InvalidSpecError, match="`batch`"):
        allocator.batch_inputs(spec, 0)


def test_profile_command_json_and_listing(tmp_path, capsys, _profiles_dir):
    need("digits-mlp")
    out = tmp_path / "mlp.json"
    profile_command(model="digits-mlp", batch=8, bits="4,8", out=str(out), repeats=2,
                    as_json=True)
    doc = json.loads(capsys.readouterr().out)  # exactly one JSON document
    assert doc["batch"] == 8 and doc["model"] == "digits-mlp"
    assert len(doc["entries"]) == 3
    assert all(set(e["times"]) == {"fp32", "4", "8"} for e in doc["entries"])
    assert LatencyTable.load(out).to_dict() == LatencyTable.load(doc["path"]).to_dict()
    assert doc["name"].startswith("digits-mlp-b8-")
    assert [p.name for p in list_profiles()] == [doc["name"]]
    assert not list(_profiles_dir.glob(".*.partial"))

    profiles_command(as_json=True)
    listed = json.loads(capsys.readouterr().out)
    assert [p["name"] for p in listed["profiles"]] == [doc["name"]]
    profiles_command(as_json=False)
    assert "digits-mlp" in capsys.readouterr().out


def test_profile_command_rejects_bad_bits():
    with pytest.raises(InvalidSpecError, match="--bits"):
        profile_command(model="digits-mlp", batch=None, bits="3,12", out=None, repeats=2,
                        as_json=True)


@pytest.mark.parametrize("flag", ["--batch", "--repeats"])
def test_profile_rejects_counts_below_one_before_measuring(flag, capsys):
    assert main(["profile", "--model", "digits-mlp", flag, "0"]) == 2
    err = capsys.readouterr().err
    assert flag in err and len(err.strip().splitlines()) == 1
