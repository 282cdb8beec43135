from __future__ import annotations

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
