"""The REST job service and dashboard.

`create_app(settings)` builds the FastAPI app; `Settings` reads the `ALLOCATOR_*`
environment. Neither imports torch: jobs run in worker processes.
"""

from __future__ import annotations

from api._app import create_app
from api._settings import Settings

__all__ = ["Settings", "create_app"]
