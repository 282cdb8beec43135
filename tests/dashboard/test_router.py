"""The dashboard router alone: pages, static files, plotly.js from the package, no CDN."""

from __future__ import annotations

import re

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from api.dashboard import STATIC_DIR, plotly_js_path, router


@pytest.fixture(scope="module")
def client() -> TestClient:
    app = FastAPI()
    app.include_router(router)
    return TestClient(app)


def test_front_page_is_the_dashboard(client: TestClient) -> None:
    r = client.get("/")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/html")
    assert '<script type="module" src="/static/js/app.js">' in r.text
    assert 'id="token-input"' in r.text


def test_job_page_serves_the_same_single_page(client: TestClient) -> None:
    r = client.get("/ui/jobs/0123456789abcdef0123456789abcdef")
    assert r.status_code == 200
    assert r.text == client.get("/").text


@pytest.mark.parametrize(("path", "media_type"), [
    ("js/app.js", "text/javascript"), ("js/front.js", "text/javascript"),
    ("style.css", "text/css"),
])
def test_static_files_have_their_media_type(client: TestClient, path: str,
                                            media_type: str) -> None:
    r = client.get(f"/static/{path}")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith(media_type)
    assert r.text == (STATIC_DIR / path).read_text(encoding="utf-8")


def test_plotly_comes_from_the_installed_package(client: TestClient) -> None:
    path = plotly_js_path()
    assert path is not None and path.name == "plotly.min.js"
    r = client.get("/static/vendor/plotly.min.js")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/javascript")
    assert len(r.content) == path.stat().st_size > 1_000_000
    assert "max-age" in r.headers["cache-control"]


@pytest.mark.parametrize("path", ["nope.js", "..%2F_router.py", "js%2F..%2F..%2F__init__.py",
                                  "js", "vendor/other.js"])
def test_unknown_or_escaping_paths_are_json_404(client: TestClient, path: str) -> None:
    r = client.get(f"/static/{path}")
    assert r.status_code == 404
    body = r.json()
    assert body["field"] == "path"
    assert "no dashboard file" in body["detail"]


@pytest.mark.parametrize("path", ["../_router.py", "js/../../__init__.py"])
def test_dot_dot_paths_never_reach_source_files(client: TestClient, path: str) -> None:
    r = client.get(f"/static/{path}")
    assert r.status_code == 404
    assert "import" not in r.text


def test_static_files_load_nothing_from_other_hosts() -> None:
    # No CDN: every script, style and import is a path on this server.
    for path in STATIC_DIR.rglob("*"):
        if path.suffix not in {".html", ".js", ".css"}:
            continue
        text = path.read_text(encoding="utf-8")
        assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", text), path
        assert not re.search(r"""(import|from)\s*\(?\s*["'](https?:)?//""", text), path
        assert not re.search(r"url\(\s*[\"']?(https?:)?//", text), path


def test_es_module_imports_resolve_to_existing_files() -> None:
    for path in (STATIC_DIR / "js").glob("*.js"):
        for name in re.findall(r"""from\s+["']\./([\w.]+)["']""", path.read_text("utf-8")):
            assert (path.parent / name).is_file(), f"{path.name} imports missing {name}"
