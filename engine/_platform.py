"""Facts about the machine the kernels run on, and the process setting they need.

Nothing here runs on import: `configure_runtime` changes the process (glibc's heap
thresholds) only when called, which the engine's entry points (`apply`, `quantize`,
`discover_layers`, `time_call`) and the front doors (CLI, workers) do.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import os
import platform
import sys

CPUINFO = "/proc/cpuinfo"
_M_TRIM_THRESHOLD = -1  # glibc mallopt parameter numbers
_M_MMAP_THRESHOLD = -3
_HEAP_THRESHOLD_BYTES = 1 << 30


def _cpuinfo_field(key: str, cpuinfo: str) -> str | None:
    """The value of the first `key : value` line of a cpuinfo file; None where absent."""
    try:
        with open(cpuinfo, encoding="ascii", errors="replace") as f:
            for line in f:
                name, sep, value = line.partition(":")
                if sep and name.strip() == key:
                    return value.strip()
    except OSError:
        pass
    return None


@functools.cache
def cpu_flags(cpuinfo: str = CPUINFO) -> frozenset[str]:
    """ISA flags of the CPU (the `flags` line of Linux's cpuinfo); empty where unknown."""
    flags = _cpuinfo_field("flags", cpuinfo)
    return frozenset(flags.split()) if flags else frozenset()


def has_vnni() -> bool:
    """True when the CPU has VNNI, so int8 kernels need no reduced activation range."""
    return bool(cpu_flags() & {"avx512_vnni", "avx_vnni", "amx_int8"})


def cpu_model(cpuinfo: str = CPUINFO) -> str:
    """The CPU's model name (Linux's cpuinfo), else what `platform` knows of it."""
    return (_cpuinfo_field("model name", cpuinfo)
            or platform.processor() or platform.machine())


@functools.cache
def configure_runtime() -> bool:
    """Prepares this process for the kernels; idempotent (the first call does the work).

    Raises glibc's mmap and trim thresholds to 1 GiB so large temporaries reuse heap
    memory. Freshly mmapped 64 MiB blocks are page-faulted on every call; keeping them in
    the heap made such allocations 8-9x cheaper here. The trim threshold must rise too, or
    freed blocks at the top of the heap go back to the OS and fault in again (a 24 MiB
    temporary: 2.2 ms by default, 1.6 ms with the mmap threshold alone, 0.76 ms with both).

    Returns:
        True when the thresholds were raised; False where glibc is absent or the
        environment sets `ALLOCATOR_NO_MALLOPT`.
    """
    if not sys.platform.startswith("linux") or os.environ.get("ALLOCATOR_NO_MALLOPT"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        ok = libc.mallopt(_M_MMAP_THRESHOLD, _HEAP_THRESHOLD_BYTES)
        return bool(ok and libc.mallopt(_M_TRIM_THRESHOLD, _HEAP_THRESHOLD_BYTES))
    except (OSError, AttributeError):
        return False


def release_free_memory() -> bool:
    """Hands the heap's free pages back to the OS (glibc's `malloc_trim`).

    With `configure_runtime`'s thresholds, memory a finished stage freed (a statistics
    chunk, a batch of temporaries) stays mapped in the process; long jobs call this between
    stages so that memory one stage no longer needs does not add to the next one's peak.
    Costs a few milliseconds.

    Returns:
        True when memory was handed back; False where glibc is absent or nothing was free.
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return bool(libc.malloc_trim(0))
    except (OSError, AttributeError):
        return False
