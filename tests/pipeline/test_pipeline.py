"""The end-to-end job on digits-cnn: cache reuse, determinism, errors, CLI exit codes."""

from __future__ import annotations

import json

import pytest

from allocator import solve
from allocator.cli import main
from engine import BitConfig, InvalidSpecError, UnknownComponentError
from tests.zoo.conftest import need

OPTS = {"max_probes": 32, "min_probes": 8}


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    """One sensitivity cache and latency profile store for the module, both measured here
    (the latency test asserts what this run measures); the trained models are shared."""
    import engine

    path = tmp_path_factory.mktemp("data")
    (engine.data_dir() / "models").mkdir(parents=True, exist_ok=True)
    (path / "models").symlink_to(engine.data_dir() / "models", target_is_directory=True)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("ALLOCATOR_DATA_DIR", str(path))
        yield path


@pytest.fixture(scope="module")
def first(data_dir):
    spec = need("digits-cnn")
    return solve(spec, ["4bits"], estimator_options=OPTS, latency=False)


def test_pipeline_meets_budget_and_measures(first):
    cfg = first.config
    assert cfg.status == "optimal" and cfg.cost["avg_bits"] <= 4.0 + 1e-9
    assert cfg.rounding == "gptq" and cfg.bias_correction
    measured = cfg.extra["measured"]
    assert measured["metrics"]["accuracy"] >= measured["fp32_metrics"]["accuracy"] - 0.02
    assert measured["size_bytes"] < measured["fp32_size_bytes"]
    assert cfg.extra["uniform_baseline"]["bits"] == 4
    repro = cfg.extra["reproducibility"]
    assert repro["seed"] == 0 and len(repro["model_sha256"]) == 16


def test_same_seed_same_bytes_and_cache_reuse(first, data_dir):
    assert len(list((data_dir / "sensitivity").glob("*.json"))) == 1
    again = solve(need("digits-cnn"), ["4bits"], estimator_options=OPTS, latency=False)
    assert again.timings_s["sensitivity_s"] < first.timings_s["sensitivity_s"]
    assert first.config.to_json() == again.config.to_json()


def test_corrupt_cache_is_rebuilt_with_warning(first, data_dir):
    path = next((data_dir / "sensitivity").glob("*.json"))
    path.write_text("not json")
    with pytest.warns(UserWarning, match="corrupt"):
        again = solve(need("digits-cnn"), ["4bits"], estimator_options=OPTS, measure=False)
    assert again.config.bits == first.config.bits
    json.loads(path.read_text())  # rewritten whole


def test_infeasible_budget_reports_minimum(first):
    result = solve(need("digits-cnn"), ["1.5bits"], estimator_options=OPTS)
    assert result.config.status == "infeasible"
    assert result.config.extra["infeasible_budgets"] == {"1.5bits": "2bits"}


def test_errors():
    with pytest.raises(UnknownComponentError, match="unknown model"):
        solve("resnet-9000", ["4bits"])
    with pytest.raises(InvalidSpecError, match="budget"):
        solve("digits-cnn", ["4 bytes please"])


def test_cli_exit_codes_and_json(first, capsys, tmp_path):
    out = tmp_path / "cfg.json"
    code = main(["solve", "--model", "digits-cnn", "--budget", "6bits", "--bits", "4,8",
                 "--rounding", "rtn", "--json", "--out", str(out)])
    assert code == 0
    report = json.loads(capsys.readouterr().out)
    assert report["config"]["format"] == "allocator.bitconfig/1"
    assert set(report["config"]["bits"].values()) <= {4, 8}
    assert BitConfig.from_json(out.read_text()).bits == report["config"]["bits"]
    assert main(["solve", "--model", "digits-cnn", "--budget", "1bits", "--rounding", "rtn"]) == 3
    assert "at least 2bits" in capsys.readouterr().err
    assert main(["solve", "--model", "digits-cnn", "--budget", "4bats"]) == 2
    assert main(["solve", "--model", "nope", "--budget", "4bits"]) == 2
    qdir = tmp_path / "q"
    assert main(["apply", "--model", "digits-cnn", "--config", str(out), "--out", str(qdir)]) == 0
    assert (qdir / "model.safetensors").is_file()


def test_latency_budget_uses_this_machines_profile(first, data_dir):
    spec = need("digits-cnn")
    plain = solve(spec, ["8bits"], estimator_options=OPTS, measure=False, bits=(2, 4, 8))
    layers = plain.problem.layers
    lo = sum(min(x.latency_us.values()) for x in layers) + plain.problem.latency_offset_us
    hi = sum(max(x.latency_us.values()) for x in layers) + plain.problem.latency_offset_us
    assert plain.problem.latency_offset_us > 0 and hi > lo
    assert list((data_dir / "hwprofiles").glob("digits-cnn-*.json"))  # stored, then reused
    assert plain.timings_s["latency_s"] < 60
    budget_us = lo + 0.3 * (hi - lo)
    result = solve(spec, ["8bits", f"{budget_us:.3f}us"], estimator_options=OPTS, measure=False,
                   bits=(2, 4, 8))
    cfg = result.config
    assert cfg.status == "optimal"
    assert cfg.cost["latency_us"] <= budget_us + 1e-6
    assert cfg.extra["reproducibility"]["latency_profile"].startswith("digits-cnn-")
    impossible = solve(spec, [f"{0.5 * lo:.3f}us"], estimator_options=OPTS, measure=False,
                       bits=(2, 4, 8))
    assert impossible.config.status == "infeasible"
    assert list(impossible.config.extra["infeasible_budgets"]) == [f"{0.5 * lo:.3f}us"]


def test_ddpg_with_measured_reward_is_seeded(first):
    spec = need("digits-cnn")
    kwargs = {"solver": "ddpg", "solver_options": {"episodes": 40, "reward": "measured"},
              "bits": (2, 4, 8), "rounding": "rtn", "measure": False, "latency": False,
              "estimator_options": OPTS}
    runs = [solve(spec, ["3bits"], **kwargs).config for _ in range(2)]
    assert runs[0].to_json() == runs[1].to_json()
    assert runs[0].cost["avg_bits"] <= 3.0 + 1e-9
    details = runs[0].extra["solver_details"]
    assert details["reward"] == "measured" and details["measured_configs"] > 1


def test_cli_rejects_measured_reward_outside_ddpg(capsys):
    assert main(["solve", "--model", "digits-cnn", "--budget", "4bits",
                 "--reward", "measured"]) == 2
    assert "--reward measured" in capsys.readouterr().err


def test_cli_pareto_along_latency_measures_points_and_plots(first, capsys, tmp_path):
    out = tmp_path / "front.json"
    code = main(["pareto", "--model", "digits-cnn", "--axis", "latency", "--points", "4",
                 "--measure", "2", "--bits", "2,4,8", "--rounding", "rtn", "--json",
                 "--out", str(out)])
    assert code == 0
    data = json.loads(capsys.readouterr().out)
    assert data == json.loads(out.read_text())
    assert data["format"] == "allocator.pareto/1" and data["cost_key"] == "latency_us"
    lat = [p["cost"]["latency_us"] for p in data["points"]]
    obj = [p["objective"] for p in data["points"]]
    assert lat == sorted(lat) and obj == sorted(obj, reverse=True)  # non-dominated
    assert "accuracy" in data["points"][0]["measured"]
    assert all("measured" not in p for p in data["points"][2:])
    assert (tmp_path / "front.png").stat().st_size > 1000
