"""Settings that cannot work are refused at start with one line naming the variable and
the reason: by `load_settings`, by the app factory, and by `allocator serve` (exit 2, no
traceback). Secrets are never echoed."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from api import Settings, create_app
from api._settings import SettingsError, load_settings
from tests.api.conftest import REPO, TOKEN

CLEAN_ENV = {k: v for k, v in os.environ.items() if not k.startswith("ALLOCATOR_")}


def _refused(**variables: str) -> str:
    """The one-line message `load_settings` refuses `variables` with."""
    with pytest.MonkeyPatch.context() as mp:
        for key, value in variables.items():
            mp.setenv(key, value)
        with pytest.raises(SettingsError) as info:
            load_settings()
    message = str(info.value)
    assert "\n" not in message
    return message


def test_read_lock_without_a_token_is_refused(env) -> None:
    message = _refused(ALLOCATOR_READ_REQUIRES_TOKEN="1")
    assert "ALLOCATOR_READ_REQUIRES_TOKEN" in message and "ALLOCATOR_API_TOKEN" in message
    assert "open" in message
    # With a token it is a working lock.
    env.setenv("ALLOCATOR_API_TOKEN", TOKEN)
    env.setenv("ALLOCATOR_READ_REQUIRES_TOKEN", "1")
    settings = load_settings()
    assert settings.read_requires_token and settings.api_token == TOKEN


@pytest.mark.parametrize(("token", "reason"), [
    (" secret", "whitespace"), ("secret ", "whitespace"), ("secret\t", "whitespace"),
    ("sécret", "character 2 is not printable ASCII"),
    ("se\u200bcret", "character 3 is not printable ASCII"),
    ("tok\x7fen", "character 4 is not printable ASCII"),
])
def test_token_no_header_can_carry_is_refused(env, token: str, reason: str) -> None:
    message = _refused(ALLOCATOR_API_TOKEN=token)
    assert message.startswith("ALLOCATOR_API_TOKEN: ") and reason in message
    assert token.strip() not in message  # the secret is not echoed


def test_printable_ascii_token_is_kept(env) -> None:
    env.setenv("ALLOCATOR_API_TOKEN", "A-z_0.9~!$%&*+/=?^|")
    assert load_settings().api_token == "A-z_0.9~!$%&*+/=?^|"


def test_bad_value_names_variable_and_value(env) -> None:
    message = _refused(ALLOCATOR_WORKERS="many")
    assert message.startswith("ALLOCATOR_WORKERS='many': ")


def test_factory_refuses_bad_settings_in_one_line(env) -> None:
    env.setenv("ALLOCATOR_API_TOKEN", "t\u00f6ken")
    with pytest.raises(SettingsError, match="^ALLOCATOR_API_TOKEN: "):
        create_app()


@pytest.mark.parametrize("where", ["under_a_file", "a_folder"])
def test_unwritable_database_path_is_one_line(tmp_path: Path, where: str) -> None:
    blocker = tmp_path / "blocker"
    if where == "under_a_file":
        blocker.write_text("")
        path, cause = blocker / "db" / "jobs.sqlite", f"{blocker} is a file, not a folder"
    else:
        blocker.mkdir()
        path, cause = blocker, "the path is a folder"
    with pytest.raises(SettingsError) as info:
        create_app(Settings(database_url=f"sqlite:///{path}", workers=0),
                   start_workers=False)
    message = str(info.value)
    assert "\n" not in message and message.startswith("ALLOCATOR_DATABASE_URL: ")
    assert str(path) in message and cause in message


def test_read_only_database_is_refused(tmp_path: Path) -> None:
    """A database that can be read but not written (SQLite opened read-only) is refused
    at start, not found out by the first job."""
    db = tmp_path / "jobs.sqlite"
    create_app(Settings(database_url=f"sqlite:///{db}", workers=0), start_workers=False)
    url = f"sqlite:///file:{db}?mode=ro&uri=true"
    with pytest.raises(SettingsError) as info:
        create_app(Settings(database_url=url, workers=0), start_workers=False)
    assert "readonly" in str(info.value) or "read-only" in str(info.value)


def _serve(env: dict[str, str], tmp_path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "allocator.cli", "serve", "--port", "1", "--workers", "0"],
        cwd=REPO, env={**CLEAN_ENV, "ALLOCATOR_DATABASE_URL":
                       f"sqlite:///{tmp_path / 'jobs.sqlite'}", **env},
        capture_output=True, text=True, timeout=120)


@pytest.mark.slow  # a CLI process each (~15 s on a loaded machine)
@pytest.mark.parametrize(("env", "names"), [
    ({"ALLOCATOR_READ_REQUIRES_TOKEN": "1"}, "ALLOCATOR_READ_REQUIRES_TOKEN"),
    ({"ALLOCATOR_API_TOKEN": "token "}, "ALLOCATOR_API_TOKEN"),
    ({"ALLOCATOR_DATABASE_URL": "sqlite:////proc/allocator-nope/jobs.sqlite"},
     "ALLOCATOR_DATABASE_URL"),
])
def test_serve_refuses_in_one_line(tmp_path: Path, env: dict[str, str], names: str) -> None:
    done = _serve(env, tmp_path)
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {names}"), done.stderr
    assert "Traceback" not in done.stderr and done.stdout == ""
