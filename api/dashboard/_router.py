"""Routes of the dashboard: the single page at `/` and `/ui/jobs/{id}`, its static files
under `/static` (Starlette's `StaticFiles`), and plotly.js from the installed package."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException
from starlette.types import Scope

STATIC_DIR = Path(__file__).resolve().parent / "static"
# Our own files change with the code: the browser revalidates them (ETag) on every load.
# plotly.js changes only with the installed package: cached for a day.
_NO_CACHE = "no-cache"
_LONG_CACHE = "public, max-age=86400"
# RFC 9239's type for JavaScript; without /etc/mime.types Python 3.11 guesses
# application/javascript.
_JS_TYPE = "text/javascript; charset=utf-8"

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


class DashboardFiles(StaticFiles):
    """`StaticFiles` that revalidate on every load, serve ES modules as text/javascript and
    answer a missing file with the service's JSON error."""

    async def get_response(self, path: str, scope: Scope) -> Response:
        try:
            return await super().get_response(path, scope)
        except HTTPException as e:
            if e.status_code != 404:
                raise
            return _not_found(path)

    def file_response(self, full_path: str | os.PathLike[str], stat_result: os.stat_result,
                      scope: Scope, status_code: int = 200) -> Response:
        response = super().file_response(full_path, stat_result, scope, status_code)
        response.headers["Cache-Control"] = _NO_CACHE
        if response.status_code != 304 and str(full_path).endswith(".js"):
            response.headers["Content-Type"] = _JS_TYPE
        return response


def _page() -> FileResponse:
    return FileResponse(STATIC_DIR / "index.html", headers={"Cache-Control": _NO_CACHE})


@router.get("/", response_class=FileResponse)
def read_dashboard() -> FileResponse:
    """The dashboard: job list and submit form."""
    return _page()


@router.get("/ui/jobs/{job_id}", response_class=FileResponse)
def read_job_page(job_id: str) -> FileResponse:
    """The page of one job (the page itself reads the job from the JSON API)."""
    return _page()


# Before the /static mount, which would otherwise answer this path with a 404.
@router.get("/static/vendor/plotly.min.js", response_class=FileResponse)
def read_plotly() -> Response:
    """plotly.js from the installed `plotly` package (no CDN)."""
    plotly_js = plotly_js_path()
    if plotly_js is None:
        return JSONResponse(status_code=501, content={
            "detail": "plotly.js is not available: install the `service` extra "
                      "(the `plotly` package ships it)", "field": None, "value": None})
    return FileResponse(plotly_js, media_type=_JS_TYPE,
                        headers={"Cache-Control": _LONG_CACHE})


router.mount("/static", DashboardFiles(directory=STATIC_DIR), name="static")
