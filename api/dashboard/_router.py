"""Routes of the dashboard: the single page at `/` and `/ui/jobs/{id}`, and its static files."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse, JSONResponse, Response

STATIC_DIR = Path(__file__).resolve().parent / "static"
PLOTLY_ROUTE = "vendor/plotly.min.js"
_MEDIA_TYPES = {".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8",
                ".css": "text/css; charset=utf-8", ".svg": "image/svg+xml",
                ".png": "image/png", ".json": "application/json"}
# Our own files change with the code: the browser revalidates them (ETag) on every load.
# plotly.js changes only with the installed package: cached for a day.
_NO_CACHE = {"Cache-Control": "no-cache"}
_LONG_CACHE = {"Cache-Control": "public, max-age=86400"}

router = APIRouter(tags=["dashboard"], include_in_schema=False)


def plotly_js_path() -> Path | None:
    """The `plotly.min.js` shipped by the installed `plotly` package, or None without it."""
    # find_spec does not execute plotly/__init__.py, so the lookup costs no import.
    spec = importlib.util.find_spec("plotly")
    if spec is None or not spec.submodule_search_locations:
        return None
    for folder in spec.submodule_search_locations:
        path = Path(folder) / "package_data" / "plotly.min.js"
        if path.is_file():
            return path
    return None


def _not_found(path: str) -> JSONResponse:
    return JSONResponse(status_code=404, content={
        "detail": f"no dashboard file `{path}`", "field": "path", "value": path})


def _page() -> FileResponse:
    return FileResponse(STATIC_DIR / "index.html", media_type=_MEDIA_TYPES[".html"],
                        headers=_NO_CACHE)


@router.get("/", response_class=FileResponse)
def read_dashboard() -> FileResponse:
    """The dashboard: job list and submit form."""
    return _page()


@router.get("/ui/jobs/{job_id}", response_class=FileResponse)
def read_job_page(job_id: str) -> FileResponse:
    """The page of one job (the page itself reads the job from the JSON API)."""
    return _page()


@router.get("/static/{path:path}")
def read_static(path: str) -> Response:
    """A file of the dashboard (HTML, CSS, ES modules) or the vendored plotly.js."""
    if path == PLOTLY_ROUTE:
        plotly_js = plotly_js_path()
        if plotly_js is None:
            return JSONResponse(status_code=501, content={
                "detail": "plotly.js is not available: install the `service` extra "
                          "(the `plotly` package ships it)", "field": None, "value": None})
        return FileResponse(plotly_js, media_type=_MEDIA_TYPES[".js"], headers=_LONG_CACHE)
    target = (STATIC_DIR / path).resolve()
    if not target.is_relative_to(STATIC_DIR) or not target.is_file():
        return _not_found(path)
    media_type = _MEDIA_TYPES.get(target.suffix, "application/octet-stream")
    return FileResponse(target, media_type=media_type, headers=_NO_CACHE)
