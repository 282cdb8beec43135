"""Bad command lines for `benchmarks.robustness`: every command with bad flags, files and
environment, each run as its own `python -m allocator.cli` process (a few at a time).

A case fails when stderr holds "Traceback" or the exit code is not 0, 1, 2 or 3 (a process
that had to be killed counts so too); the CLI's last-resort "internal error:" line is a bug
too (`cli_internal_errors`); a case that must be refused and exits 0 is an accepted bad
input; a refusal (exit 1 or 2) printing more than one stderr line is listed as a multi-line
error.
"""

from __future__ import annotations

import json
import os
import random
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks._robust_common import REPO, Tally, log, short
from benchmarks._robust_http import BAD_BUDGETS, bad_problems, encode

TIMEOUT_S = 120.0
SERVE_TIMEOUT_S = 25.0


@dataclass
class CliCase:
    """`args` after `allocator`; `refuse`: must exit non-zero; `env`: extra variables."""

    args: list[str]
    refuse: bool = True
    env: dict[str, str] = field(default_factory=dict)
    timeout_s: float = TIMEOUT_S

    def summary(self) -> str:
        env = " ".join(f"{k}={v}" for k, v in self.env.items())
        return short((env + " " if env else "") + " ".join(self.args), 160)


class CliFiles:
    """The files the cases point at, made once in a folder."""

    def __init__(self, folder: Path, rng: random.Random):
        from allocator.testing_problems import random_problem
        from engine import BitConfig

        self.dir = folder
        folder.mkdir(parents=True, exist_ok=True)
        self.problem = folder / "p.json"
        base = random_problem(6, seed=rng.randrange(1000)).to_dict()
        self.problem.write_text(json.dumps(base))
        self.bad_problems: list[tuple[str, Path]] = []
        for i, (label, doc, _expect) in enumerate(bad_problems(base)):
            path = folder / f"bad-problem-{i}.json"
            path.write_bytes(encode(doc).encode("utf-8", "surrogatepass"))
            self.bad_problems.append((label, path))
        self.invalid_utf8 = self._write("invalid-utf8.json",
                                        b'{"format": "allocator.problem/1", "model": "\xff"}')
        self.not_json = self._write("not-json.json", b"{")
        self.nested = self._write("nested.json", b"[" * 5000 + b"]" * 5000)
        self.config = folder / "cfg.json"
        BitConfig(bits={"fc1": 4}).save(self.config)
        cfg = json.loads(self.config.read_text())
        self.bad_configs = {
            "bits 9": self._json("cfg-9.json", {**cfg, "bits": {"fc1": 9}}),
            "bits 4.5": self._json("cfg-45.json", {**cfg, "bits": {"fc1": 4.5}}),
            "layer surrogate": self._json("cfg-sur.json", {**cfg, "bits": {"\ud800": 4}}),
            "unknown layer": self._json("cfg-unknown.json", {**cfg, "bits": {"nope": 4}}),
            "group_size 7": self._json("cfg-g7.json", {**cfg, "group_size": 7}),
            "format v9": self._json("cfg-v9.json", {**cfg, "format": "allocator.bitconfig/9"}),
            "a problem file": self.problem,
        }
        x = np.random.RandomState(0).randn(16, 64).astype(np.float32)
        self.data = self._npy("x.npy", x)
        self.data_files = {
            "NaN": self._npy("nan.npy", np.full((8, 64), np.nan, np.float32)),
            "one sample": self._npy("one.npy", x[:1]),
            "empty": self._npy("empty.npy", np.zeros((0, 64), np.float32)),
            "strings": self._npy("str.npy", np.array(["a", "b", "c"])),
            "bool": self._npy("bool.npy", np.ones((8, 64), bool)),
            "complex": self._npy("complex.npy", np.ones((8, 64), np.complex64)),
            "wrong width": self._npy("wide.npy", np.zeros((8, 7), np.float32)),
            "text as .npy": self._write("text.npy", b"hello"),
            "pickle .npy": self._pickle_npy(),
            "scalar": self._npy("scalar.npy", np.float32(1.0)),
            "csv suffix": self._write("x.csv", b"1,2,3"),
            "a folder": self._folder("folder.npy"),
        }
        self.weights_junk = self._write("w.safetensors", b"\x00" * 64)

    def _write(self, name: str, data: bytes) -> Path:
        path = self.dir / name
        path.write_bytes(data)
        return path

    def _json(self, name: str, doc: Any) -> Path:
        return self._write(name, json.dumps(doc).encode("utf-8", "surrogatepass"))

    def _npy(self, name: str, array: Any) -> Path:
        path = self.dir / name
        np.save(path, array, allow_pickle=False)
        return path

    def _pickle_npy(self) -> Path:
        path = self.dir / "pickle.npy"
        np.save(path, np.array([{"a": 1}], dtype=object), allow_pickle=True)
        return path

    def _folder(self, name: str) -> Path:
        path = self.dir / name
        path.mkdir(exist_ok=True)
        return path


