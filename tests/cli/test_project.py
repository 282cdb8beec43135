"""The project file (`allocator.toml` / `[tool.allocator]`): found in the working directory
only, flags win over it, `config show` names each source, bad files are one line, and the
bare `allocator solve --budget ...` runs the configured model."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path
from typing import Any

import pytest

import allocator
from allocator._project import (
    SOURCE_DEFAULT,
    SOURCE_PROJECT,
    SOURCE_PYPROJECT,
    find_project_file,
    load_project,
)
from allocator.cli import main
from engine import AllocatorError, InvalidSpecError
from tests.test_cli_robustness import _err_line


def _write(folder: Path, name: str, text: str) -> Path:
    path = folder / name
    path.write_text(textwrap.dedent(text).lstrip())
    return path


@pytest.fixture(autouse=True)
def _wide_tables(monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")  # rich wraps cells at its default 80 columns


@pytest.fixture
def project(tmp_path, monkeypatch):
    """A project folder as the working directory; returns a writer of its allocator.toml."""
    monkeypatch.chdir(tmp_path)

    def write(text: str) -> Path:
        return _write(tmp_path, "allocator.toml", text)

    return write


# -- reading the file -------------------------------------------------------------------------


def test_allocator_toml_in_cwd_with_paths_resolved_against_its_folder(project, tmp_path):
    (tmp_path / "ckpt").mkdir()
    path = project("""
        model = "hf:./ckpt"
        data = "inputs/x.npy"
        weights = "/abs/w.safetensors"
        bits = "8, 4,4"
        budget = "4.5bits"
        seed = 7
        time_limit_s = 5
        weight_only = true
    """)
    assert find_project_file(tmp_path) == path
    loaded = load_project()
    s = loaded.settings
    assert loaded.path == path and loaded.source == SOURCE_PROJECT
    assert s.model == f"hf:{tmp_path / 'ckpt'}"
    assert s.data == str(tmp_path / "inputs" / "x.npy") and s.weights == "/abs/w.safetensors"
    assert s.bits == [8, 4] and s.budget == ["4.5bits"] and s.time_limit_s == 5.0
    assert loaded.sources["seed"] == SOURCE_PROJECT
    assert loaded.sources["solver"] == SOURCE_DEFAULT
    assert loaded.value("solver") == "ilp" and loaded.value("seed") == 7
    assert loaded.pick("seed", 3) == 3 and loaded.pick("seed", None) == 7


def test_hub_ids_and_registered_names_are_not_paths(project, tmp_path):
    project('model = "hf:HuggingFaceTB/SmolLM2-135M"\n')
    assert load_project().settings.model == "hf:HuggingFaceTB/SmolLM2-135M"
    project('model = "digits-mlp"\n')
    assert load_project().settings.model == "digits-mlp"


def test_pyproject_tool_allocator_is_read_and_allocator_toml_wins(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    pyproject = _write(tmp_path, "pyproject.toml", """
        [project]
        name = "mine"

        [tool.allocator]
        model = "digits-cnn"
        bits = [2, 4]
    """)
    assert find_project_file(tmp_path) == pyproject
    loaded = load_project()
    assert loaded.source == SOURCE_PYPROJECT == "pyproject.toml [tool.allocator]"
    assert loaded.settings.model == "digits-cnn" and loaded.settings.bits == [2, 4]
    assert loaded.sources["model"] == SOURCE_PYPROJECT
    _write(tmp_path, "allocator.toml", 'model = "digits-mlp"\n')
    loaded = load_project()
    assert loaded.source == SOURCE_PROJECT and loaded.settings.model == "digits-mlp"
    assert not loaded.is_set("bits")  # one file is read, not a merge


def test_only_the_working_directory_is_searched(tmp_path, monkeypatch):
    _write(tmp_path, "allocator.toml", 'model = "digits-mlp"\n')
    (tmp_path / "sub").mkdir()
    monkeypatch.chdir(tmp_path / "sub")
    assert find_project_file(Path.cwd()) is None  # the parent's allocator.toml is not read
    _write(tmp_path / "sub", "pyproject.toml", '[project]\nname = "no table here"\n')
    assert find_project_file(Path.cwd()) is None
    loaded = load_project()
    assert loaded.path is None and set(loaded.sources.values()) == {SOURCE_DEFAULT}
    assert loaded.value("model") is None and loaded.value("bits") == (2, 3, 4, 5, 6, 8)


@pytest.mark.parametrize(("text", "expected"), [
    ("seed = 1\nmodel =\n", "invalid TOML"),
    ("seed = 1\nbits = [4,\n", "invalid TOML"),
    ('seed = 1\nsovler = "ilp"\n', "line 2: unknown key `sovler`"),
    ('seed = "3"\n', "line 1: `seed`"),
    ("seed = -1\n", "`seed` must be between 0"),
    ("bits = [4, 9]\n", "`bits` must be between 2 and 8, got 9"),
    ('budget = "4bats"\n', "`budget` '4bats'"),
    ("weight_only = 1\n", "`weight_only`"),
    ("time_limit_s = 0\n", "`time_limit_s` must be a finite number"),
    ("[solver]\nname = 1\n", "line 1: `solver`"),
])
def test_bad_files_and_keys_are_named(text, expected, project, tmp_path):
    project(text)
    with pytest.raises(InvalidSpecError) as err:
        load_project()
    message = str(err.value)
    assert str(tmp_path / "allocator.toml") in message and expected in message
    if "invalid TOML" in expected:
        assert "line 2" in message


def test_unknown_key_in_pyproject_names_the_table_and_line(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    _write(tmp_path, "pyproject.toml", """
        [project]
        name = "x"

        [tool.allocator]
        model = "digits-mlp"
        estimater = "measured"
    """)
    assert main(["config", "show"]) == 2
    line = _err_line(capsys)
    assert "pyproject.toml [tool.allocator] line 6: unknown key `estimater`" in line


def test_bad_file_is_one_line_exit_2_on_every_command(project, capsys):
    project("budget = [4.5bits]\n")
    for command in (["solve", "--budget", "4bits", "--model", "digits-mlp"],
                    ["evaluate", "--bits", "8"], ["config", "show"], ["pareto"],
                    ["sensitivity"], ["profile"]):
        assert main(command) == 2, command
        line = _err_line(capsys)
        assert "allocator.toml: invalid TOML" in line and "line 1" in line


# -- config show ------------------------------------------------------------------------------


def test_config_show_lists_every_value_and_its_source(project, tmp_path, capsys):
    project('model = "digits-mlp"\nbits = [4, 8]\nbudget = ["4.5bits", "1MB"]\n')
    assert main(["config", "show", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["file"] == str(tmp_path / "allocator.toml") and doc["source"] == "allocator.toml"
    rows = doc["settings"]
    assert rows["model"] == {"value": "digits-mlp", "source": "allocator.toml"}
    assert rows["bits"] == {"value": [4, 8], "source": "allocator.toml"}
    assert rows["budget"]["value"] == ["4.5bits", "1MB"]
    assert rows["solver"] == {"value": "ilp", "source": "default"}
    assert rows["seed"] == {"value": 0, "source": "default"}
    assert set(rows) >= {"data", "weights", "estimator", "target", "rounding", "group_size",
                         "weight_only", "time_limit_s"}
    assert main(["config", "show"]) == 0
    out = capsys.readouterr().out
    assert "digits-mlp" in out and "allocator.toml" in out and "default" in out


def test_config_show_without_a_file_and_from_pyproject(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["config", "show", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["file"] is None and {r["source"] for r in doc["settings"].values()} == {"default"}
    _write(tmp_path, "pyproject.toml", '[tool.allocator]\nsolver = "greedy"\n')
    assert main(["config", "show"]) == 0
    out = capsys.readouterr().out
    assert "pyproject.toml [tool.allocator]" in out and "greedy" in out


# -- the commands take the project's settings; flags win --------------------------------------


class _Spec:
    name = "fake"

    def layers(self) -> list:
        return []


@pytest.fixture
def calls(monkeypatch):
    """Records what the commands hand to the zoo and the pipeline, without running them."""
    from allocator.cli import _commands, _profile
    from allocator.testing_problems import random_problem

    seen: dict[str, Any] = {}

    def model_spec(model, data=None, weights=None, device="auto"):
        seen["model_spec"] = (model, data, weights)
        seen["device"] = device
        return _Spec()

    def solve(spec, budgets, **kwargs):
        seen["solve"] = {"budgets": list(budgets), **kwargs}
        return allocator.solve_problem(random_problem(4, seed=0), budgets)

    def stop(name):
        def record(*args, **kwargs):
            seen[name] = {"args": args, **kwargs}
            raise AllocatorError(f"stopped in {name}")
        return record

    import sensitivity

    monkeypatch.setattr(_commands, "model_spec", model_spec)
    monkeypatch.setattr(_profile, "model_spec", model_spec)
    monkeypatch.setattr(allocator, "solve", solve)
    monkeypatch.setattr(allocator, "pareto", stop("pareto"))
    monkeypatch.setattr(allocator, "profile_model", stop("profile"))
    monkeypatch.setattr(sensitivity, "estimate", stop("sensitivity"))
    return seen


FULL = """
    model = "digits-mlp"
    bits = [4, 8]
    estimator = "measured"
    solver = "greedy"
    rounding = "rtn"
    group_size = 0
    weight_only = true
    seed = 3
    budget = "5bits"
    time_limit_s = 7
