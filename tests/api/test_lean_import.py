"""The API process starts and answers without importing torch (the workers do)."""

from __future__ import annotations

import subprocess
import sys
import textwrap

from tests.api.conftest import REPO


def test_api_answers_without_torch(tmp_path) -> None:
    code = textwrap.dedent(f"""
        import sys
        from fastapi.testclient import TestClient
        from api import Settings, create_app
        app = create_app(Settings(database_url="sqlite:///{tmp_path}/j.sqlite", workers=0),
                         start_workers=False)
        with TestClient(app) as c:
            for path in ("/health", "/models", "/solvers", "/jobs", "/metrics"):
                assert c.get(path).status_code == 200, path
            doc = {{"format": "allocator.problem/1", "bits": [2, 4, 8], "layers": [
                {{"name": "a", "params": 100, "macs": 1000,
                  "omega": {{"2": 1.0, "4": 0.1, "8": 0.01}}}},
                {{"name": "b", "params": 300, "macs": 3000,
                  "omega": {{"2": 2.0, "4": 0.3, "8": 0.02}}}}]}}
            r = c.post("/solve", json={{"problem": doc, "budgets": ["4bits"]}})
            assert r.status_code == 200, r.text
            r = c.post("/jobs", json={{"model": "digits-cnn", "budgets": ["4bits"]}})
            assert r.status_code == 202, r.text
            import allocator.cli  # the `allocator serve` front door, too
        heavy = [m for m in ("torch", "zoo", "sensitivity", "hwprofiles") if m in sys.modules]
        assert not heavy, heavy
        print("lean")
    """)
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "lean" in proc.stdout
