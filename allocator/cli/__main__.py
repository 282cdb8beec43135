"""`python -m allocator.cli ...`: the same as the `allocator` console script."""

from __future__ import annotations

from allocator.cli import run

run()
