"""What every export shares: its errors, its report, the check of the engine's quantized
layers against a quantized model, the fp16 tolerance of a read-back weight, and the atomic
publication of an output file or folder (nothing half-written is ever left at `out`).

Imports no torch at module level, so that `allocator.export` (target names and costs) loads
in the API process.
"""

from __future__ import annotations

import contextlib
import math
import os
import secrets
import shutil
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from engine import AllocatorError, BitConfig, InvalidSpecError, UnknownLayerError

if TYPE_CHECKING:
    import torch
    from torch import nn

# A float16 significand has 11 bits: rounding a value to it moves it by at most 2**-11 of its
# magnitude (normal range); subnormals move by at most half their step, 2**-25.
FP16_REL = 2.0**-11
FP16_ABS = 2.0**-25
TMP_SUFFIX = ".tmp"


class ExportError(AllocatorError):
    """Raised when an export cannot be written, or when the target's own library reads it
    back differently from what the engine measured (the message names the layer or tensor);
    nothing is left at the output path."""


class ExportCheckError(ExportError):
    """Raised when the read-back check fails: the target's library decodes a layer (or
    tensor) to weights further from the engine's than fp16 rounding explains."""


class UnsupportedExportError(InvalidSpecError):
    """Raised before anything is written when the model, the config or a layer asks for
    something the format cannot hold (an architecture, a layer kind, a scheme or shape)."""


class TargetWidthError(UnsupportedExportError):
    """Raised when a layer is given a bit-width its target cannot store; the message names
    the layer, the width and the target."""


@dataclass(frozen=True)
class LayerExport:
    """How one quantized layer was written.

    Attributes:
        bits: Weight bits.
        scheme: The engine scheme's label (e.g. `int4-sym-g32`).
        format: The format's own name for it (`Q4_0`, `pack-quantized`, ...).
        size_bytes: Bytes of its stored weight tensors in the file (codes, scales, zero
            points and their bookkeeping; the float bias is not counted).
    """

    bits: int
    scheme: str
    format: str
    size_bytes: int

    def to_dict(self) -> dict[str, Any]:
        return {"bits": self.bits, "scheme": self.scheme, "format": self.format,
                "size_bytes": self.size_bytes}


@dataclass(frozen=True)
class ExportReport:
    """What an export wrote and how its check went.

    Attributes:
        format: `compressed-tensors`, `gguf` or `onnx`.
        path: The published file or folder.
        size_bytes: Bytes on disk of everything written.
        layers: Quantized layer name -> how it was stored.
        check: The read-back check: the library and version that read it, `passed`,
            `layers_checked`, `max_abs_diff` (largest |library - engine| over the quantized
            layers' weights) and `max_tolerance_ratio` (largest diff / allowed fp16
            rounding, <= 1); formats may add more (GGUF: `float_max_abs_diff`).
        notes: Things a deployer should know (e.g. a runtime's fused projections that got
            different schemes).
    """

    format: str
    path: Path
    size_bytes: int
    layers: Mapping[str, LayerExport]
    check: Mapping[str, Any]
    notes: tuple[str, ...] = ()
    extra: Mapping[str, Any] = field(default_factory=dict)

    @property
    def quantized_bytes(self) -> int:
        """Bytes of the quantized layers' stored weights."""
        return sum(x.size_bytes for x in self.layers.values())

    def to_dict(self) -> dict[str, Any]:
        return {"format": self.format, "path": str(self.path), "size_bytes": self.size_bytes,
                "quantized_bytes": self.quantized_bytes,
                "layers": {n: x.to_dict() for n, x in self.layers.items()},
                "check": dict(self.check), "notes": list(self.notes), **dict(self.extra)}


def quantized_layers_of(qmodel: nn.Module, config: BitConfig) -> dict[str, Any]:
    """The engine's quantized layers of `qmodel` that `config.bits` names, in model order,
    after checking that the two agree (same names, same widths).

    Raises:
        UnknownLayerError: `config` names a layer that is not quantized in `qmodel`.
        InvalidSpecError: A layer's width differs from the config's, or `qmodel` quantizes
            a layer the config does not name.
    """
    import engine

    layers = engine.quantized_layers(qmodel)
    unknown = [n for n in config.bits if n not in layers]
    if unknown:
        known = ", ".join(list(layers)[:8]) + (", ..." if len(layers) > 8 else "")
        raise UnknownLayerError(
            f"`bits` names layer(s) the quantized model does not have: {unknown[:5]}; its "
            f"quantized layers are: {known or 'none'}.")
    extra = [n for n in layers if n not in config.bits]
    if extra:
        raise InvalidSpecError(f"the quantized model has layer(s) the config does not name: "
                               f"{extra[:5]}; export the config it was quantized with.")
    for name, bits in config.bits.items():
        if layers[name].bits != bits:
            raise InvalidSpecError(f"layer {name!r} is {layers[name].bits}-bit in the "
                                   f"quantized model but `bits[{name!r}]` is {bits}.")
    return {n: m for n, m in layers.items() if n in config.bits}