def _busy_port() -> tuple[socket.socket, int]:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(1)
    return s, int(s.getsockname()[1])


def cli_cases(f: CliFiles, busy_port: int) -> Iterator[CliCase]:
    """Every command with bad flags, files and environment."""
    p, user = str(f.problem), "allocator.testing:TinyMLP"
    yield CliCase([], refuse=False)
    yield CliCase(["frobnicate"])
    yield CliCase(["--nope"])
    yield CliCase(["--version", "junk"], refuse=False)
    yield CliCase(["solve"])
    yield CliCase(["solve", "--budget"])
    # solve: problem files
    for label, path in f.bad_problems:
        yield CliCase(["solve", "--problem", str(path), "--budget", "4bits", "--solver",
                       "greedy"], refuse=label not in ("layer name 100k chars",
                                                       "layer name control chars",
                                                       "meta 1e309", "unknown top-level key",
                                                       "duplicate format key", "ties [[]]",
                                                       "omega string"))
    for path in (f.invalid_utf8, f.not_json, f.nested, Path("/dev/zero"), Path("/dev/null"),
                 Path("/"), f.dir / "missing.json"):
        yield CliCase(["solve", "--problem", str(path), "--budget", "4bits"])
        yield CliCase(["pareto", "--problem", str(path)])
    for text, expect in BAD_BUDGETS:
        if "\ud800" in text or "\x00" in text:
            continue  # not representable in argv
        yield CliCase(["solve", "--problem", p, "--budget", text], refuse=expect == "4xx")
    for bits in ("4.5", "\u0664", "", "9", "2,,", "1e309", "-4", "4_0", "0x4", "\uff14,8"):
        yield CliCase(["solve", "--problem", p, "--budget", "4bits", "--bits", bits],
                      refuse=bits != "2,,")
    for value in ("nan", "inf", "-1", "0", "1e309", "abc", "-inf"):
        yield CliCase(["solve", "--problem", p, "--budget", "4bits", "--time-limit", value])
    for value in ("-1", str(2**64), "abc", "\u0664", "1.5"):
        yield CliCase(["solve", "--problem", p, "--budget", "4bits", "--seed", value])
    for solver in ("nope", "fracbits", "ILP;rm"):
        yield CliCase(["solve", "--problem", p, "--budget", "4bits", "--solver", solver])
    yield CliCase(["solve", "--problem", p, "--budget", "4bits", "--reward", "nope"])
    yield CliCase(["solve", "--problem", p, "--budget", "4bits", "--reward", "measured"])
    for out in ("/proc/nope/x.json", "/", "/etc/passwd/x.json", "", "n" * 5000,
                str(f.dir / "folder.npy")):
        yield CliCase(["solve", "--problem", p, "--budget", "4bits", "--out", out])
    # solve: models
    yield CliCase(["solve", "--model", "nope", "--budget", "4bits"])
    yield CliCase(["solve", "--model", "os:system", "--budget", "4bits"])
    yield CliCase(["solve", "--model", "os:system", "--data", str(f.data), "--budget", "4bits"])
    yield CliCase(["solve", "--model", "digits-mlp", "--data", str(f.data), "--budget", "4bits"])
    yield CliCase(["solve", "--model", user, "--problem", p, "--budget", "4bits"])
    yield CliCase(["solve", "--problem", p, "--data", str(f.data), "--budget", "4bits"])
    for path in f.data_files.values():
        yield CliCase(["solve", "--model", user, "--data", str(path), "--budget", "4bits"])
    yield CliCase(["solve", "--model", user, "--data", str(f.data), "--weights",
                   str(f.weights_junk), "--budget", "4bits"])
    yield CliCase(["solve", "--model", user, "--data", str(f.data), "--weights",
                   str(f.dir / "missing.safetensors"), "--budget", "4bits"])
    # pareto
    for args in (["--points", "0"], ["--points", "-1"], ["--points", "1000000"],
                 ["--points", "abc"], ["--axis", "nope"], ["--measure", "-1"],
                 ["--png", str(f.dir / "x.png")], ["--out", "/proc/nope/f.json"],
                 ["--budget", "1e309bits"], ["--budget", "4bits"], ["--axis", "latency",
                                                                     "--budget", "1ms"]):
        yield CliCase(["pareto", "--problem", p, *args])
    yield CliCase(["pareto", "--model", user, "--data", str(f.data_files["NaN"])])
    # evaluate
    for args in (["--bits", "9"], ["--bits", "0"], ["--bits", "abc"],
                 ["--bits", "4", "--config", str(f.config)], [],
                 ["--config", str(f.dir / "missing.json")], ["--config", "/"],
                 ["--config", str(f.not_json)], ["--bits", "4", "--group-size", "-1"],
                 ["--bits", "4", "--group-size", "7"], ["--bits", "4", "--rounding", "nope"],
                 ["--bits", "4", "--calibration-inputs", "nope"]):
        yield CliCase(["evaluate", "--model", "digits-mlp", *args])
    for label, path in f.bad_configs.items():
        yield CliCase(["evaluate", "--model", "digits-mlp", "--config", str(path)])
        if label in ("unknown layer", "layer surrogate"):
            yield CliCase(["apply", "--model", "digits-mlp", "--config", str(path), "--out",
                           str(f.dir / f"q-{label.replace(' ', '-')}")])
    yield CliCase(["evaluate", "--model", "nope", "--bits", "4"])
    yield CliCase(["evaluate", "--model", "os:system", "--data", str(f.data), "--bits", "4"])
    yield CliCase(["evaluate", "--model", "subprocess:run", "--data", str(f.data), "--bits",
                   "4"])
    yield CliCase(["evaluate", "--model", "torch:randn", "--data", str(f.data), "--bits", "4"])
    yield CliCase(["evaluate", "--model", "torch.nn:Linear", "--data", str(f.data), "--bits",
                   "4"])
    # sensitivity
    for args in (["--estimator", "nope"], ["--max-probes", "0"], ["--max-probes", "-1"],
                 ["--rel-tol", "nan"], ["--rel-tol", "2"], ["--time-limit", "nan"],
                 ["--estimator", "measured", "--max-probes", "4"], ["--bits", "9"],
                 ["--out", "/proc/nope/s.json"], ["--seed", "-5"], ["--rounding", "nope"]):
        yield CliCase(["sensitivity", "--model", "digits-mlp", *args])
    yield CliCase(["sensitivity", "--model", user, "--data", str(f.data_files["pickle .npy"])])
    # profile, profiles
    for args in (["--batch", "0"], ["--batch", "-1"], ["--batch", "abc"], ["--repeats", "0"],
                 ["--bits", "1"], ["--out", "/proc/nope/l.json"]):
        yield CliCase(["profile", "--model", "digits-mlp", *args])
    yield CliCase(["profile", "--model", "nope"])
    yield CliCase(["profiles", "--json"], refuse=False)
    yield CliCase(["profiles"], env={"ALLOCATOR_DATA_DIR": "/proc/nope"})
    yield CliCase(["profiles"], env={"ALLOCATOR_DATA_DIR": str(f.problem)})
    yield CliCase(["models", "--json"], env={"ALLOCATOR_DATA_DIR": "/proc/nope"},
                  refuse=False)
    yield CliCase(["solve", "--model", "digits-mlp", "--budget", "4bits"],
                  env={"ALLOCATOR_DATA_DIR": "/proc/nope"})
    # apply
    yield CliCase(["apply", "--model", "digits-mlp", "--config", str(f.config), "--out",
                   str(f.problem)])
    yield CliCase(["apply", "--model", "digits-mlp", "--config", str(f.config), "--out",
                   "/proc/nope/q"])
    yield CliCase(["apply", "--model", "nope", "--config", str(f.config), "--out",
                   str(f.dir / "q")])
    # solvers, models, demo
    yield CliCase(["solvers", "--nope"])
    yield CliCase(["models", "--json", "extra"])
    yield CliCase(["demo", "--seed", "-1"])
    # serve and worker (API only: nothing left running if one starts by mistake)
    serve = ["serve", "--workers", "0"]
    for args in (["--port", "0"], ["--port", "70000"], ["--port", "abc"],
                 ["--port", str(busy_port)], ["--workers", "-1"], ["--workers", "1000"],
                 ["--host", "no such host!"], ["--log-level", "nope"]):
        yield CliCase([*serve, *args], timeout_s=SERVE_TIMEOUT_S)
    yield CliCase(["serve", "--port", str(busy_port + 1 if busy_port < 65535 else 1)],
                  env={"ALLOCATOR_WORKERS": "abc"}, timeout_s=SERVE_TIMEOUT_S)
    for env in ({"ALLOCATOR_READ_REQUIRES_TOKEN": "1", "ALLOCATOR_API_TOKEN": ""},
                {"ALLOCATOR_API_TOKEN": " padded "},
                {"ALLOCATOR_API_TOKEN": "t\u00f6ken"},
                {"ALLOCATOR_DATABASE_URL": "sqlite:////proc/nope/jobs.sqlite"},
                {"ALLOCATOR_DATABASE_URL": "nope://x"},
                {"ALLOCATOR_MAX_UPLOAD_BYTES": "-1"}):
        yield CliCase([*serve, "--port", str(busy_port + 1 if busy_port < 65535 else 1)],
                      env=env, timeout_s=SERVE_TIMEOUT_S)
    yield CliCase(["worker"], env={"ALLOCATOR_BROKER_URL": ""})
    yield CliCase(["worker", "--concurrency", "0"], env={"ALLOCATOR_BROKER_URL": ""})


