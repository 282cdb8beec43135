"""The calibration loss of one-layer changes, with the float prefix run once per batch.

With one layer changed, everything the model computes before that layer is the float
model's. So the model is traced once (`torch.fx`), each calibration batch runs through its
graph once in FP32, and at each changed layer's call the replacements' outputs are computed
from the live float values and only the rest of the graph runs per replacement. On a chain
of layers that halves the work of a full forward per candidate, and it skips the
calibration pass a separate `engine.apply` would make.

Models that `torch.fx` cannot trace, inputs that are not positional tensors, or a spec whose
loss does not read the model's output once as given (checked on every batch against the
spec's own loss of the float model) get `None` from `SuffixLosses.build`; callers then fall
back to whole-model forwards.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import fx, nn

Replacement = Callable[..., Any]
"""Called like the layer it stands in for (the layer's float inputs), returning its output."""

CHECK_RTOL = 1e-4  # the traced float graph's loss vs the spec's own loss of the model


class _NotSuffixable(Exception):
    """The spec's loss does not read the model's output exactly once."""


class _Fixed(nn.Module):
    """Stands in for the model in `spec.loss`: returns the output computed already."""

    def __init__(self, output: Any) -> None:
        super().__init__()
        self.output = output
        self.calls = 0

    def forward(self, *_args: Any, **_kwargs: Any) -> Any:
        self.calls += 1
        return self.output


class _GraphRun(fx.Interpreter):
    """Runs a span of a traced graph's nodes on a given environment, with some modules
    replaced, dropping each value after its last use."""

    def __init__(self, module: fx.GraphModule) -> None:
        super().__init__(module, garbage_collect_values=False)
        self.nodes = list(module.graph.nodes)
        last: dict[fx.Node, int] = {}
        for i, node in enumerate(self.nodes):
            for used in node.all_input_nodes:
                last[used] = i
        self.dead_after: list[list[fx.Node]] = [[] for _ in self.nodes]
        for node, i in last.items():
            self.dead_after[i].append(node)
        self.replaced: Mapping[str, Replacement] = {}

    def call_module(self, target: Any, args: Any, kwargs: Any) -> Any:
        fn = self.replaced.get(target)
        return fn(*args, **kwargs) if fn is not None else super().call_module(target, args,
                                                                                   kwargs)

    def run_span(self, env: dict[fx.Node, Any], start: int, args: Sequence[Any] = (),
                 replaced: Mapping[str, Replacement] | None = None,
                 stop_at: Callable[[int, dict[fx.Node, Any]], None] | None = None) -> Any:
        """Runs nodes `start..` on `env` (modified in place) and returns the graph output;
        `stop_at(i, env)` is called before each node i runs (nested spans may run inside)."""
        self.env = env
        self.args_iter = iter(args)
        self.replaced = replaced or {}
        for i in range(start, len(self.nodes)):
            node = self.nodes[i]
            if stop_at is not None:
                stop_at(i, env)
                self.env, self.replaced = env, replaced or {}
            env[node] = self.run_node(node)
            if node.op == "output":
                return env[node]
            for dead in self.dead_after[i]:
                env.pop(dead, None)
        raise RuntimeError("the traced graph has no output node")


class SuffixLosses:
    """Calibration losses of models that differ from the float one in one layer.

    Build with `SuffixLosses.build(spec, model)`; `None` when the model or spec does not
    allow it (see module docstring).
    """

    def __init__(self, spec: Any, traced: fx.GraphModule) -> None:
        self.spec = spec
        self.run = _GraphRun(traced)
        self.first_call = {}
        for i, node in enumerate(self.run.nodes):
            if node.op == "call_module":
                self.first_call.setdefault(str(node.target), i)

    @classmethod
    def build(cls, spec: Any, model: nn.Module) -> SuffixLosses | None:
        """The evaluator for `model` (left unchanged), or None where tracing or the spec's
        batches do not allow it."""
        if not all(isinstance(b.inputs, torch.Tensor) for b in spec.calibration_batches()):
            return None
        try:
            traced = fx.symbolic_trace(model)
        except Exception:  # noqa: BLE001 - any trace failure means: use whole forwards
            return None
        out = cls(spec, traced)
        batch = spec.calibration_batches()[0]
        with torch.inference_mode():
            try:  # the graph fails at run time, or the loss needs more than the output
                loss = out._loss(out.run.run_span({}, 0, args=(batch.inputs,)), batch)
            except Exception:  # noqa: BLE001 - then whole forwards, which raise for real
                return None
            own = float(spec.loss(model, batch))
        return out if math.isclose(loss, own, rel_tol=CHECK_RTOL, abs_tol=1e-7) else None

    def losses(self, changes: Mapping[str, Mapping[Any, Replacement]],
               progress: Callable[[int], None] | None = None,
               batches: Sequence[Any] | None = None
               ) -> tuple[float, dict[str, dict[Any, float]]]:
        """The float loss and, per layer and key, the loss with that layer replaced.

        Args:
            changes: layer name -> {key: replacement}; every name must be a module the
                traced graph calls.
            progress: Told after each (layer, key, batch) evaluated.
            batches: The batches to evaluate on (default: the spec's calibration batches).

        Returns:
            (float loss, {name: {key: loss}}), batch-size weighted over the calibration
            batches.
        """
        unknown = [n for n in changes if n not in self.first_call]
        if unknown:
            raise KeyError(f"layers {unknown[:5]} are not called by the traced model")
        by_start: dict[int, list[str]] = {}
        for name in changes:
            by_start.setdefault(self.first_call[name], []).append(name)
        batches = list(self.spec.calibration_batches() if batches is None else batches)
        sums: dict[str, dict[Any, list[float]]] = {n: {k: [] for k in c}
                                                    for n, c in changes.items()}
        base: list[float] = []
        weights = [b.size for b in batches]
        run = self.run
        with torch.inference_mode():
            for batch in batches:
                def evaluate(i: int, env: dict[fx.Node, Any], batch: Any = batch) -> None:
                    for name in by_start.get(i, ()):
                        for key, fn in changes[name].items():
                            out = run.run_span(dict(env), i, replaced={name: fn})
                            sums[name][key].append(self._loss(out, batch))
                            if progress is not None:
                                progress(1)

                out = run.run_span({}, 0, args=(batch.inputs,), stop_at=evaluate)
                base.append(self._loss(out, batch))
        total = sum(weights)

        def mean(values: Sequence[float]) -> float:
            return math.fsum(v * w for v, w in zip(values, weights, strict=True)) / total

        return mean(base), {n: {k: mean(v) for k, v in c.items()} for n, c in sums.items()}

    def _loss(self, output: Any, batch: Any) -> float:
        fixed = _Fixed(output)
        value = float(self.spec.loss(fixed, batch))
        if fixed.calls != 1:  # checked by `build` on the first batch
            raise _NotSuffixable(f"the spec's loss called the model {fixed.calls} times")
        return value
