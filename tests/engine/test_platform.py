from __future__ import annotations

import sys

import pytest

from engine._platform import configure_allocator, cpu_flags


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc only")
def test_mallopt_is_applied_on_glibc():
    assert configure_allocator() is True


def test_cpu_flags_is_a_set():
    assert isinstance(cpu_flags(), frozenset)
