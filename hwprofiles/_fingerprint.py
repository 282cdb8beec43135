"""`DeviceFingerprint`: what a latency table was measured on, and how to tell it differs.

Kernel times depend on the CPU model, its ISA extensions (VNNI and AMX decide which int8
kernels are fast), the torch build (its kernels) and the thread count; a table measured
elsewhere is only a guess here, so using one warns (`FingerprintMismatchWarning`).

A table measured in another runtime than the engine (ONNX Runtime: `runtime` and
`runtime_version`) times other kernels altogether: using it for another runtime, or with
another version of its runtime, is refused (`RuntimeMismatchError`), never a warning.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass, field
from typing import Any

import torch

from engine import ENGINE_VERSION, InvalidSpecError, cpu_flags, cpu_model

# Runtimes other than the engine that tables can be measured in, with how to read their
# version (imported only when asked).
RUNTIMES = ("onnxruntime",)

# The ISA flags that change which kernels run or how fast: recorded when present.
ISA_FLAGS = ("avx2", "fma", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni", "avx512_bf16",
             "amx_bf16", "amx_int8", "amx_tile", "asimd", "sve")
# Fields whose difference makes a table's times unreliable here (`cores` alone does not:
# the thread count is what the kernels use, and it is compared).
COMPARED = ("cpu_model", "isa_flags", "torch_version", "torch_threads", "gpu", "runtime",
            "runtime_version", "engine_version", "int8_paths")


class FingerprintMismatchWarning(UserWarning):
    """A latency table is used on a device other than the one it was measured on."""


class RuntimeMismatchError(InvalidSpecError):
    """Raised when a latency table measured in one runtime (the engine, or ONNX Runtime of
    some version) is used for another runtime or another version of it: its times are of
    other kernels. Re-profile in the runtime that will run the model."""


@functools.cache
def _int8_paths() -> tuple[tuple[str, Any], ...]:
    """The engine's int8 probe results on this CPU (probed once per process)."""
    from engine._int8_paths import int8_capabilities

    return tuple(sorted(int8_capabilities().items()))


def runtime_version(runtime: str) -> str:
    """The installed version of a runtime in `RUNTIMES`.

    Raises:
        InvalidSpecError: Not a known runtime.
        MissingDependencyError: The runtime is not installed.
    """
    if runtime not in RUNTIMES:
        raise InvalidSpecError(f"`runtime` must be one of {RUNTIMES} or null (the engine), "
                               f"got {runtime!r}.")
    try:
        import onnxruntime  # type: ignore[import-untyped]
    except ImportError as e:
        from engine import MissingDependencyError

        raise MissingDependencyError("the `onnxruntime` runtime is not installed; install "
                                     "the `onnx` extra.") from e
    return str(onnxruntime.__version__)


