"""The web dashboard: job list, Pareto fronts and per-layer bit maps, served by the API.

The service's app factory includes `router`; the pages are static HTML and ES modules that
read the JSON API, and plotly.js is served from the installed `plotly` package (no CDN).
"""

from __future__ import annotations

from api.dashboard._router import STATIC_DIR, plotly_js_path, router

__all__ = ["STATIC_DIR", "plotly_js_path", "router"]
