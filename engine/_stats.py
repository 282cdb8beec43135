"""Calibration statistics of layer inputs, streamed through forward hooks.

For each layer: the sum of x xᵀ (the GPTQ / Hessian proxy H = 2 XᵀX / N) and the sum of x
(for bias correction), in float64, grouped like the layer's weight: a Linear is one
problem over its K input features; a Conv2d is one problem per convolution group over its
unfolded patches (in_channels/groups * kh * kw), so a depthwise conv is one small problem
per channel. Only these sums are kept, never the inputs themselves. Padding tokens are
left out when a batch is a mapping with an `attention_mask` matching the layer's input.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from engine._layers import call_model, int_pair
from engine._modules import QuantConv2d


@dataclass
class InputStats:
    """Sums over the rows (tokens, samples, patches) a layer saw.

    Attributes:
        xtx: (G, Kg, Kg) float64 sum of x xᵀ per group.
        x_sum: (G, Kg) float64 sum of x per group.
        rows: Number of rows summed.
    """

    xtx: torch.Tensor
    x_sum: torch.Tensor
    rows: int = 0

    @property
    def hessian(self) -> torch.Tensor:
        """H = 2 XᵀX / N per group (G, Kg, Kg), float64."""
        return self.xtx * (2.0 / max(self.rows, 1))

    @property
    def mean(self) -> torch.Tensor:
        """E[x] per group (G, Kg), float64."""
        return self.x_sum / max(self.rows, 1)


@dataclass(frozen=True)
class ConvGeometry:
    """What unfolding a conv's input needs; read from nn.Conv2d or QuantConv2d alike."""

    kernel_size: tuple[int, int]
    dilation: tuple[int, int]
    padding: tuple[int, int]
    stride: tuple[int, int]
    groups: int

    @classmethod
    def of(cls, module: nn.Module) -> ConvGeometry | None:
        """The geometry of a float or quantized conv; None for any other layer."""
        if isinstance(module, nn.Conv2d):
            kernel_size: Sequence[int] = module.kernel_size
        elif isinstance(module, QuantConv2d):
            kernel_size = module.weight_shape[2:]
        else:
            return None
        return cls(int_pair(kernel_size), int_pair(module.dilation), int_pair(module.padding),
                   int_pair(module.stride), module.groups)


def _pointwise(conv: ConvGeometry) -> bool:
    return conv.kernel_size == (1, 1) and conv.groups == 1 and conv.padding == (0, 0)


# Images whose im2col patches are unfolded at a time by `patch_sums` (a 112x112 depthwise
# input of 32 channels: 8 images are 116 MB of patches).
PATCH_CHUNK_IMAGES = 8