@dataclass(frozen=True)
class DeviceFingerprint:
    """The device a table was measured on.

    Attributes:
        cpu_model: CPU model name (`/proc/cpuinfo`).
        cores: Logical CPUs the OS reports.
        isa_flags: The subset of `ISA_FLAGS` the CPU has, sorted.
        torch_version: `torch.__version__` of the process that measured.
        torch_threads: `torch.get_num_threads()` while measuring.
        gpu: CUDA device name when CUDA was available, else None.
        runtime: The runtime whose kernels were timed: None for the engine (PyTorch),
            "onnxruntime" for ONNX Runtime (CPU); its threads are `torch_threads`.
        runtime_version: That runtime's version (None for the engine: `torch_version`).
        engine_version: `engine.ENGINE_VERSION` of an engine table (None: another runtime,
            or a table from before it was recorded).
        int8_paths: What the engine's int8 probes found on this CPU
            (`engine._int8_paths.int8_capabilities`: VNNI, the exact activation ranges of
            fbgemm and oneDNN, ...), which decide the kernel each int8 layer runs; None as
            for `engine_version`.
    """

    cpu_model: str
    cores: int
    isa_flags: tuple[str, ...] = field(default_factory=tuple)
    torch_version: str = ""
    torch_threads: int = 1
    gpu: str | None = None
    runtime: str | None = None
    runtime_version: str | None = None
    engine_version: str | None = None
    int8_paths: tuple[tuple[str, Any], ...] | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.cpu_model, str):
            raise InvalidSpecError(f"`device.cpu_model` must be a string, got {self.cpu_model!r}.")
        for name in ("cores", "torch_threads"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise InvalidSpecError(f"`device.{name}` must be an integer >= 1, got {value!r}.")
        if isinstance(self.isa_flags, str) or not all(isinstance(f, str) for f in self.isa_flags):
            raise InvalidSpecError(
                f"`device.isa_flags` must be a list of strings, got {self.isa_flags!r}.")
        object.__setattr__(self, "isa_flags", tuple(sorted(set(self.isa_flags))))
        if not isinstance(self.torch_version, str):
            raise InvalidSpecError(
                f"`device.torch_version` must be a string, got {self.torch_version!r}.")
        if self.gpu is not None and not isinstance(self.gpu, str):
            raise InvalidSpecError(f"`device.gpu` must be a string or null, got {self.gpu!r}.")
        if self.runtime is not None and self.runtime not in RUNTIMES:
            raise InvalidSpecError(f"`device.runtime` must be one of {RUNTIMES} or null, "
                                   f"got {self.runtime!r}.")
        if (self.runtime is None) != (self.runtime_version is None) or not isinstance(
                self.runtime_version, str | None):
            raise InvalidSpecError(
                f"`device.runtime_version` must be a string exactly when `device.runtime` is "
                f"set, got {self.runtime_version!r} for runtime {self.runtime!r}.")
        if self.engine_version is not None and not isinstance(self.engine_version, str):
            raise InvalidSpecError(f"`device.engine_version` must be a string or null, got "
                                   f"{self.engine_version!r}.")
        if self.int8_paths is not None:
            items = (self.int8_paths.items() if isinstance(self.int8_paths, dict)
                     else self.int8_paths)
            try:
                paths = tuple(sorted((str(k), v) for k, v in items))
            except (TypeError, ValueError):
                raise InvalidSpecError(f"`device.int8_paths` must be a mapping, got "
                                       f"{self.int8_paths!r}.") from None
            if not all(isinstance(v, bool | int | str) for _, v in paths):
                raise InvalidSpecError(f"`device.int8_paths` values must be booleans, integers "
                                       f"or strings, got {self.int8_paths!r}.")
            object.__setattr__(self, "int8_paths", paths)

    @classmethod
    def current(cls, runtime: str | None = None) -> DeviceFingerprint:
        """The fingerprint of this process's device (thread count as torch uses it now),
        for the engine or for `runtime` (its installed version; a CPU runtime: no GPU)."""
        gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
        version = None if runtime is None else runtime_version(runtime)
        engine_side = runtime is None
        return cls(cpu_model=cpu_model(), cores=os.cpu_count() or 1,
                   isa_flags=tuple(f for f in ISA_FLAGS if f in cpu_flags()),
                   torch_version=torch.__version__, torch_threads=torch.get_num_threads(),
                   gpu=gpu if engine_side else None, runtime=runtime,
                   runtime_version=version,
                   engine_version=ENGINE_VERSION if engine_side else None,
                   int8_paths=_int8_paths() if engine_side else None)

    @property
    def runtime_label(self) -> str:
        """"the engine (torch X)" or "onnxruntime X"."""
        if self.runtime is None:
            return f"the engine (torch {self.torch_version})"
        return f"{self.runtime} {self.runtime_version}"

    def check_runtime(self, other: DeviceFingerprint) -> None:
        """Refuses a table (this fingerprint) for use in `other`'s runtime.

        Raises:
            RuntimeMismatchError: The runtimes, or their versions, differ.
        """
        if (self.runtime, self.runtime_version) != (other.runtime, other.runtime_version):
            raise RuntimeMismatchError(
                f"latency table was measured in {self.runtime_label}, but it is used for "
                f"{other.runtime_label}; its kernel times do not hold there: re-profile.")

    @property
    def short_name(self) -> str:
        """A file-name-safe short CPU name, e.g. `xeon-t2` (model words, threads)."""
        words = [w for w in self.cpu_model.replace("(R)", "").replace("(TM)", "").split()
                 if w.lower() not in {"intel", "amd", "processor", "cpu", "core"}]
        stem = "-".join(words[:3]).lower() or "cpu"
        stem = "".join(c if c.isalnum() or c in "-." else "-" for c in stem).strip("-")
        runtime = "" if self.runtime is None else f"-{self.runtime}"
        return f"{stem}-t{self.torch_threads}" + ("-cuda" if self.gpu else "") + runtime

    def identity(self) -> dict[str, Any]:
        """The fields that change kernel times (`COMPARED`), as plain JSON values: what a
        cache key of a table measured on this device records."""
        out = {}
        for name in COMPARED:
            value = getattr(self, name)
            out[name] = (list(value) if name == "isa_flags"
                         else dict(value) if name == "int8_paths" and value is not None
                         else value)
        return out

    def differences(self, other: DeviceFingerprint) -> list[str]:
        """Human-readable differences in the fields that change kernel times."""
        out = []
        for name in COMPARED:
            mine, theirs = getattr(self, name), getattr(other, name)
            if mine != theirs:
                if name == "isa_flags":
                    gone, new = sorted(set(mine) - set(theirs)), sorted(set(theirs) - set(mine))
                    out.append(f"isa_flags (table has {gone or 'none'} extra, this device "
                               f"{new or 'none'} extra)")
                else:
                    out.append(f"{name} (table {mine!r}, this device {theirs!r})")
        return out

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"cpu_model": self.cpu_model, "cores": self.cores,
                               "isa_flags": list(self.isa_flags),
                               "torch_version": self.torch_version,
                               "torch_threads": self.torch_threads, "gpu": self.gpu}
        if self.runtime is not None:  # engine tables keep their form
            out |= {"runtime": self.runtime, "runtime_version": self.runtime_version}
        if self.engine_version is not None:
            out["engine_version"] = self.engine_version
        if self.int8_paths is not None:
            out["int8_paths"] = dict(self.int8_paths)
        return out
