"""ONNX export of a quantized model, checked in ONNX Runtime before anything is written.

The float model is exported from PyTorch with the dynamo exporter (opset 21; the TorchScript
exporter stops at opset 20) with every quantized layer replaced by a marker op, so the graph
says exactly where each layer sits. Each marker is then rewritten into the ONNX ops of
`hwprofiles.layer_ops`, which carry the integers, scales and zero points the engine stored
for that layer (no re-quantization: GPTQ, bias correction and clipping are in them), its
possibly corrected bias, and its activation handling: weight-only linears as MatMulNBits,
convs as DequantizeLinear + Conv, W8A8 layers with QDQ at the engine's activation scales
(per row and per call for linears, calibrated ranges for convs).

The result runs in ONNX Runtime (CPU, all graph optimizations) on the caller's batch and
each output is compared with the engine's: cosine >= 0.9999 where ONNX Runtime computes in
float (weight-only, `accuracy_level` 0), >= 0.998 where activations are rounded to int8 on
either side (W8A8 layers, or MatMulNBits' int8 compute at `accuracy_level` 4; see
`INT8_MIN_COSINE` for why the two runtimes' int8 grids differ). On a mismatch the first
quantized layer whose output departs is found from intermediate outputs and named in an
`OnnxCheckError`, and nothing is written; a checked model is written atomically.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import logging
import sys
import time
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

import engine
from allocator.export._common import (
    ExportCheckError,
    ExportReport,
    LayerExport,
    atomic_output,
    quantized_layers_of,
)
from allocator.export._targets import get_target
from engine import AllocatorError, BitConfig, InvalidSpecError, LayerSpec, MissingDependencyError
from hwprofiles import (
    LayerSite,
    OnnxInitializers,
    layer_ops,
    onnxruntime_feed,
    onnxruntime_session,
    require_onnxruntime,
)
from hwprofiles._onnxruntime import ACCURACY_LEVELS, DEFAULT_ACCURACY_LEVEL

if TYPE_CHECKING:
    import onnx

OPSET = 21
MARK_DOMAIN = "allocator.export"
MS_DOMAIN = "com.microsoft"
# Cosine of each model output, ONNX Runtime vs the engine, that the check needs where both
# compute in float (weight-only layers, MatMulNBits at accuracy level 0).
WEIGHT_ONLY_MIN_COSINE = 0.9999
# Where activations are rounded to int8 (W8A8 layers; MatMulNBits' int8 compute), the two
# runtimes round differently: the export writes the portable per-row symmetric int8 grid,
# while the engine's int8 linears on AVX2-only CPUs use 7-bit asymmetric row grids with
# outlier channels in float (`fbgemm-int8-rows`), and ONNX Runtime's int8 compute rounds
# per block where the engine stays float. Measured (AMD EPYC, AVX2): all-int8 W8A8 MiniLM
# 0.99890, mixed 4/8 W8A8 0.99977, mixed 4/8 at accuracy level 4 0.99935; a wrong layer
# falls well below (scales 1.5x too large: 0.9896 at that layer's output, tests/export).
# Graphs with int8 activations are checked layer by layer on ONNX Runtime's own inputs at
# this cosine (see `check_onnx`), their model outputs against the float model's.
INT8_MIN_COSINE = 0.998
# ... where ONNX Runtime's outputs must be as close to the float model's as the engine's:
# 1 - cos(ORT, FP32) <= INT8_FP32_FACTOR * (1 - cos(engine, FP32)) + INT8_FP32_SLACK.
INT8_FP32_FACTOR = 2.0
INT8_FP32_SLACK = 1e-4


class OnnxCheckError(ExportCheckError):
    """Raised when ONNX Runtime cannot run an exported model, or its outputs depart from
    the engine's by more than the check allows; nothing is written.

    Attributes:
        layer: The first quantized layer whose output departs, or None when the whole
            model failed to run or every layer matched and the difference lies elsewhere.
        cosine: The cosine that failed (that layer's output, or the worst model output).
        min_cosine: What the check required.
    """

    def __init__(self, message: str, *, layer: str | None = None, cosine: float = 0.0,
                 min_cosine: float = 1.0) -> None:
        super().__init__(message)
        self.layer = layer
        self.cosine = cosine
        self.min_cosine = min_cosine


@dataclass(frozen=True)
class OnnxLayer:
    """How one quantized layer is held in the exported graph.

    Attributes:
        name: The layer's name in the model.
        kind: "linear" or "conv2d".
        bits: Weight bits.
        scheme: The engine's scheme label (e.g. `int4-asym-g128`).
        op: The ONNX ops that run it ("MatMulNBits", "DequantizeLinear+MatMul", ...).
        container: How the integers are stored ("4-bit packed, block 128", "uint8 per
            channel", ...).
        activations: As `hwprofiles.LayerOps.activations` ("float", "int8 per row
            (dynamic)", "uint8 static, codes 0..M", "uint8 per call, codes 0..M", "int8 per
            block (ONNX Runtime)").
        size_bytes: Bytes of its codes, scales and zero points in the file.
        calls: Times the layer appears in the graph (a module called twice, twice).
    """

    name: str
    kind: str
    bits: int
    scheme: str
    op: str
    container: str
    activations: str
    size_bytes: int
    calls: int = 1

    @property
    def format(self) -> str:
        """The short name `ExportReport.layers` carries, as the onnx target names it."""
        if self.op in ("MatMulNBits", "DynamicQuantizeMatMul"):
            return self.op
        if "MatMulIntegerToFloat" in self.op:
            return "MatMulIntegerToFloat"
        kind = self.container.split()[0]
        return ("QDQ+" if self.activations != "float" else "") + f"DequantizeLinear-{kind}"

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "op": self.op, "container": self.container,
                "activations": self.activations, "calls": self.calls}


# ----------------------------------------------------------------------------- dependencies


def _require() -> tuple[Any, Any]:
    """(onnx, onnxruntime), or a named error saying what to install."""
    try:
        import onnxscript  # noqa: F401  (the dynamo exporter needs it)
    except ImportError as e:
        raise MissingDependencyError(
            "ONNX export needs onnxscript (PyTorch's dynamo exporter); install the `onnx` "
            "extra.") from e
    return require_onnxruntime()


# ----------------------------------------------------------------------------- marker ops


@functools.cache
def _marker_ops() -> dict[Any, Any]:
    """Registers the marker ops (torch custom ops and their ONNX schemas, once per process)
    and returns the exporter's translation table for them."""
    import onnx
    import onnxscript
    from onnx.defs import OpSchema

    @torch.library.custom_op("allocator_export::marked_linear", mutates_args=())
    def marked_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                      layer: int) -> torch.Tensor:
        return F.linear(x, weight, bias)

    @marked_linear.register_fake
    def _(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
          layer: int) -> torch.Tensor:
        return x.new_empty((*x.shape[:-1], weight.shape[0]))

    @torch.library.custom_op("allocator_export::marked_conv2d", mutates_args=())
    def marked_conv2d(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                      stride: list[int], padding: list[int], dilation: list[int], groups: int,
                      layer: int) -> torch.Tensor:
        return F.conv2d(x, weight, bias, stride, padding, dilation, groups)

    @marked_conv2d.register_fake
    def _(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
          stride: list[int], padding: list[int], dilation: list[int], groups: int,
          layer: int) -> torch.Tensor:
        return F.conv2d(x, weight, bias, stride, padding, dilation, groups)

    param = OpSchema.FormalParameter
    optional = OpSchema.FormalParameterOption.Optional
    for name in ("MarkedLinear", "MarkedConv"):
        if not onnx.defs.has(name, MARK_DOMAIN):
            onnx.defs.register_schema(OpSchema(
                name, MARK_DOMAIN, 1,
                inputs=[param("x", "T"), param("weight", "T"),
                        param("bias", "T", param_option=optional)],
                outputs=[param("y", "T")],
                type_constraints=[("T", ["tensor(float)"], "float tensors")],
                attributes=[OpSchema.Attribute("layer", OpSchema.AttrType.INT, "layer index")]))
    mark = onnxscript.values.Opset(MARK_DOMAIN, 1)

    def linear_to_onnx(x: Any, weight: Any, bias: Any, layer: int) -> Any:
        return mark.MarkedLinear(x, weight, bias, layer=layer)

    def conv_to_onnx(x: Any, weight: Any, bias: Any, stride: Any, padding: Any, dilation: Any,
                     groups: int, layer: int) -> Any:
        return mark.MarkedConv(x, weight, bias, layer=layer)

    return {torch.ops.allocator_export.marked_linear.default: linear_to_onnx,
            torch.ops.allocator_export.marked_conv2d.default: conv_to_onnx}


def _ints(value: Any) -> list[int]:
    """A conv's (height, width) setting as a list (the engine refused string padding)."""
    return [int(v) for v in value]


class _Marked(nn.Module):
    """Stands in for a quantized layer during export: its float op, seen as one marker."""

    def __init__(self, module: nn.Linear | nn.Conv2d, index: int) -> None:
        super().__init__()
        self.inner = module
        self.index = index

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        m = self.inner
        if isinstance(m, nn.Conv2d):
            return torch.ops.allocator_export.marked_conv2d(
                x, m.weight, m.bias, _ints(m.stride), _ints(m.padding), _ints(m.dilation),
                m.groups, self.index)
        return torch.ops.allocator_export.marked_linear(x, m.weight, m.bias, self.index)


# ----------------------------------------------------------------------------- PyTorch export


@contextlib.contextmanager
def _quiet_export() -> Iterator[None]:
    """Keeps the exporter's progress lines off stdout (the CLI's `--json` owns it) and its
    notes to torch developers out of the user's log."""
    logger = logging.getLogger("torch.onnx")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(sys.stderr), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        logger.setLevel(level)


def _split_inputs(example_inputs: Any) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """`engine.call_model` inputs as (args, kwargs)."""
    if isinstance(example_inputs, Mapping):
        return (), dict(example_inputs)
    if isinstance(example_inputs, tuple | list):
        return tuple(example_inputs), {}
    return (example_inputs,), {}


def _dynamic_shapes(args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """Every dimension of every tensor input left for the exporter to keep dynamic (it
    specializes the ones the model fixes), so one file serves any batch and length."""
    auto = torch.export.Dim.AUTO

    def dims(value: Any) -> Any:
        if isinstance(value, torch.Tensor):
            return {i: auto for i in range(value.dim())}
        return None

    if kwargs:
        return {k: dims(v) for k, v in kwargs.items()}
    return tuple(dims(a) for a in args)


@contextlib.contextmanager
def _eager_attention(module: nn.Module) -> Iterator[None]:
    """Hugging Face models inside `module` switched to their eager attention while it is
    exported, and back. The exporter writes PyTorch's fused attention with a NaN guard on
    every softmax (IsNaN + Where over the (batch, heads, tokens, tokens) scores): 15 % of
    ONNX Runtime's time on MiniLM at 32 x 128, for the same function."""
    switched = []
    for m in module.modules():
        config = getattr(m, "config", None)
        current = getattr(config, "_attn_implementation", None)
        if current not in (None, "eager") and hasattr(m, "set_attn_implementation"):
            try:
                m.set_attn_implementation("eager")
            except (ValueError, ImportError):  # a model without an eager path keeps its own
                continue
            switched.append((m, current))
    try:
        yield
    finally:
        for m, current in switched:
            m.set_attn_implementation(current)


def _torch_export(module: nn.Module, example_inputs: Any, *, opset: int, dynamic: bool,
                  table: Mapping[Any, Any] | None = None) -> onnx.ModelProto:
    args, kwargs = _split_inputs(example_inputs)
    shapes = _dynamic_shapes(args, kwargs) if dynamic else None
    try:
        with _quiet_export(), torch.no_grad(), _eager_attention(module):
            program = torch.onnx.export(
                module, args, kwargs=kwargs or None, dynamo=True, opset_version=opset,
                dynamic_shapes=shapes, custom_translation_table=dict(table or {}),
                optimize=True, verbose=False)
    except Exception as e:  # the exporter raises many types; the user needs the first line
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise InvalidSpecError(f"PyTorch could not export the model to ONNX: {first}") from e
    if program is None:
        raise InvalidSpecError("PyTorch's ONNX exporter returned no program.")
    proto: onnx.ModelProto = program.model_proto
    return proto


def float_onnx(model: nn.Module, example_inputs: Any, *, opset: int = OPSET,
               dynamic: bool = True) -> onnx.ModelProto:
    """The float model exported as is: the FP32 baseline a quantized export is compared with.

    Args:
        model: The float model.
        example_inputs: One batch (`engine.call_model` form).
        opset: ONNX opset (>= 21).
        dynamic: Leave every input dimension dynamic.
    """
    _require()
    _check_opset(opset)
    return _torch_export(model.eval(), example_inputs, opset=opset, dynamic=dynamic)


def _check_opset(opset: int) -> None:
    if isinstance(opset, bool) or not isinstance(opset, int) or opset < OPSET:
        raise InvalidSpecError(f"`opset` must be an integer >= {OPSET} (int4 and blocked "
                               f"DequantizeLinear), got {opset!r}.")


# ----------------------------------------------------------------------------- the layers


def _layers_to_export(model: nn.Module, quantized_model: nn.Module,
                      config: BitConfig) -> dict[str, engine.QuantizedLayer]:
    """The quantized layers the config names, after checking the config, the float model
    and the quantized model agree."""
    floats = engine.quantizable_modules(model)
    unknown = [n for n in config.bits if n not in floats]
    if unknown:
        known = ", ".join(list(floats)[:8]) + (", ..." if len(floats) > 8 else "")
        raise engine.UnknownLayerError(
            f"`bits` names layer(s) the model cannot quantize: {unknown[:5]}; quantizable "
            f"layers are: {known or 'none'}.")
    layers: dict[str, engine.QuantizedLayer] = quantized_layers_of(quantized_model, config)
    for name, layer in layers.items():
        if tuple(layer.weight_shape) != tuple(floats[name].weight.shape):
            raise InvalidSpecError(
                f"layer {name!r}: quantized weight shape {tuple(layer.weight_shape)} differs "
                f"from the float model's {tuple(floats[name].weight.shape)}.")
    return layers


def _marked_copy(model: nn.Module, names: Sequence[str]) -> nn.Module:
    """A copy of the float model (sharing its tensors) with the named layers as markers."""
    shared = {id(t): t for t in (*model.parameters(), *model.buffers())}
    marked = copy.deepcopy(model, shared).eval()
    modules = engine.quantizable_modules(marked)
    for index, name in enumerate(names):
        parent, _, child = name.rpartition(".")
        owner = marked.get_submodule(parent) if parent else marked
        setattr(owner, child, _Marked(modules[name], index))
    return marked


# ----------------------------------------------------------------------------- rewriting


def _rewrite(proto: onnx.ModelProto, names: Sequence[str],
             layers: Mapping[str, engine.QuantizedLayer], *, accuracy_level: int,
             ) -> tuple[onnx.ModelProto, dict[str, OnnxLayer], dict[str, tuple[str, str]]]:
    """Replaces every marker by its layer's quantized ops.

    Returns:
        (the model, layer name -> how it is held, layer name -> the names of its first
        call's input and output tensors).
    """
    inits = OnnxInitializers()
    nodes: list[Any] = []
    records: dict[str, OnnxLayer] = {}
    io: dict[str, tuple[str, str]] = {}
    dropped: set[str] = set()
    for node in proto.graph.node:
        if node.domain != MARK_DOMAIN:
            nodes.append(node)
            continue
        name = names[next(a.i for a in node.attribute if a.name == "layer")]
        layer = layers[name]
        calls = records[name].calls + 1 if name in records else 1
        x, y = node.input[0], node.output[0]
        dropped.update(i for i in node.input[1:] if i)
        conv = node.op_type == "MarkedConv"
        emitted = layer_ops(LayerSite(inits, name, calls), layer, x, y,
                            accuracy_level=accuracy_level)
        nodes += emitted.nodes
        records[name] = OnnxLayer(name, "conv2d" if conv else "linear", layer.bits,
                                  layer.scheme.label, emitted.op, emitted.container,
                                  emitted.activations, inits.layer_bytes(name), calls)
        io.setdefault(name, (x, y))
    return _finish(proto, inits, nodes, dropped), records, io


def _finish(proto: onnx.ModelProto, inits: OnnxInitializers, nodes: list[Any],
            dropped: set[str]) -> onnx.ModelProto:
    """The graph with the new nodes and initializers, without the float weights only the
    markers used, and with its opsets updated."""
    graph = proto.graph
    if any(n.domain == MARK_DOMAIN for n in nodes):
        raise InvalidSpecError("internal: an export marker was left in the ONNX graph.")
    used = {i for n in nodes for i in n.input} | {o.name for o in graph.output}
    kept = [t for t in graph.initializer if t.name not in dropped or t.name in used]
    del graph.node[:]
    graph.node.extend(nodes)
    del graph.initializer[:]
    graph.initializer.extend(kept + inits.tensors)
    imports = [o for o in proto.opset_import if o.domain not in (MARK_DOMAIN, MS_DOMAIN)]
    if any(n.domain == MS_DOMAIN for n in nodes):
        imports.append(inits.onnx.helper.make_opsetid(MS_DOMAIN, 1))
    del proto.opset_import[:]
    proto.opset_import.extend(imports)
    return proto


# ----------------------------------------------------------------------------- running


def _flat_outputs(outputs: Any) -> list[torch.Tensor]:
    leaves, _ = torch.utils._pytree.tree_flatten(outputs)
    return [t for t in leaves if isinstance(t, torch.Tensor)]


def cosine(a: np.ndarray | torch.Tensor, b: np.ndarray | torch.Tensor) -> float:
    """Cosine of two tensors flattened (1.0 when both are zero)."""
    x = torch.as_tensor(np.asarray(a)).double().flatten()
    y = torch.as_tensor(np.asarray(b)).double().flatten()
    if x.shape != y.shape:
        return -1.0
    nx, ny = float(x.norm()), float(y.norm())
    if nx == 0.0 and ny == 0.0:
        return 1.0
    if nx == 0.0 or ny == 0.0:
        return 0.0
    return float(x @ y) / (nx * ny)


@torch.inference_mode()
def _engine_outputs(quantized_model: nn.Module, example_inputs: Any,
                    names: Sequence[str] = ()) -> tuple[list[torch.Tensor],
                                                        dict[str, torch.Tensor]]:
    """The engine's model outputs and, for `names`, each layer's first output."""
    modules = dict(quantized_model.named_modules())
    seen: dict[str, torch.Tensor] = {}
    hooks = []
    for name in names:
        def hook(_m: nn.Module, _a: tuple, out: Any, name: str = name) -> None:
            if name not in seen and isinstance(out, torch.Tensor):
                seen[name] = out.detach().float().clone()
        hooks.append(modules[name].register_forward_hook(hook))
    try:
        out = engine.call_model(quantized_model.eval(), example_inputs)
    finally:
        for h in hooks:
            h.remove()
    return [t.detach().float() for t in _flat_outputs(out)], seen


def _run_checked(proto: onnx.ModelProto, feed_from: Any, threads: int | None,
                 extra_outputs: Sequence[str] = ()) -> tuple[list[np.ndarray],
                                                            dict[str, np.ndarray]]:
    """Runs the model in ONNX Runtime: (its outputs, and with `extra_outputs` a dict of
    those tensors, fetched as graph outputs of a copy, and of the model's own outputs)."""
    onnx, _ = _require()
    model = proto
    if extra_outputs:
        model = copy.deepcopy(proto)
        have = {o.name for o in model.graph.output}
        for name in extra_outputs:
            if name not in have:
                model.graph.output.append(onnx.helper.make_empty_tensor_value_info(name))
    try:
        session = onnxruntime_session(model, threads=threads)
        feed = onnxruntime_feed(session, feed_from)
        results = session.run(None, feed)
    except AllocatorError:
        raise
    except Exception as e:  # ORT raises its own exception types for load and run failures
        raise OnnxCheckError(f"ONNX Runtime could not run the exported model: "
                             f"{str(e).strip().splitlines()[0]}", layer=None, cosine=0.0,
                             min_cosine=1.0) from e
    n = len(proto.graph.output)
    names = [o.name for o in session.get_outputs()]
    fetched = dict(zip(names, results, strict=True)) if extra_outputs else {}
    return list(results[:n]), fetched


def check_onnx(proto: onnx.ModelProto, quantized_model: nn.Module, example_inputs: Any, *,
               layer_io: Mapping[str, tuple[str, str]], min_cosine: float,
               int8: bool = False, float_model: nn.Module | None = None,
               threads: int | None = None) -> dict[str, Any]:
    """Runs the model in ONNX Runtime and compares it with the engine.

    Float compute (weight-only layers): every model output must reach `min_cosine` to the
    engine's; otherwise the first quantized layer whose output departs is named.

    int8 activations (`int8`: W8A8 layers, MatMulNBits' int8 compute): two runtimes that
    round activations cannot agree end to end. A float-level difference upstream moves
    some values across a rounding boundary, a whole grid step, and every later layer
    carries it on (all-W8A8 MiniLM on one grid per call: each layer equal on the same input,
    cosine 1 - 5e-9, yet 0.9933 at the output). So each quantized layer is checked on
    ONNX Runtime's own input to it: the engine's layer run on that input must give ONNX
    Runtime's output at `min_cosine`; and with `float_model`, the model outputs must be as
    close to the float model's as the engine's are (`INT8_FP32_FACTOR`, `INT8_FP32_SLACK`).

    Args:
        proto: The exported model.
        quantized_model: The engine's model.
        example_inputs: The batch both run on.
        layer_io: Quantized layer name -> (input, output) tensor of its first call in the
            graph, in the order the graph runs them.
        min_cosine: Cosine each output (float compute) or each layer (int8) must reach.
        int8: Whether the graph rounds activations to integers.
        float_model: The float model, for the int8 check's bound on the outputs.
        threads: ONNX Runtime intra-op threads.

    Returns:
        `cosines` (each model output vs the engine's) and, for int8 graphs,
        `layer_cosines` (layer name -> cosine on ONNX Runtime's input) and, with
        `float_model`, `fp32_cosines` ({"onnxruntime": [...], "engine": [...]}).

    Raises:
        OnnxCheckError: A check fails (naming the layer where one is to blame), or ONNX
            Runtime cannot run the model.
    """
    expected, _ = _engine_outputs(quantized_model, example_inputs)
    fetch = [t for io in layer_io.values() for t in io] if int8 else []
    got, tensors = _run_checked(proto, example_inputs, threads, fetch)
    if len(got) != len(expected):
        raise OnnxCheckError(f"the ONNX model has {len(got)} outputs, the engine's model "
                             f"{len(expected)}.", layer=None, cosine=0.0, min_cosine=min_cosine)
    cosines = [cosine(g, e.numpy()) for g, e in zip(got, expected, strict=True)]
    result: dict[str, Any] = {"cosines": cosines}
    if not int8:
        worst = min(cosines, default=1.0)
        if worst < min_cosine:
            layer_outputs = {n: io[1] for n, io in layer_io.items()}
            _raise_first_bad_layer(proto, quantized_model, example_inputs, layer_outputs,
                                   min_cosine, worst, threads)
        return result
    result["layer_cosines"] = _check_layers_on_runtime_inputs(quantized_model, layer_io,
                                                              tensors, min_cosine)
    if float_model is not None:
        result["fp32_cosines"] = _check_against_float(float_model, example_inputs, got,
                                                      expected)
    return result


@torch.inference_mode()
def _check_layers_on_runtime_inputs(quantized_model: nn.Module,
                                    layer_io: Mapping[str, tuple[str, str]],
                                    tensors: Mapping[str, np.ndarray],
                                    min_cosine: float) -> dict[str, float]:
    """Each quantized layer of the engine run on ONNX Runtime's input to it, against ONNX
    Runtime's output; raises on the first (in run order) below `min_cosine`."""
    modules = dict(quantized_model.named_modules())
    out: dict[str, float] = {}
    for name, (x, y) in layer_io.items():
        if x not in tensors or y not in tensors:
            continue
        want = modules[name](torch.from_numpy(np.ascontiguousarray(tensors[x])))
        c = cosine(tensors[y], want.detach().float().numpy())
        out[name] = c
        if c < min_cosine:
            raise OnnxCheckError(
                f"layer {name!r}: on the same input, its output in ONNX Runtime has cosine "
                f"{c:.6f} to the engine's (need >= {min_cosine}); the export of this layer "
                "is wrong.", layer=name, cosine=c, min_cosine=min_cosine)
    return out


def _check_against_float(float_model: nn.Module, example_inputs: Any, got: Sequence[np.ndarray],
                         expected: Sequence[torch.Tensor]) -> dict[str, list[float]]:
    """ONNX Runtime's and the engine's cosines to the float model's outputs; raises where
    ONNX Runtime's is further from float than the int8 bound allows."""
    with torch.inference_mode():
        fp32 = [t.detach().float().numpy()
                for t in _flat_outputs(engine.call_model(float_model.eval(), example_inputs))]
    ours = [cosine(g, f) for g, f in zip(got, fp32, strict=True)]
    theirs = [cosine(e.numpy(), f) for e, f in zip(expected, fp32, strict=True)]
    for i, (o, t) in enumerate(zip(ours, theirs, strict=True)):
        allowed = INT8_FP32_FACTOR * (1.0 - t) + INT8_FP32_SLACK
        if 1.0 - o > allowed:
            raise OnnxCheckError(
                f"model output {i}: ONNX Runtime's cosine to the float model is {o:.6f}, the "
                f"engine's {t:.6f} (allowed down to {1.0 - allowed:.6f}); every quantized "
                "layer matches on its own input, so the difference lies between them.",
                layer=None, cosine=o, min_cosine=1.0 - allowed)
    return {"onnxruntime": ours, "engine": theirs}


def _raise_first_bad_layer(proto: onnx.ModelProto, quantized_model: nn.Module,
                           example_inputs: Any, layer_outputs: Mapping[str, str],
                           min_cosine: float, worst: float, threads: int | None) -> None:
    names = list(layer_outputs)
    _, engine_layers = _engine_outputs(quantized_model, example_inputs, names)
    _, ort_layers = _run_checked(proto, example_inputs, threads,
                                 [layer_outputs[n] for n in names])
    for name in names:  # run order: the first that departs is where the error starts
        if name not in engine_layers or layer_outputs[name] not in ort_layers:
            continue
        c = cosine(ort_layers[layer_outputs[name]], engine_layers[name].numpy())
        if c < min_cosine:
            raise OnnxCheckError(
                f"layer {name!r}: its output in ONNX Runtime has cosine {c:.6f} to the "
                f"engine's (need >= {min_cosine}); the export of this layer is wrong.",
                layer=name, cosine=c, min_cosine=min_cosine)
    raise OnnxCheckError(
        f"every quantized layer matches the engine, but a model output has cosine "
        f"{worst:.6f} (need >= {min_cosine}): the difference lies outside the quantized "
        "layers.", layer=None, cosine=worst, min_cosine=min_cosine)


# ----------------------------------------------------------------------------- entry point


def _int8_compute(records: Mapping[str, OnnxLayer]) -> bool:
    """Whether any layer's activations are rounded to int8 (engine W8A8 or ONNX Runtime)."""
    return any(r.activations.startswith(("int8", "uint8")) for r in records.values())


def _check_widths(model: nn.Module, config: BitConfig) -> None:
    """The onnx target's rule of what it holds (`TargetWidthError` names the layer)."""
    target = get_target("onnx")
    modules = engine.quantizable_modules(model)
    for name, bits in config.bits.items():
        weight = modules[name].weight
        kind = "conv2d" if isinstance(modules[name], nn.Conv2d) else "linear"
        spec = LayerSpec(name, kind, tuple(weight.shape), weight.numel(), 0)
        target.check_layer(spec, bits, config)


def build_onnx(model: nn.Module, quantized_model: nn.Module, config: BitConfig,
               example_inputs: Any, *, accuracy_level: int = DEFAULT_ACCURACY_LEVEL,
               opset: int = OPSET, dynamic: bool = True,
               ) -> tuple[onnx.ModelProto, dict[str, OnnxLayer], dict[str, tuple[str, str]]]:
    """The quantized ONNX model, unchecked (`export_onnx` checks and writes it).

    Returns:
        (model, layer name -> how it is held, layer name -> its first call's input and
        output tensors in the graph), in the order the graph runs them; layers the batch
        never calls are not in the graph.
    """
    _require()
    _check_opset(opset)
    if accuracy_level not in ACCURACY_LEVELS:
        raise InvalidSpecError(f"`accuracy_level` must be one of {ACCURACY_LEVELS}, "
                               f"got {accuracy_level!r}.")
    layers = _layers_to_export(model, quantized_model, config)
    _check_widths(model, config)
    order = [n for n in engine.quantizable_modules(model) if n in layers]
    marked = _marked_copy(model, order)
    proto = _torch_export(marked, example_inputs, opset=opset, dynamic=dynamic,
                          table=_marker_ops())
    return _rewrite(proto, order, layers, accuracy_level=accuracy_level)


def export_onnx(model: nn.Module, quantized_model: nn.Module, config: BitConfig,
                example_inputs: Any, out_path: str | Path, *,
                accuracy_level: int = DEFAULT_ACCURACY_LEVEL, opset: int = OPSET,
                dynamic: bool = True, min_cosine: float | None = None, threads: int | None = None,
                ) -> ExportReport:
    """Exports a quantized model to ONNX with the engine's integers, checks it in ONNX
    Runtime against the engine, and only then writes it (atomically).

    Args:
        model: The float model the config was made for.
        quantized_model: `engine.apply(model, config, ...)`: its stored integers, scales,
            zero points, biases and calibrated activation ranges are what is exported.
        config: The bit config (names the layers; `activation_bits` 8 = W8A8).
        example_inputs: A batch (`engine.call_model` form), traced for the export and run by
            both runtimes for the check (the evaluation batch).
        out_path: Where the `.onnx` file goes.
        accuracy_level: MatMulNBits' `accuracy_level`: 0 (default) computes in float, as
            the engine does; 4 lets ONNX Runtime quantize its input to int8 per block, its
            fast path on CPUs with VNNI or AMX (checked at the int8 tolerance).
        opset: Default-domain opset (>= 21).
        dynamic: Leave the input dimensions dynamic (any batch, any sequence length).
        min_cosine: What each output's cosine to the engine's must reach (default 0.9999;
            0.998 where activations are rounded to int8: W8A8 layers, `accuracy_level` 4).
        threads: ONNX Runtime intra-op threads for the check (default: torch's).

    Returns:
        An `ExportReport` (format "onnx"); `extra` has the opset, the runtime, the
        accuracy level, timings and how each layer is held.

    Raises:
        UnknownLayerError: The config names a layer the model does not have.
        TargetWidthError: A layer's width is one the onnx target does not hold.
        InvalidSpecError: The models and the config disagree, bad arguments, or PyTorch
            cannot export the model.
        OnnxCheckError: ONNX Runtime cannot run the model or its outputs depart from the
            engine's; names the first layer that departs. Nothing is written.
        MissingDependencyError: onnx, onnxscript or onnxruntime is not installed.

    Example:
        >>> qmodel = engine.apply(model, config, calibration=batches)
        >>> export_onnx(model, qmodel, config, batches[0], "model.onnx").check["cosines"]
    """
    start = time.perf_counter()
    proto, records, layer_io = build_onnx(model, quantized_model, config, example_inputs,
                                          accuracy_level=accuracy_level, opset=opset,
                                          dynamic=dynamic)
    export_s = time.perf_counter() - start
    int8 = _int8_compute(records)
    need = min_cosine if min_cosine is not None else (
        INT8_MIN_COSINE if int8 else WEIGHT_ONLY_MIN_COSINE)
    start = time.perf_counter()
    result = check_onnx(proto, quantized_model, example_inputs, layer_io=layer_io,
                        min_cosine=need, int8=int8, float_model=model, threads=threads)
    cosines = result["cosines"]
    check_s = time.perf_counter() - start
    data = proto.SerializeToString()
    with atomic_output(out_path, folder=False) as tmp:
        tmp.write_bytes(data)
    _, ort = _require()
    notes = [f"layer {n!r} never runs on the example batch, so it is not in the graph"
             for n in config.bits if n not in records]
    check = {"library": "onnxruntime", "version": ort.__version__, "passed": True,
             "layers_checked": len(records), "cosines": list(cosines), "min_cosine": need,
             "worst_cosine": min(cosines, default=1.0),
             "compared": "each layer on ONNX Runtime's input" if int8 else "model outputs"}
    if int8:
        layer_cosines = result["layer_cosines"]
        check["worst_layer_cosine"] = min(layer_cosines.values(), default=1.0)
        if "fp32_cosines" in result:
            check["fp32_cosines"] = result["fp32_cosines"]
    extra = {"opset": opset, "runtime": f"onnxruntime {ort.__version__} (CPU)",
             "accuracy_level": accuracy_level, "export_s": export_s, "check_s": check_s,
             "onnx_layers": {n: r.to_dict() for n, r in records.items()}}
    layers = {n: LayerExport(r.bits, r.scheme, r.format, r.size_bytes)
              for n, r in records.items()}
    return ExportReport("onnx", Path(out_path), len(data), layers, check, tuple(notes), extra)


__all__ = ["INT8_MIN_COSINE", "OPSET", "WEIGHT_ONLY_MIN_COSINE", "OnnxCheckError", "OnnxLayer",
           "build_onnx", "check_onnx", "cosine", "export_onnx", "float_onnx"]