def check_float_bias(name: str, float_module: nn.Module, layer: Any, fmt: str) -> None:
    """A format that keeps the float architecture has a bias slot only where the float
    layer had one; bias correction may have given the quantized layer a new bias."""
    if getattr(float_module, "bias", None) is None and layer.bias is not None:
        raise UnsupportedExportError(
            f"layer {name!r}: bias correction gave it a bias the float model has no slot "
            f"for in a {fmt} checkpoint; quantize without `bias_correction`.")


def fp16_tolerance(layer: Any) -> torch.Tensor:
    """Largest |read-back - engine| that fp16 storage of a layer's scales (and zero-point
    offsets) and of the decoded weight explains, per weight element, as (N, K).

    The bound is 2 x 2**-11 of the largest magnitude a group's grid reaches (its scale
    times the largest code distance from its zero, which for a stored minimum also counts
    the minimum's own steps), plus that many fp16 subnormal half-steps (tiny scales).
    """
    import torch

    scheme = layer.scheme
    scales = layer.scales.float().abs()
    # codes up to qmax, and (asymmetric) a zero point up to qmax steps away
    distance = scheme.offset if scheme.symmetric else 2 * scheme.qmax
    bound = scales * distance * (2 * FP16_REL) + FP16_ABS * (distance + 1)
    n, k = layer.out_features, layer.reduction_size
    size = scheme.effective_group_size(k)
    full = bound.repeat_interleave(size, dim=1)[:, :k]
    return full.reshape(n, k).to(torch.float32)


def compare_weight(what: str, decoded: torch.Tensor, layer: Any,
                   reference: torch.Tensor | None = None) -> tuple[float, float]:
    """Max |decoded - engine| of a layer and its ratio to the fp16 tolerance (`reference`:
    the engine's dequantized weight when the caller has it already).

    Raises:
        ExportCheckError: Shapes differ, or some weight is off by more than the tolerance
            (the message names `what`, the largest difference and where).
    """

    if reference is None:
        reference = layer.dequantized_weight()
    reference = reference.reshape(layer.out_features, -1).float()
    got = decoded.detach().reshape(decoded.shape[0], -1).float().cpu()
    if tuple(got.shape) != tuple(reference.shape):
        raise ExportCheckError(f"{what}: read back with shape {tuple(got.shape)}, the "
                               f"engine's weight is {tuple(reference.shape)}.")
    diff = (got - reference).abs()
    worst = float(diff.max()) if diff.numel() else 0.0
    if not math.isfinite(worst):  # a NaN or infinity anywhere makes the maximum one
        raise ExportCheckError(f"{what}: read back with non-finite weights.")
    excess = diff / fp16_tolerance(layer)
    ratio = float(excess.max()) if diff.numel() else 0.0
    if ratio > 1.0:
        tol = fp16_tolerance(layer)
        idx = int(excess.argmax())
        row, col = divmod(idx, reference.shape[1])
        raise ExportCheckError(
            f"{what}: the library reads weight [{row}, {col}] as {float(got[row, col]):.8g}, "
            f"the engine computed {float(reference[row, col]):.8g} (difference "
            f"{float(diff[row, col]):.3g}, fp16 rounding allows {float(tol[row, col]):.3g}).")
    return worst, ratio


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def tree_size_bytes(path: Path) -> int:
    """Bytes of a file, or of every file under a folder."""
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


@contextlib.contextmanager
def atomic_output(out: str | Path, *, folder: bool) -> Iterator[Path]:
    """Yields a temporary sibling of `out` to write into; renames it to `out` when the
    block ends without an exception and removes it otherwise.

    An existing file at `out` is replaced (file outputs); an output folder must not exist
    yet or be empty, since replacing a user's folder could destroy unrelated files.

    Raises:
        InvalidSpecError: `out` is an existing folder (file output), a non-empty folder
            (folder output), or a file (folder output); or its parent cannot be created.
    """
    path = Path(out)
    if folder:
        if path.exists() and (not path.is_dir() or any(path.iterdir())):
            kind = "folder" if path.is_dir() else "file"
            raise InvalidSpecError(f"`out` `{path}` is an existing {kind}"
                                   f"{' that is not empty' if kind == 'folder' else ''}; "
                                   "give a new or empty folder.")
    elif path.is_dir():
        raise InvalidSpecError(f"`out` `{path}` is a folder; give a file path.")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise InvalidSpecError(f"cannot create the folder of `out` `{path}`: "
                               f"{e.strerror or e}.") from e
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}{TMP_SUFFIX}")
    try:
        if folder:
            tmp.mkdir()
        yield tmp
        if folder and path.is_dir():
            path.rmdir()  # empty (checked above); a rename cannot replace a folder
        tmp.replace(path)
    except OSError as e:
        raise ExportError(f"cannot write `{path}`: {e.strerror or e}.") from e
    finally:
        if tmp.exists() or tmp.is_symlink():
            _remove(tmp)
