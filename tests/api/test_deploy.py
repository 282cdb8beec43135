"""Deployment files: the compose file is valid and wires the service the way the code reads it."""

from __future__ import annotations

import shutil
import subprocess

import pytest
import yaml

from tests.api.conftest import REPO


def _compose_cmd() -> list[str] | None:
    docker = shutil.which("docker")
    if docker and subprocess.run([docker, "compose", "version"], capture_output=True,
                                 check=False).returncode == 0:
        return [docker, "compose"]
    legacy = shutil.which("docker-compose")
    return [legacy] if legacy else None


def test_compose_config_is_valid() -> None:
    cmd = _compose_cmd()
    if cmd is None:
        pytest.skip("neither `docker compose` nor `docker-compose` is installed")
    proc = subprocess.run([*cmd, "-f", str(REPO / "docker-compose.yml"), "config", "-q"],
                          cwd=REPO, capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr


def test_compose_services_and_settings() -> None:
    doc = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    services = doc["services"]
    assert {"api", "worker", "postgres", "redis"} <= set(services)
    for name in ("api", "worker"):
        env = services[name]["environment"]
        assert env["ALLOCATOR_DATABASE_URL"].startswith("postgresql+psycopg://")
        assert env["ALLOCATOR_BROKER_URL"].startswith("redis://redis:6379")
    assert services["api"]["build"] == "."
    assert services["worker"]["image"] == services["api"]["image"]
    assert services["worker"]["command"][:2] == ["allocator", "worker"]
    assert "service_healthy" in str(services["api"]["depends_on"])
    dockerfile = (REPO / "Dockerfile").read_text()
    assert '"allocator", "serve"' in dockerfile and "torch==2.13.0" in dockerfile
