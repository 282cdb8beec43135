"""Solver configs: JSON round trips through the registry, named errors, dispatch by type,
and capability flags that tell the truth."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from allocator.solvers import (
    SOLVERS,
    IlpConfig,
    SolverConfig,
    config_from_dict,
    get_solver,
    solver_for,
)
from engine import InvalidSpecError, UnknownComponentError

# Options other than the defaults, for every registered solver.
EXAMPLES = {
    "ilp": {"backend": "HiGHS"},
    "greedy": {},
    "uniform": {},
    "brute": {"max_assignments": 10},
    "dp": {"max_states": 100},
    "fracbits": {"steps": 5, "lr": 0.1, "momentum": 0.5, "rounding": "rtn", "group_size": None},
    "ddpg": {"episodes": 5, "sigma": 0.1, "report_gap": False, "reward": "proxy",
             "rounding": "rtn", "group_size": 64},
}


def test_every_solver_has_an_example():
    assert set(EXAMPLES) == set(SOLVERS.names())


@pytest.mark.parametrize("name", list(EXAMPLES))
@pytest.mark.parametrize("which", ["defaults", "example"])
def test_config_round_trips_through_json_and_the_registry(name, which):
    cls = SOLVERS.entry(name).target
    options = EXAMPLES[name] if which == "example" else {}
    config = cls.config_cls(**options)
    assert config.name == name == cls.name
    data = json.loads(json.dumps(config.to_dict()))
    assert data == {"type": name, "version": 1,
                    "params": {f: getattr(config, f) for f in cls.config_cls.option_names()}}
    back = config_from_dict(data)
    assert type(back) is cls.config_cls and back == config


@pytest.mark.parametrize("name", SOLVERS.names(only_available=True))
def test_get_solver_and_solver_for_build_the_same_solver(name):
    cls = SOLVERS.get(name)
    by_name = get_solver(name, **EXAMPLES[name])
    by_config = solver_for(cls.config_cls(**EXAMPLES[name]))
    assert type(by_name) is type(by_config) is cls
    assert by_name.config == by_config.config == cls.config_cls(**EXAMPLES[name])


@pytest.mark.parametrize("name, options, valid", [
    ("ilp", {"colour": "red"}, "backend"),
    ("greedy", {"episodes": 3}, "none"),
    ("brute", {"max_combinations": 3}, "max_assignments"),
    ("ddpg", {"time_limit_s": 3}, "episodes, sigma, report_gap, reward, rounding, group_size, "
                                  "model"),
    ("ilp", {"model": object()}, "backend"),
])
def test_an_unknown_option_is_named_with_the_valid_ones(name, options, valid):
    with pytest.raises(InvalidSpecError, match=f"`{next(iter(options))}`") as err:
        get_solver(name, **options)
    assert f"its options: {valid}." in str(err.value)
    with pytest.raises(InvalidSpecError, match=f"`{next(iter(options))}`"):
        config_from_dict({"type": name, "version": 1, "params": options})


@pytest.mark.parametrize("name, options, field", [
    ("ilp", {"backend": "gurobi"}, "backend"),
    ("brute", {"max_assignments": 0}, "max_assignments"),
    ("dp", {"max_states": 2.5}, "max_states"),
    ("ddpg", {"episodes": 0}, "episodes"),
    ("ddpg", {"sigma": -0.1}, "sigma"),
    ("ddpg", {"report_gap": "yes"}, "report_gap"),
    ("ddpg", {"reward": "accuracy"}, "reward"),
    ("ddpg", {"rounding": "awq"}, "rounding"),
    ("ddpg", {"group_size": 100}, "group_size"),
    ("fracbits", {"steps": 0}, "steps"),
    ("fracbits", {"rounding": "awq"}, "rounding"),
])
def test_a_bad_value_is_named_with_the_value(name, options, field):
    value = options[field]
    with pytest.raises(InvalidSpecError, match=f"`{field}`.*{value!r}"):
        SOLVERS.entry(name).target.config_cls(**options)


def test_config_documents_are_checked():
    with pytest.raises(UnknownComponentError, match="unknown solver 'simplex'"):
        config_from_dict({"type": "simplex", "version": 1, "params": {}})
    with pytest.raises(InvalidSpecError, match="`version` must be 1, got 2"):
        config_from_dict({"type": "ilp", "version": 2, "params": {}})
    with pytest.raises(InvalidSpecError, match="`type`, `version` and `params`"):
        config_from_dict({"type": "ilp"})
    with pytest.raises(InvalidSpecError, match="`params` must be an object"):
        config_from_dict({"type": "ilp", "version": 1, "params": ["HiGHS"]})


def test_dispatch_is_by_config_type():
    class Unregistered(SolverConfig):
        name = "simplex"

    with pytest.raises(UnknownComponentError, match="Unregistered.*IlpConfig"):
        solver_for(Unregistered())
    with pytest.raises(InvalidSpecError, match="takes no `model`"):
        solver_for(IlpConfig(), model=object())
    with pytest.raises(InvalidSpecError, match="takes a GreedyConfig, got IlpConfig"):
        SOLVERS.get("greedy")(IlpConfig())


def test_measured_reward_needs_the_model():
    if "ddpg" not in SOLVERS.names(only_available=True):
        pytest.skip("the `rl` extra is not installed")
    with pytest.raises(InvalidSpecError, match="`reward` 'measured'.*--model"):
        get_solver("ddpg", reward="measured")


@pytest.mark.parametrize("entry", list(SOLVERS), ids=lambda e: e.name)
def test_capability_flags_are_consistent(entry):
    cls = entry.target
    assert cls.runs_in_api == (not (cls.needs_model or cls.needs_torch))
    assert cls.takes_model or not cls.needs_model
    if cls.takes_model:  # the pipeline passes the model with its quantization settings
        assert {"rounding", "group_size"} <= set(cls.config_cls.option_names())


def test_solvers_that_run_in_the_api_do_not_import_torch():
    code = """
import sys
from allocator._budget import parse_budgets
from allocator.solvers import SOLVERS, get_solver
from allocator.testing_problems import random_problem
problem = random_problem(4, seed=0)
for entry in SOLVERS:
    if entry.target.runs_in_api and entry.available():
        get_solver(entry.name).solve(problem, parse_budgets(["4bits"]), time_limit_s=10)
        get_solver(entry.name).solve(problem, parse_budgets(["1bits"]), time_limit_s=10)
print(sorted(m for m in ("torch", "sensitivity", "stable_baselines3") if m in sys.modules))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, timeout=120)
    assert out.stdout.strip().splitlines()[-1] == "[]"
