"""The CLI never prints a traceback: every bad input is one stderr line and exit 1, 2 or 3.

Most cases run `allocator.cli.main` in-process (the same entry point as the console script,
guard included); a few run the console script as a subprocess to check the real process.
"""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from allocator.cli import main


def _err_line(capsys) -> str:
    """The single stderr line of the last command (fails on none, several, or a traceback)."""
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert "Traceback" not in err, err
    assert len(lines) == 1, err
    return lines[0]


@pytest.fixture
def problem_file(tmp_path):
    from allocator.testing_problems import random_problem

    path = tmp_path / "p.json"
    random_problem(6, seed=0).save(path)
    return path


@pytest.fixture
def user_module(tmp_path, monkeypatch):
    """A module of user factories on sys.path; each records that it was called."""
    marker = tmp_path / "called"
    (tmp_path / "h5_user_models.py").write_text(textwrap.dedent(f"""
        from pathlib import Path
        from torch import nn

        def tiny():
            Path({str(marker)!r}).touch()
            return nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))

        def needs_args(width):
            return nn.Linear(width, width)

        def not_a_module():
            return 42

        def raises():
            raise ValueError("the factory's own\\nmulti-line failure")

        class NotAModule:
            pass
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "h5_user_models", raising=False)  # this test's own copy
    importlib.invalidate_caches()
    np.save(tmp_path / "x4.npy", np.random.RandomState(0).randn(12, 4).astype(np.float32))
    return tmp_path, marker


# -- --out that cannot be written, on every command that has one -----------------------------

UNWRITABLE = ["/proc/nope/x.json", "/proc/x.json", "/etc/passwd/x.json"]


@pytest.mark.parametrize("out", UNWRITABLE)
@pytest.mark.parametrize("command", [
    ["solve", "--problem", "{p}", "--budget", "4bits"],
    ["pareto", "--problem", "{p}", "--points", "3"],
    ["sensitivity", "--model", "digits-mlp"],
    ["profile", "--model", "digits-mlp"],
])
def test_unwritable_out_is_one_line_before_any_work(command, out, problem_file, capsys):
    args = [a.format(p=problem_file) for a in command] + ["--out", out]
    assert main(args) == 2
    line = _err_line(capsys)
    assert line.startswith("error: `--out`") and out in line


def test_out_that_is_a_folder_or_a_file_where_a_folder_is_needed(problem_file, tmp_path,
                                                                  capsys):
    assert main(["solve", "--problem", str(problem_file), "--budget", "4bits",
                 "--out", str(tmp_path)]) == 2
    assert "is a folder, not a file" in _err_line(capsys)
    assert main(["apply", "--model", "digits-mlp", "--config", str(problem_file),
                 "--out", str(problem_file)]) == 2
    assert "is a file, not a folder" in _err_line(capsys)
    assert main(["apply", "--model", "digits-mlp", "--config", str(problem_file),
                 "--out", "/proc/nope/q"]) == 2
    assert "`--out`" in _err_line(capsys)


def test_a_write_that_fails_at_the_end_is_a_runtime_error(problem_file, tmp_path, capsys,
                                                          monkeypatch):
    from allocator.cli import _render

    def full(path, data):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(_render, "write_json", full)
    out = tmp_path / "cfg.json"
    assert main(["solve", "--problem", str(problem_file), "--budget", "4bits", "--json",
                 "--out", str(out)]) == 1
    line = _err_line(capsys)
    assert line.startswith("error: cannot write `--out`") and "No space left" in line


# -- input files --------------------------------------------------------------------------


@pytest.mark.parametrize("path,expected", [
    ("/nonexistent/p.json", "No such file"),
    ("/", "is a folder"),
    ("/dev/zero", "not a regular file"),
])
def test_problem_and_config_files_are_checked_first(path, expected, capsys):
    assert main(["solve", "--problem", path, "--budget", "4bits"]) == 2
    line = _err_line(capsys)
    assert "`--problem`" in line and expected in line
    assert main(["evaluate", "--model", "digits-mlp", "--config", path]) == 2
    line = _err_line(capsys)
    assert "`--config`" in line and expected in line


def _bad_problem_files(tmp_path: Path, good: Path) -> dict[str, Path]:
    doc = json.loads(good.read_text())
    files = {}
    files["utf8"] = tmp_path / "utf8.json"
    files["utf8"].write_bytes(b'{"format": "allocator.problem/1", "model": "\xff\xfe"}')
    files["nested"] = tmp_path / "nested.json"
    files["nested"].write_text("[" * 3000 + "]" * 3000)
    files["nested_meta"] = tmp_path / "nested_meta.json"
    files["nested_meta"].write_text(json.dumps(doc)[:-1] + ', "meta": '
                                    + '{"a": ' * 900 + "1" + "}" * 900 + "}")
    huge = json.loads(json.dumps(doc))
    huge["layers"][0]["omega"] = {k: 1e308 for k in huge["layers"][0]["omega"]}
    files["omega_1e308"] = tmp_path / "omega.json"
    files["omega_1e308"].write_text(json.dumps(huge))
    files["truncated"] = tmp_path / "truncated.json"
    files["truncated"].write_text(good.read_text()[:50])
    files["empty"] = tmp_path / "empty.json"
    files["empty"].write_text("")
    return files


@pytest.mark.parametrize("case", ["utf8", "nested", "nested_meta", "omega_1e308", "truncated",
                                  "empty"])
def test_bad_problem_files_are_named_input_errors(case, problem_file, tmp_path, capsys):
    path = _bad_problem_files(tmp_path, problem_file)[case]
    for command in (["solve", "--budget", "4bits"], ["pareto", "--points", "3"]):
        assert main([*command, "--problem", str(path)]) == 2
        line = _err_line(capsys)
        assert line.startswith("error: ") and path.name in line


# -- numbers -------------------------------------------------------------------------------


@pytest.mark.parametrize("value", ["nan", "inf", "-inf", "-1", "0"])
def test_time_limits_must_be_positive_finite_seconds(value, problem_file, capsys):
    assert main(["solve", "--problem", str(problem_file), "--budget", "4bits",
                 "--time-limit", value]) == 2
    assert "--time-limit" in _err_line(capsys)
    assert main(["sensitivity", "--model", "digits-mlp", "--time-limit", value]) == 2
    assert "--time-limit" in _err_line(capsys)


@pytest.mark.parametrize("args", [
    ["--rel-tol", "nan"], ["--rel-tol", "-0.1"], ["--rel-tol", "1.5"], ["--max-probes", "0"],
    ["--seed", "-1"], ["--seed", str(2**64)], ["--bits", "4.5"], ["--bits", "٤"],
])
def test_bad_sensitivity_numbers(args, capsys):
    assert main(["sensitivity", "--model", "digits-mlp", *args]) == 2
    assert args[0] in _err_line(capsys)


@pytest.mark.parametrize("args", [["--points", "1"], ["--points", "-5"],
                                  ["--points", "10000000"], ["--measure", "-1"]])
def test_bad_pareto_counts(args, problem_file, capsys):
    assert main(["pareto", "--problem", str(problem_file), *args]) == 2
    assert args[0] in _err_line(capsys)


@pytest.mark.parametrize("budget,code", [
    ("1e309bits", 2), ("1e99999999999bits", 2), ("٤bits", 2), ("\udcedbits", 2),
    ("nanbits", 2), ("-4bits", 2), ("1e-15bits", 3), ("1e-12bits", 3),
])
def test_budget_extremes(budget, code, problem_file, capsys):
    assert main(["solve", "--problem", str(problem_file), "--budget", budget]) == code
    line = _err_line(capsys)
    assert line.startswith("infeasible:" if code == 3 else "error:")


# -- user models: files before code; factories that are not model factories -----------------


def test_missing_data_is_named_before_the_factory_runs(user_module, capsys):
    tmp, marker = user_module
    for command in (["evaluate", "--bits", "4"], ["solve", "--budget", "4bits"],
                    ["pareto"], ["sensitivity"], ["profile"]):
        assert main([*command, "--model", "h5_user_models:tiny",
                     "--data", str(tmp / "missing.npy")]) == 2
        line = _err_line(capsys)
        assert "`--data`" in line and "missing.npy" in line
    assert main(["evaluate", "--model", "h5_user_models:tiny", "--data", str(tmp / "x4.npy"),
                 "--weights", str(tmp / "missing.safetensors"), "--bits", "4"]) == 2
    assert "`--weights`" in _err_line(capsys)
    assert not marker.exists()


@pytest.mark.parametrize("factory,expected", [
    ("os:system", "standard-library"),
    ("subprocess:run", "standard-library"),
    ("h5_user_models:needs_args", "needs arguments (width)"),
    ("h5_user_models:NotAModule", "not an nn.Module"),
    ("h5_user_models:not_a_module", "returned int"),
    ("h5_user_models:raises", "the factory raised ValueError"),
    ("h5_user_models:absent", "no callable 'absent'"),
    ("nonexistent.module:f", "cannot import"),
    ("torch:randn", "not a model factory"),
])
def test_factories_that_are_not_model_factories_are_refused(factory, expected, user_module,
                                                            capsys):
    tmp, _ = user_module
    assert main(["evaluate", "--model", factory, "--data", str(tmp / "x4.npy"),
                 "--bits", "4"]) == 2
    assert expected in _err_line(capsys)


def test_solve_and_pareto_take_data_and_weights_for_user_models(user_module, problem_file,
                                                                capsys):
    tmp, marker = user_module
    for command in (["solve", "--budget", "4bits"], ["pareto"]):
        assert main([*command, "--model", "nonexistent.module:f"]) == 2
        assert "needs `--data`" in _err_line(capsys)
        assert main([*command, "--model", "digits-mlp", "--data", str(tmp / "x4.npy")]) == 2
        assert "`--data` applies to user models" in _err_line(capsys)
        assert main([*command, "--problem", str(problem_file),
                     "--data", str(tmp / "x4.npy")]) == 2
        assert "applies with `--model`" in _err_line(capsys)
    np.save(tmp / "x7.npy", np.zeros((10, 7), dtype=np.float32))  # the wrong width
    assert main(["solve", "--budget", "4bits", "--model", "h5_user_models:tiny",
                 "--data", str(tmp / "x7.npy")]) == 2
    assert "does not fit the model's input" in _err_line(capsys)
    assert marker.exists()  # --data reached the user's model


def test_solve_a_user_model_end_to_end(user_module, tmp_path, monkeypatch, capsys):
    tmp, _ = user_module
    monkeypatch.setenv("ALLOCATOR_DATA_DIR", str(tmp_path / "data"))
    out = tmp_path / "cfg.json"
    assert main(["solve", "--model", "h5_user_models:tiny", "--data", str(tmp / "x4.npy"),
                 "--budget", "6bits", "--json", "--out", str(out)]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["config"]["cost"]["avg_bits"] <= 6
    assert json.loads(out.read_text())["bits"] == report["config"]["bits"]


# -- the last-resort guard -----------------------------------------------------------------


def test_unexpected_exception_is_one_internal_error_line(problem_file, capsys, monkeypatch):
    import allocator

    def boom(*args, **kwargs):
        raise RuntimeError("boom\nsecond line")

    monkeypatch.delenv("ALLOCATOR_DEBUG", raising=False)
    monkeypatch.setattr(allocator, "solve_problem", boom)
    assert main(["solve", "--problem", str(problem_file), "--budget", "4bits"]) == 1
    line = _err_line(capsys)
    assert line.startswith("internal error: RuntimeError: boom second line (please report")

    monkeypatch.setenv("ALLOCATOR_DEBUG", "1")
    assert main(["solve", "--problem", str(problem_file), "--budget", "4bits"]) == 1
    err = capsys.readouterr().err
    assert "Traceback" in err and err.strip().splitlines()[-1].startswith("internal error:")


def test_system_exit_from_a_library_keeps_only_0_1_2(problem_file, capsys, monkeypatch):
    import allocator

    for status, code in ((7, 1), (3, 1), (2, 2), (0, 0)):  # 3 would claim "infeasible"
        def leave(*args, status=status, **kwargs):
            sys.exit(status)

        monkeypatch.setattr(allocator, "solve_problem", leave)
        assert main(["solve", "--problem", str(problem_file), "--budget", "4bits"]) == code
        if code == 1:
            assert f"stopped with exit status {status}" in _err_line(capsys)


@pytest.mark.parametrize("args", [["serve", "--log-level", "nope"], ["serve", "--port", "0"],
                                  ["serve", "--port", "70000"], ["serve", "--workers", "-1"],
                                  ["worker", "--concurrency", "0"],
                                  ["worker", "--loglevel", "nope"]])
def test_service_flags_are_checked_before_anything_starts(args, capsys):
    assert main(args) == 2
    assert args[1] in _err_line(capsys)


# -- the real process: a few cases as subprocesses ------------------------------------------


@pytest.mark.parametrize("args,code,expected", [
    (["solve", "--problem", "{p}", "--budget", "4bits", "--out", "/proc/nope/x.json"], 2,
     "`--out`"),
    (["evaluate", "--model", "os:system", "--data", "{x}", "--bits", "4"], 2, "standard-library"),
    (["solve", "--problem", "{p}", "--budget", "1e309bits"], 2, "1e309bits"),
    (["solve", "--problem", "{p}", "--budget", "4bits", "--time-limit", "nan"], 2,
     "--time-limit"),
])
def test_console_process_prints_one_line(args, code, expected, problem_file, user_module):
    tmp, _ = user_module
    argv = [a.format(p=problem_file, x=tmp / "x4.npy") for a in args]
    env = {k: v for k, v in os.environ.items() if k != "ALLOCATOR_DEBUG"}
    proc = subprocess.run([sys.executable, "-m", "allocator.cli", *argv], capture_output=True,
                          text=True, timeout=120, env=env)
    assert proc.returncode == code, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert "Traceback" not in proc.stderr and len(lines) == 1, proc.stderr
    assert expected in lines[0]
