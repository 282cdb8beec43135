from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from allocator import __version__
from allocator.cli import main


def test_version(capsys):
    assert main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"allocator {__version__}"


def test_help_lists_commands(capsys):
    assert main(["--help"]) == 0
    assert "demo" in capsys.readouterr().out


def test_unknown_command_is_usage_error(capsys):
    assert main(["frobnicate"]) == 2
    err = capsys.readouterr().err
    assert "frobnicate" in err and len(err.strip().splitlines()) == 1


SCRIPT = Path(sys.executable).parent / "allocator"


@pytest.mark.skipif(not SCRIPT.exists(), reason="console script not installed")
def test_installed_entry_point():
    proc = subprocess.run([str(SCRIPT), "--version"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0
    assert proc.stdout.startswith("allocator ")


def test_evaluate_needs_bits_or_config(capsys):
    assert main(["evaluate", "--model", "digits-mlp"]) == 2
    assert "--bits" in capsys.readouterr().err


def test_evaluate_bad_bits_and_unknown_model(capsys):
    assert main(["evaluate", "--model", "digits-mlp", "--bits", "9"]) == 2
    assert "`--bits`" in capsys.readouterr().err
    assert main(["evaluate", "--model", "resnet", "--bits", "4"]) == 2
    assert "unknown model 'resnet'" in capsys.readouterr().err


def test_evaluate_json(capsys):
    import json

    pytest.importorskip("sklearn")
    assert main(["evaluate", "--model", "digits-mlp", "--bits", "8", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["model"] == "digits-mlp" and out["avg_bits"] == 8.0
    assert out["metrics"]["accuracy"] >= out["fp32_metrics"]["accuracy"] - 0.01
    assert out["config"]["format"] == "allocator.bitconfig/1"


@pytest.mark.slow  # over 10 s; `make test-all` runs it
def test_models_json(capsys):
    import json

    assert main(["models", "--json"]) == 0
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)["models"]}
    assert {"digits-mlp", "digits-cnn", "minilm", "mobilenetv2"} <= set(rows)
    if rows["minilm"]["available"]:
        assert rows["minilm"]["quantizable_layers"] == 36


def test_parse_bits_keeps_order_drops_duplicates_and_names_the_flag():
    from allocator.cli._options import parse_bits
    from engine import DEFAULT_BITS, InvalidSpecError

    assert parse_bits("8,4,4, 2") == (8, 4, 2)
    assert parse_bits(None) == DEFAULT_BITS
    for bad in ("", "4,x", "4,9", "1"):
        with pytest.raises(InvalidSpecError, match="--bits"):
            parse_bits(bad)


def test_module_entry_point():
    proc = subprocess.run([sys.executable, "-m", "allocator.cli", "--version"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and proc.stdout.strip() == f"allocator {__version__}"


@pytest.fixture
def problem_file(tmp_path):
    from allocator.testing_problems import random_problem

    path = tmp_path / "p.json"
    random_problem(8, seed=0).save(path)
    return path


def test_solve_problem_json_is_the_report_and_out_the_bitconfig(problem_file, tmp_path, capsys):
    import json

    out = tmp_path / "cfg.json"
    assert main(["solve", "--problem", str(problem_file), "--budget", "4bits", "--bits", "2,4,8",
                 "--json", "--out", str(out)]) == 0
    report = json.loads(capsys.readouterr().out)
    assert set(report) == {"config", "measured", "uniform", "timings_s"}
    assert report["measured"] == {} and report["uniform"]["bits"] in (2, 4)
    config = report["config"]
    assert config["format"] == "allocator.bitconfig/1" and config["status"] == "optimal"
    assert set(config["bits"].values()) <= {2, 4, 8} and config["cost"]["avg_bits"] <= 4.0
    assert json.loads(out.read_text()) == config


def test_solve_infeasible_exits_3_with_the_least_budget(problem_file, capsys):
    assert main(["solve", "--problem", str(problem_file), "--budget", "1bits"]) == 3
    err = capsys.readouterr().err
    assert "infeasible" in err and "at least 2bits" in err


def test_solve_and_pareto_need_one_source(problem_file, capsys):
    for command in (["solve", "--budget", "4bits"], ["pareto"]):
        assert main(command) == 2
        assert "exactly one of `--problem` and `--model`" in capsys.readouterr().err
        assert main([*command, "--problem", str(problem_file), "--model", "digits-cnn"]) == 2


def test_pareto_problem_json(problem_file, capsys):
    import json

    assert main(["pareto", "--problem", str(problem_file), "--points", "4", "--json"]) == 0
    front = json.loads(capsys.readouterr().out)
    assert front["format"] == "allocator.pareto/1" and front["cost_key"] == "avg_bits"
    assert all("measured" not in p for p in front["points"])
    assert main(["pareto", "--problem", str(problem_file), "--points", "4"]) == 0
    assert "Pareto front along bits" in capsys.readouterr().out


def test_solvers_json(capsys):
    import json

    assert main(["solvers", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert {"ilp", "greedy", "uniform"} <= {r["name"] for r in data["solvers"]}
    assert isinstance(data["ilp_backends"], list)


def test_demo_measures_each_config_against_fp32():
    from allocator.cli._demo import run_demo

    rows = {r.config: r for r in run_demo(rows=(1,), repeats=1)}
    assert list(rows) == ["fp32", "int8", "int4 g128", "mixed up4/down8", "int3 g128 (dequant)"]
    assert rows["fp32"].speedup == 1.0 and rows["fp32"].kernels == "float"
    assert rows["fp32"].size_bytes > rows["int8"].size_bytes > rows["int4 g128"].size_bytes
    assert rows["int8"].sqnr_db > rows["int4 g128"].sqnr_db > rows["int3 g128 (dequant)"].sqnr_db


def test_timings_lists_every_stage_of_a_model_solve(capsys):
    args = ["solve", "--model", "digits-mlp", "--budget", "6bits", "--bits", "4,8",
            "--estimator", "fisher", "--rounding", "rtn", "--timings"]
    assert main([*args, "--json"]) == 0
    captured = capsys.readouterr()
    doc = json.loads(captured.out)
    stages = ("load_s", "sensitivity_s", "latency_s", "solve_s", "measure_s")
    assert set(stages) <= set(doc["timings_s"])
    table = captured.err
    assert "timings" in table and "total" in table
    for stage in stages:
        assert stage.removesuffix("_s") in table
    assert f"{sum(doc['timings_s'].values()):.2f}" in table
