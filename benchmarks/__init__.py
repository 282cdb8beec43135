"""Benchmarks, each run from the repository root as `python -m benchmarks.<name>`."""

from __future__ import annotations
