"""Facts about the machine the kernels run on, and process-wide settings they need."""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import os
import platform
import sys
import warnings

_M_TRIM_THRESHOLD = -1  # glibc mallopt parameter numbers
_M_MMAP_THRESHOLD = -3


@functools.cache
def cpu_flags() -> frozenset[str]:
    """ISA flags of the CPU (Linux /proc/cpuinfo); empty where unknown."""
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("flags"):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def has_vnni() -> bool:
    """True when the CPU has VNNI, so int8 kernels need no reduced activation range."""
    return bool(cpu_flags() & {"avx512_vnni", "avx_vnni", "amx_int8"})


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


@functools.cache
def configure_allocator() -> bool:
    """Raises glibc's mmap and trim thresholds to 1 GiB so large temporaries reuse heap memory.

    Freshly mmapped 64 MiB blocks are page-faulted on every call; keeping them in the heap
    made such allocations 8-9x cheaper here. The trim threshold must rise too, or freed
    blocks at the top of the heap go back to the OS and fault in again (a 24 MiB
    temporary: 2.2 ms by default, 1.6 ms with the mmap threshold alone, 0.76 ms with both).
    A no-op (False) where glibc is absent.
    """
    if not sys.platform.startswith("linux") or os.environ.get("ALLOCATOR_NO_MALLOPT"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        ok = libc.mallopt(_M_MMAP_THRESHOLD, 1 << 30)
        return bool(ok and libc.mallopt(_M_TRIM_THRESHOLD, 1 << 30))
    except (OSError, AttributeError):
        return False


def silence_torch_ao_deprecations() -> None:
    """Keeps torch's quantized-tensor deprecation warnings off users' terminals.

    The int8 kernels are reached through torch's quantized ops, which warn that the
    quantized tensor API is deprecated; the warning is for torch's developers, not ours.
    """
    for pattern in (
        r".*torch\.quantize_per_tensor.*deprecated.*",
        r".*torch\.ao\.quantization.*deprecated.*",
        r".*quantized tensor.*deprecated.*",
        r".*deprecated.*torch\.ao.*",
    ):
        warnings.filterwarnings("ignore", message=pattern)
    warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"torch\.ao\..*")


@functools.cache
def configure() -> None:
    """Sets up the process for the kernels once: quiet deprecations, heap thresholds."""
    silence_torch_ao_deprecations()
    configure_allocator()
