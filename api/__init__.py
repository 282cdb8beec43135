"""The REST job service and dashboard.

`create_app(settings)` builds the FastAPI app; `load_settings()` reads and checks the
`ALLOCATOR_*` environment (`SettingsError`: one line naming the variable). Neither
imports torch: jobs run in worker processes.
"""

from __future__ import annotations

from api._app import create_app
from api._db import open_database
from api._settings import Settings, SettingsError, load_settings

__all__ = ["Settings", "SettingsError", "create_app", "load_settings", "open_database"]