"""


def test_bare_solve_uses_every_project_setting(project, calls, capsys):
    project(FULL)
    assert main(["solve", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["config"]["status"] == "optimal"
    assert calls["model_spec"] == ("digits-mlp", None, None)
    expected = {"budgets": ["5bits"], "solver": "greedy", "bits": (4, 8), "seed": 3,
                "estimator": "measured", "rounding": "rtn", "weight_only": True,
                "group_size": None, "time_limit_s": 7.0}
    assert {key: calls["solve"][key] for key in expected} == expected


def test_flags_win_over_the_project(project, calls, capsys):
    project(FULL)
    assert main(["solve", "--json", "--model", "digits-cnn", "--budget", "4bits",
                 "--solver", "ilp", "--bits", "2,8", "--seed", "5", "--estimator", "hutchinson",
                 "--rounding", "gptq", "--w8a8", "--time-limit", "9"]) == 0
    capsys.readouterr()
    assert calls["model_spec"] == ("digits-cnn", None, None)
    got = calls["solve"]
    assert (got["budgets"], got["solver"], got["bits"], got["seed"]) == (["4bits"], "ilp",
                                                                         (2, 8), 5)
    assert (got["estimator"], got["rounding"], got["weight_only"], got["time_limit_s"]) == (
        "hutchinson", "gptq", False, 9.0)


def test_problem_flag_ignores_the_project_model_but_not_its_solve_settings(project, calls,
                                                                           tmp_path, capsys):
    from allocator.testing_problems import random_problem

    random_problem(6, seed=0).save(tmp_path / "p.json")
    project(FULL.replace('budget = "5bits"', 'budget = "3bits"'))
    assert main(["solve", "--problem", "p.json", "--json"]) == 0
    config = json.loads(capsys.readouterr().out)["config"]
    assert "model_spec" not in calls and "solve" not in calls
    assert config["solver"] == "greedy" and config["budgets"] == ["3bits"]
    assert config["cost"]["avg_bits"] <= 3.0
    assert main(["pareto", "--problem", "p.json", "--points", "3", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["format"] == "allocator.pareto/1"


def test_other_commands_take_model_bits_estimator_seed(project, calls, capsys):
    project(FULL)
    assert main(["pareto", "--points", "3"]) == 1
    assert "stopped in pareto" in _err_line(capsys)
    got = calls["pareto"]
    assert (got["bits"], got["estimator"], got["seed"], got["rounding"]) == ((4, 8), "measured",
                                                                            3, "rtn")
    assert got["budgets"] == []  # the project's budget is solve's, not a fixed pareto cost
    assert main(["sensitivity", "--seed", "11"]) == 1
    assert "stopped in sensitivity" in _err_line(capsys)
    assert calls["sensitivity"]["seed"] == 11 and calls["sensitivity"]["bits"] == (4, 8)
    assert calls["sensitivity"]["options"]["rounding"] == "rtn"
    assert main(["profile", "--bits", "8"]) == 1
    assert "stopped in profile" in _err_line(capsys)
    assert calls["model_spec"] == ("digits-mlp", None, None)
    assert calls["profile"]["args"][1] == (8,)


def test_sensitivity_estimator_defaults_to_hutchinson_without_the_project(project, calls,
                                                                          capsys, monkeypatch):
    import sensitivity

    estimators = []

    def estimate(spec, estimator, **kwargs):
        estimators.append(estimator)
        raise AllocatorError("stop")

    monkeypatch.setattr(sensitivity, "estimate", estimate)
    project('model = "digits-mlp"\n')
    main(["sensitivity"])
    project('model = "digits-mlp"\nestimator = "measured"\n')
    main(["sensitivity"])
    main(["sensitivity", "--estimator", "fracbits"])
    capsys.readouterr()
    assert estimators == ["hutchinson", "measured", "fracbits"]


def test_project_data_goes_with_the_project_model_only(project, calls, tmp_path, capsys):
    project('model = "mypkg.models:tiny"\ndata = "x.npy"\nbudget = "4bits"\n')
    main(["solve"])
    assert calls["model_spec"] == ("mypkg.models:tiny", str(tmp_path / "x.npy"), None)
    main(["solve", "--data", "/elsewhere/y.npy"])
    assert calls["model_spec"] == ("mypkg.models:tiny", "/elsewhere/y.npy", None)
    main(["solve", "--model", "other.mod:f"])
    assert calls["model_spec"] == ("other.mod:f", None, None)
    capsys.readouterr()
    project('model = "digits-mlp"\ndata = "x.npy"\nbudget = "4bits"\n')
    assert main(["solve"]) == 2
    line = _err_line(capsys)
    assert "allocator.toml" in line and "`data` applies to user models" in line


def test_no_model_and_no_budget_say_how_to_give_them(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "c.json").write_text("{}")
    for command in (["evaluate", "--bits", "8"], ["sensitivity"], ["profile"],
                    ["apply", "--config", "c.json", "--out", "q"]):
        assert main(command) == 2, command
        line = _err_line(capsys)
        assert "give `--model`" in line and 'model = "..."` to allocator.toml' in line
    assert main(["solve", "--budget", "4.5bits"]) == 2
    line = _err_line(capsys)
    assert "exactly one of `--problem` and `--model`" in line and "allocator.toml" in line
    _write(tmp_path, "allocator.toml", 'model = "digits-mlp"\n')
    assert main(["solve"]) == 2
    assert "give `--budget`" in _err_line(capsys)


# -- models --layers --------------------------------------------------------------------------

LAYERS = [
    {"name": "embed", "kind": "Embedding", "shape": [100, 16], "params": 1600,
     "quantized": False, "reason": "embedding table: a lookup, not a matrix product"},
    {"name": "fc1", "kind": "Linear", "shape": [32, 16], "params": 512, "quantized": True,
     "reason": None},
    {"name": "conv", "kind": "Conv2d", "shape": [8, 3, 3, 3], "params": 216, "quantized": True,
     "reason": None},
]


@pytest.fixture
def describe(monkeypatch):
    import zoo

    seen = []

    def describe_layers(model_name, data=None):
        seen.append((model_name, data))
        return LAYERS

    monkeypatch.setattr(zoo, "describe_layers", describe_layers, raising=False)
    return seen


def test_models_layers_json_and_table(describe, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["models", "--layers", "tiny", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == {"model": "tiny", "layers": LAYERS}
    assert main(["models", "--layers", "tiny"]) == 0
    out = capsys.readouterr().out
    assert "tiny: 3 Linear/Conv layers, 2 quantized" in out
    assert "8x3x3x3" in out and "1,600" in out and "embedding table" in out
    embed_row = next(line for line in out.splitlines() if "embed" in line)
    assert " no " in embed_row
    assert describe == [("tiny", None), ("tiny", None)]


def test_models_layers_passes_the_project_data_for_the_project_model(describe, project,
                                                                     tmp_path, capsys):
    project('model = "mypkg.models:tiny"\ndata = "x.npy"\n')
    assert main(["models", "--layers", "mypkg.models:tiny", "--json"]) == 0
    assert main(["models", "--layers", "digits-mlp", "--json"]) == 0
    capsys.readouterr()
    assert describe == [("mypkg.models:tiny", str(tmp_path / "x.npy")), ("digits-mlp", None)]


# -- end to end: the bare command runs the configured model -----------------------------------


def test_bare_solve_runs_the_configured_model(project, tmp_path, monkeypatch, capsys):
    pytest.importorskip("sklearn")
    from tests.conftest import private_data_dir

    monkeypatch.setenv("ALLOCATOR_DATA_DIR", str(private_data_dir(tmp_path / "data")))
    project("""
        model = "digits-mlp"
        estimator = "measured"
        bits = [4, 8]
        rounding = "rtn"
        seed = 2
    """)
    assert main(["solve", "--budget", "4.5bits", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    config = report["config"]
    assert config["model"] == "digits-mlp" and config["rounding"] == "rtn"
    assert set(config["bits"].values()) <= {4, 8} and config["cost"]["avg_bits"] <= 4.5
    repro = config["extra"]["reproducibility"]
    assert (repro["estimator"], repro["seed"], repro["bits"]) == ("measured", 2, [4, 8])
    assert report["measured"]["metrics"]
