"""`--tie` and `--fix` on `solve` and `pareto` (problem files and a built-in model), in the
project file, and their named errors (exit 2, one stderr line naming the flag and the rule)."""

from __future__ import annotations

import json
import textwrap

import pytest

from allocator import Problem
from allocator._problem import ProblemLayer
from allocator.cli import main
from tests.test_cli_robustness import _err_line

QKV = r"re:\.(q|k|v)_proj$"


def _block_problem() -> Problem:
    """Three attention blocks and a head, with Ω that would split q/k/v if it could."""
    layers = []
    for b in range(3):
        for i, role in enumerate(("q", "k", "v", "o")):
            scale = (1 + b) * (1 + 3 * (i == 1))  # k is the sensitive one
            layers.append(ProblemLayer(f"model.layers.{b}.self_attn.{role}_proj", 1000 + 100 * i,
                                       50_000, {w: scale * 4.0 ** -w for w in (2, 3, 4, 6, 8)}))
    layers.append(ProblemLayer("lm_head", 4000, 200_000,
                               {w: 0.5 * 4.0 ** -w for w in (2, 3, 4, 6, 8)}))
    return Problem(layers=tuple(layers), bits=(2, 3, 4, 6, 8), model="blocks")


@pytest.fixture
def problem_file(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no project file of the repository's
    path = tmp_path / "p.json"
    _block_problem().save(path)
    return path


def test_solve_problem_with_ties_and_pins_reports_they_held(problem_file, tmp_path, capsys):
    out = tmp_path / "cfg.json"
    free = [main(["solve", "--problem", str(problem_file), "--budget", "4bits", "--json"]),
            json.loads(capsys.readouterr().out)]
    assert free[0] == 0 and "rules" not in free[1]
    split = free[1]["config"]["bits"]  # without rules k takes more bits than q and v
    assert split["model.layers.2.self_attn.k_proj"] > split["model.layers.2.self_attn.q_proj"]
    code = main(["solve", "--problem", str(problem_file), "--budget", "4bits", "--json",
                 "--tie", QKV, "--fix", "lm_head=8",
                 "--fix", r"re:^model\.layers\.0\..*\.o_proj$=2", "--out", str(out)])
    captured = capsys.readouterr()
    assert code == 0
    report = json.loads(captured.out)
    bits = report["config"]["bits"]
    for b in range(3):
        assert len({bits[f"model.layers.{b}.self_attn.{r}_proj"] for r in "qkv"}) == 1
    assert bits["lm_head"] == 8 and bits["model.layers.0.self_attn.o_proj"] == 2
    rules = report["rules"]
    assert (rules["ties"], rules["fixed"], rules["held"], rules["tied_layers"]) == (3, 2, True, 9)
    assert rules["groups"][0] == [f"model.layers.0.self_attn.{r}_proj" for r in "qkv"]
    assert report["config"]["extra"]["rules"] == rules
    assert json.loads(out.read_text())["extra"]["rules"] == rules  # --out keeps it
    assert report["config"]["cost"]["avg_bits"] <= 4 + 1e-9
    assert "rules held: 3 tie group(s) of 9 layers, 2 pinned layer(s)" in captured.err


def test_pareto_problem_keeps_the_rules_at_every_point(problem_file, capsys):
    assert main(["pareto", "--problem", str(problem_file), "--points", "5", "--json",
                 "--tie", "model.layers.1.self_attn.o_proj,model.layers.2.self_attn.o_proj",
                 "--fix", "lm_head=4"]) == 0
    front = json.loads(capsys.readouterr().out)
    assert front["rules"]["held"] and front["rules"]["ties"] == 1
    assert len(front["points"]) >= 2
    for point in front["points"]:
        bits = point["bits"]
        assert bits["lm_head"] == 4
        assert bits["model.layers.1.self_attn.o_proj"] == bits["model.layers.2.self_attn.o_proj"]


@pytest.mark.parametrize(("flags", "message"), [
    (["--tie", "re:("], "`--tie` 're:(' is not a valid regex"),
    (["--tie", r"re:\.gate_proj$"], r"`--tie` 're:\.gate_proj$' matches no layer"),
    (["--tie", "lm_head,head"], "`--tie` 'lm_head,head': 'head' is not a layer"),
    (["--tie", "lm_head"], "names one layer"),
    (["--fix", "lm_head"], "`--fix` 'lm_head' must read NAME=BITS"),
    (["--fix", "lm_head=9"], "`--fix` 'lm_head=9': the width must be between 2 and 8"),
    (["--fix", "lm_head=5"], "`--fix` 'lm_head=5': 5 bits is not a candidate width"),
    (["--fix", "re:^nothing=4"], "`--fix` 're:^nothing=4' matches no layer"),
    (["--fix", "lm_head=8", "--fix", "re:head$=4"], "pins 'lm_head' to 4 bits, but `--fix` "
     "'lm_head=8' pins it to 8"),
    (["--tie", QKV, "--fix", "model.layers.1.self_attn.q_proj=2",
      "--fix", "model.layers.1.self_attn.v_proj=8"],
     r"`--tie` 're:\.(q|k|v)_proj$' ties 'model.layers.1.self_attn.q_proj' and "
     "'model.layers.1.self_attn.v_proj', but `--fix`"),
])
@pytest.mark.parametrize("command", ["solve", "pareto"])
def test_bad_rules_exit_2_naming_flag_and_rule(problem_file, capsys, command, flags, message):
    budget = ["--budget", "4bits"] if command == "solve" else []
    assert main([command, "--problem", str(problem_file), *budget, "--bits", "2,4,8",
                 *flags]) == 2
    line = _err_line(capsys)
    assert line.startswith("error: ") and message in line, line


def test_project_file_rules_show_and_apply_to_the_model_only(problem_file, tmp_path, capsys):
    (tmp_path / "allocator.toml").write_text(textwrap.dedent("""
        model = "digits-mlp"
        tie = "fc1,fc2"
        fix = ["fc3=8"]
    """))
    assert main(["config", "show", "--json"]) == 0
    settings = json.loads(capsys.readouterr().out)["settings"]
    assert settings["tie"] == {"value": ["fc1,fc2"], "source": "allocator.toml"}
    assert settings["fix"] == {"value": ["fc3=8"], "source": "allocator.toml"}
    # a problem file has its own layer names: the project's rules are the model's
    assert main(["solve", "--problem", str(problem_file), "--budget", "4bits", "--json"]) == 0
    assert "rules" not in json.loads(capsys.readouterr().out)
    # the model's rules are checked against its layers before any work; flags win
    assert main(["solve", "--budget", "4bits", "--tie", "re:^conv"]) == 2
    assert "`--tie` 're:^conv' matches no layer (layers: 'fc1', 'fc2', 'fc3')" in \
        _err_line(capsys)
    assert main(["solve", "--budget", "4bits", "--fix", "fc4=8"]) == 2
    assert "`--fix` 'fc4=8': 'fc4' is not a layer" in _err_line(capsys)


def test_project_file_with_a_bad_rule_is_one_named_line(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "allocator.toml").write_text('model = "digits-mlp"\nfix = "fc3=12"\n')
    assert main(["config", "show"]) == 2
    line = _err_line(capsys)
    assert "allocator.toml line 2" in line and "`fix` 'fc3=12'" in line, line
    (tmp_path / "allocator.toml").write_text('tie = ["re:(", "a,b"]\n')
    assert main(["config", "show"]) == 2
    assert "`tie` 're:(' is not a valid regex" in _err_line(capsys)


def test_model_solve_with_project_rules(tmp_path, monkeypatch, capsys):
    """A built-in model end to end: the project's tie and pin hold in the measured answer."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "allocator.toml").write_text(
        'model = "digits-mlp"\ntie = "fc1,fc2"\nfix = "fc3=8"\nbits = [2, 4, 8]\n')
    assert main(["solve", "--budget", "4bits", "--rounding", "rtn", "--json"]) == 0
    captured = capsys.readouterr()
    report = json.loads(captured.out)
    bits = report["config"]["bits"]
    assert bits["fc1"] == bits["fc2"] and bits["fc3"] == 8
    assert report["rules"]["held"] and report["rules"]["groups"] == [["fc1", "fc2"]]
    assert report["config"]["extra"]["reproducibility"]["rules"] == {"ties": ["fc1,fc2"],
                                                                    "fix": ["fc3=8"]}
    assert report["measured"]["metrics"]  # applied and measured on the engine
    assert "rules held" in captured.err