def run_case(case: CliCase, data_dir: Path) -> dict[str, Any]:
    env = {k: v for k, v in os.environ.items() if k != "ALLOCATOR_DEBUG"}
    env |= {"ALLOCATOR_DATA_DIR": str(data_dir), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
            "COLUMNS": "100"}
    env.pop("ALLOCATOR_BROKER_URL", None)
    env |= case.env
    env = {k: v for k, v in env.items() if v != ""}
    proc = subprocess.Popen([sys.executable, "-m", "allocator.cli", *case.args], cwd=REPO,
                            env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, start_new_session=True)
    try:
        _, err = proc.communicate(timeout=case.timeout_s)
        return {"rc": proc.returncode, "stderr": err.decode(errors="replace")}
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # the whole group: a service's workers too
        _, err = proc.communicate()
        return {"rc": None, "stderr": err.decode(errors="replace"), "timeout": True}


def judge(case: CliCase, result: dict[str, Any], tally: Tally) -> None:
    where = "allocator " + (case.args[0] if case.args else "")
    rc, err = result["rc"], result["stderr"]
    lines = [line for line in err.splitlines() if line.strip()]
    if result.get("timeout"):
        tally.fail("cli_tracebacks", where, case.summary(),
                   f"killed after {case.timeout_s:.0f} s (still running); stderr: "
                   f"{short(err[-200:], 200)}")
    elif "Traceback" in err:
        at = next((i for i, line in enumerate(lines) if "Traceback" in line), 0)
        tail = " / ".join(lines[-2:])
        tally.fail("cli_tracebacks", where, case.summary(),
                   f"exit {rc}, traceback ({len(lines) - at} lines): {short(tail, 200)}")
    elif rc not in (0, 1, 2, 3):
        tally.fail("cli_tracebacks", where, case.summary(), f"exit {rc}: {short(err, 200)}")
    elif any(line.startswith("internal error:") for line in lines):
        tally.fail("cli_internal_errors", where, case.summary(),
                   f"exit {rc}: {short(' / '.join(lines[-2:]), 200)}")
    elif case.refuse and rc == 0:
        tally.fail("accepted_bad_inputs", where, case.summary(), "exit 0")
    elif rc in (1, 2) and len(lines) > 1:
        tally.fail("cli_multiline_errors", where, case.summary(),
                   f"exit {rc} with {len(lines)} stderr lines: {short(' / '.join(lines), 200)}")