def patch_sums(x: torch.Tensor, conv: ConvGeometry) -> tuple[torch.Tensor, torch.Tensor, int]:
    """A conv input's sums as `layer_rows` would give them: XᵀX (G, Kg, Kg) and the column
    sums (G, Kg), float64, and the row count.

    The patches of a few images at a time are multiplied where `F.unfold` leaves them,
    (images, G, Kg, positions), with no copy into rows: regrouping a depthwise conv's patches
    row by row cost ten times the products themselves.
    """
    g = conv.groups
    xtx: torch.Tensor | None = None
    x_sum: torch.Tensor | None = None
    n_rows = 0
    for chunk in x.split(PATCH_CHUNK_IMAGES):
        patches = F.unfold(chunk, conv.kernel_size, conv.dilation, conv.padding, conv.stride)
        b, k, length = patches.shape
        p = patches.view(b, g, k // g, length)
        part = torch.matmul(p, p.transpose(2, 3)).sum(0, dtype=torch.float64)
        col = p.sum((0, 3), dtype=torch.float64)
        xtx = part if xtx is None else xtx + part
        x_sum = col if x_sum is None else x_sum + col
        n_rows += b * length
    assert xtx is not None and x_sum is not None  # x has at least one image
    return xtx, x_sum, n_rows


def layer_rows(x: torch.Tensor, conv: ConvGeometry | None,
               mask: torch.Tensor | None = None) -> torch.Tensor:
    """A layer's input as rows grouped like its weight: (G, rows, Kg)."""
    if conv is not None and _pointwise(conv):
        if conv.stride != (1, 1):
            x = x[:, :, :: conv.stride[0], :: conv.stride[1]]
        return x.permute(0, 2, 3, 1).reshape(1, -1, x.shape[1])  # pointwise: no unfold copy
    if conv is not None:
        patches = F.unfold(x, conv.kernel_size, conv.dilation, conv.padding, conv.stride)
        b, k, length = patches.shape
        g = conv.groups
        grouped = patches.view(b, g, k // g, length).permute(1, 0, 3, 2)
        return grouped.reshape(g, b * length, k // g)
    k = x.shape[-1]
    if mask is not None and x.dim() == mask.dim() + 1 and x.shape[:-1] == mask.shape:
        x = x[mask.bool()]
    return x.reshape(1, -1, k)


class _StopForward(Exception):
    """Raised by a hook once the only layer of interest has seen its input."""


@torch.no_grad()
def collect_input_stats(
    model: nn.Module, modules: Mapping[str, nn.Module], batches: Iterable[Any], *,
    stop_early: bool = False,
) -> dict[str, InputStats]:
    """Runs `batches` through `model` and returns the input sums of each named module.

    Layers fed the very same input tensor one after another (an attention block's q, k and
    v; an MLP's gate and up projections) share one computation of its sums.

    Args:
        model: The model to run (float, or partly quantized for sequential calibration).
        modules: Name -> module inside `model` (nn.Linear / nn.Conv2d or their quantized
            versions) whose inputs are summed.
        batches: Inputs in `call_model` form.
        stop_early: End each forward pass once every module has seen its input (the rest of
            the model is not needed). For a single module, right after its first call (only
            for modules called once); for several, only when each was called exactly once
            in the first, whole, pass, and then at the last one's call in later passes.
    """
    single = stop_early and len(modules) == 1
    stats: dict[str, InputStats] = {}
    # `stop`: whether passes after the first end at the last module (each ran once in it)
    state: dict[str, Any] = {"mask": None, "last": None, "stop": False}
    calls: dict[str, int] = dict.fromkeys(modules, 0)
    waiting: set[str] = set()  # modules not yet called in this pass (when stopping early)

    def sums(x: torch.Tensor, geometry: ConvGeometry | None
             ) -> tuple[torch.Tensor, torch.Tensor, int, bool]:
        last = state["last"]
        if (last is not None and last[0] is x and last[1] == x._version
                and last[2] == geometry and last[3] is state["mask"]):
            return (*last[4:], True)
        if geometry is not None and not _pointwise(geometry):
            xtx, x_sum, n_rows = patch_sums(x.detach().float(), geometry)
        else:
            rows = layer_rows(x.detach().float(), geometry, state["mask"])
            # float32 products per batch, float64 sums across batches
            xtx = torch.bmm(rows.transpose(1, 2), rows).double()
            x_sum = rows.sum(1, dtype=torch.float64)
            n_rows = rows.shape[1]
        state["last"] = (x, x._version, geometry, state["mask"], xtx, x_sum, n_rows)
        return xtx, x_sum, n_rows, False

    def hook_for(name: str, module: nn.Module) -> Callable[[nn.Module, tuple], None]:
        geometry = ConvGeometry.of(module)

        def hook(_m: nn.Module, args: tuple) -> None:
            xtx, x_sum, n_rows, shared = sums(args[0], geometry)
            s = stats.get(name)
            if s is None:  # a shared sum is copied: each module's sums grow in place
                stats[name] = InputStats(xtx.clone() if shared else xtx,
                                         x_sum.clone() if shared else x_sum, n_rows)
            else:
                s.xtx += xtx
                s.x_sum += x_sum
                s.rows += n_rows
            calls[name] += 1
            waiting.discard(name)
            if single or (state["stop"] and not waiting):
                raise _StopForward
        return hook

    handles = [m.register_forward_pre_hook(hook_for(n, m)) for n, m in modules.items()]
    try:
        for i, batch in enumerate(batches):
            mask = batch.get("attention_mask") if isinstance(batch, Mapping) else None
            state["mask"] = mask
            if i == 1 and stop_early and not single:
                state["stop"] = all(c == 1 for c in calls.values())
            waiting.update(modules if state["stop"] else ())
            try:
                call_model(model, batch)
            except _StopForward:
                pass
            state["last"] = None
    finally:
        for h in handles:
            h.remove()
    return stats
