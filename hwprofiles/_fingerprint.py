"""`DeviceFingerprint`: what a latency table was measured on, and how to tell it differs.

Kernel times depend on the CPU model, its ISA extensions (VNNI and AMX decide which int8
kernels are fast), the torch build (its kernels) and the thread count; a table measured
elsewhere is only a guess here, so using one warns (`FingerprintMismatchWarning`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

import torch

from engine import InvalidSpecError, cpu_flags, cpu_model

# The ISA flags that change which kernels run or how fast: recorded when present.
ISA_FLAGS = ("avx2", "fma", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni", "avx512_bf16",
             "amx_bf16", "amx_int8", "amx_tile", "asimd", "sve")
# Fields whose difference makes a table's times unreliable here (`cores` alone does not:
# the thread count is what the kernels use, and it is compared).
COMPARED = ("cpu_model", "isa_flags", "torch_version", "torch_threads", "gpu")


class FingerprintMismatchWarning(UserWarning):
    """A latency table is used on a device other than the one it was measured on."""


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
    """

    cpu_model: str
    cores: int
    isa_flags: tuple[str, ...] = field(default_factory=tuple)
    torch_version: str = ""
    torch_threads: int = 1
    gpu: str | None = None

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

    @classmethod
    def current(cls) -> DeviceFingerprint:
        """The fingerprint of this process's device (thread count as torch uses it now)."""
        gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
        return cls(cpu_model=cpu_model(), cores=os.cpu_count() or 1,
                   isa_flags=tuple(f for f in ISA_FLAGS if f in cpu_flags()),
                   torch_version=torch.__version__, torch_threads=torch.get_num_threads(),
                   gpu=gpu)

    @property
    def short_name(self) -> str:
        """A file-name-safe short CPU name, e.g. `xeon-t2` (model words, threads)."""
        words = [w for w in self.cpu_model.replace("(R)", "").replace("(TM)", "").split()
                 if w.lower() not in {"intel", "amd", "processor", "cpu", "core"}]
        stem = "-".join(words[:3]).lower() or "cpu"
        stem = "".join(c if c.isalnum() or c in "-." else "-" for c in stem).strip("-")
        return f"{stem}-t{self.torch_threads}" + ("-cuda" if self.gpu else "")

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
        return {"cpu_model": self.cpu_model, "cores": self.cores,
                "isa_flags": list(self.isa_flags), "torch_version": self.torch_version,
                "torch_threads": self.torch_threads, "gpu": self.gpu}