def _sample(cases: list[CliCase], per_command: int, rng: random.Random) -> list[CliCase]:
    """At most `per_command` cases of each command (seeded), so every command stays."""
    groups: dict[str, list[CliCase]] = {}
    for case in cases:
        groups.setdefault(case.args[0] if case.args else "", []).append(case)
    out: list[CliCase] = []
    for group in groups.values():
        out += group if len(group) <= per_command else rng.sample(group, per_command)
    return out


def run_cli_cases(folder: Path, tally: Tally, rng: random.Random, *, per_command: int,
                  parallel: int) -> None:
    """Builds the files and cases (at most `per_command` of each command), runs them
    `parallel` at a time and judges each."""
    files = CliFiles(folder / "files", rng)
    holder, port = _busy_port()
    try:
        cases = _sample(list(cli_cases(files, port)), per_command, rng)
        data_dir = folder / "data"
        data_dir.mkdir(parents=True, exist_ok=True)
        log(f"  {len(cases)} command lines, {parallel} at a time...")
        with ThreadPoolExecutor(max_workers=parallel) as pool:
            futures = {pool.submit(run_case, case, data_dir): case for case in cases}
            for done in as_completed(futures):
                tally.add("cli_inputs_tried")
                tally.add("cli_subprocess_cases")
                tally.add("bad_inputs_tried")
                judge(futures[done], done.result(), tally)
    finally:
        holder.close()
