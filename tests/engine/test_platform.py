from __future__ import annotations

import os
import platform
import subprocess
import sys

import pytest

import engine
import engine._platform as P
from engine import configure_runtime, cpu_flags, cpu_model

CPUINFO = """processor\t: 0
model name\t: Example CPU 9000 @ 3.00GHz
flags\t\t: fpu sse2 avx2 avx512_vnni
vmx flags\t: ept vpid

processor\t: 1
model name\t: Example CPU 9000 @ 3.00GHz
flags\t\t: fpu sse2 avx2 avx512_vnni
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc only")
def test_mallopt_is_applied_on_glibc():
    assert configure_runtime() is True


def test_configure_runtime_is_skipped_when_the_environment_says_so():
    code = "from engine import configure_runtime; print(configure_runtime())"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, env={"ALLOCATOR_NO_MALLOPT": "1", "PATH": ""})
    assert out.stdout.strip() == "False"


def test_importing_the_engine_changes_no_process_state():
    """Warning filters and heap settings change only when `configure_runtime` is called."""
    code = (
        "import warnings, torch\n"  # torch adds filters of its own on import
        "before = list(warnings.filters)\n"
        "import engine, engine._kernels, engine._quantizer, engine._apply, engine._modules\n"
        "from engine._platform import configure_runtime\n"
        "assert warnings.filters == before, 'warning filters changed'\n"
        "assert configure_runtime.cache_info().currsize == 0, 'configure_runtime ran'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_cpu_flags_are_the_first_flags_line(tmp_path):
    path = tmp_path / "cpuinfo"
    path.write_text(CPUINFO, encoding="ascii")
    assert cpu_flags(str(path)) == {"fpu", "sse2", "avx2", "avx512_vnni"}


def test_cpu_facts_of_a_missing_cpuinfo(tmp_path):
    missing = str(tmp_path / "absent")
    assert cpu_flags(missing) == frozenset()
    assert cpu_model(missing) == (platform.processor() or platform.machine())


def test_cpu_model_is_the_model_name_line(tmp_path):
    path = tmp_path / "cpuinfo"
    path.write_text(CPUINFO, encoding="ascii")
    assert cpu_model(str(path)) == "Example CPU 9000 @ 3.00GHz"


@pytest.mark.skipif(not (sys.platform.startswith("linux")
                         and platform.machine() in ("x86_64", "AMD64")), reason="x86 Linux")
def test_cpu_flags_of_this_machine():
    assert "sse2" in cpu_flags()  # every x86-64 CPU has SSE2
    assert cpu_model()


@pytest.mark.parametrize(("flags", "vnni"), [
    ({"avx2"}, False), ({"avx2", "avx512_vnni"}, True), ({"avx_vnni"}, True),
    ({"amx_int8"}, True),
])
def test_has_vnni_reads_the_vnni_flags(monkeypatch, flags, vnni):
    monkeypatch.setattr(P, "cpu_flags", lambda: frozenset(flags))
    assert P.has_vnni() is vnni


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc heap")
def test_release_free_memory_hands_freed_heap_back():
    import torch

    if not engine.configure_runtime():
        pytest.skip("heap thresholds not raised here (no glibc, or ALLOCATOR_NO_MALLOPT)")
    big = torch.ones(64 << 20)  # 256 MB from the heap: below the raised mmap threshold
    del big
    held = _rss_bytes()
    assert engine.release_free_memory()
    assert _rss_bytes() < held - (128 << 20)
