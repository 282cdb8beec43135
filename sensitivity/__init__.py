"""Sensitivity estimators: how much each layer's quantization to b bits costs (Ω).

`estimate(spec, "hutchinson")` runs a registered estimator through the table cache; each
estimator is a `BaseSensitivityEstimator` built from its frozen config and registered by
name (`ESTIMATORS`) and by config type (`estimator_for`). Layer-parallel estimators can be
computed in chunks of layers anywhere (`use_chunk_executor`, `ChunkedEstimate`).
"""

from __future__ import annotations

from sensitivity._base import (
    ESTIMATORS,
    BaseSensitivityEstimator,
    ProgressFn,
    estimator_for,
    make_config,
    register_estimator,
)
from sensitivity._candidates import CandidateWeights, Swapped, calibration_loss
from sensitivity._chunks import (
    ChunkedEstimate,
    ChunkExecutor,
    ChunkStopped,
    InProcessChunkExecutor,
    KeyedChunks,
    current_chunk_executor,
    plan_chunks,
    use_chunk_executor,
)
from sensitivity._estimate import chunked_estimate, estimate, hash_tensors
from sensitivity._fisher import FisherConfig, FisherEstimator, curvature_sampler
from sensitivity._fracbits import (
    CostConstraint,
    FracBitsConfig,
    FracBitsEstimator,
    Relaxation,
    relax,
)
from sensitivity._hutchinson import (
    HutchinsonConfig,
    HutchinsonEstimator,
    exact_traces,
    hessian_traces,
    math_attention,
)
from sensitivity._integrity import CORRUPTIONS, IntegrityReport, check_cache_integrity
from sensitivity._measured import MeasuredConfig, MeasuredEstimator
from sensitivity._table import SENSITIVITY_FORMAT, LayerSensitivity, SensitivityTable
from sensitivity._weight_error import weight_errors

# The built-in estimators, in the order the CLI and the service list them.
register_estimator(HutchinsonEstimator,
                   description="Hessian trace by Hutchinson probes x weight error (HAWQ-V3)")
register_estimator(MeasuredEstimator,
                   description="loss change with one layer quantized on the engine")
register_estimator(FracBitsEstimator,
                   description="learned fractional bits under a mean-bits budget (FracBits)")
register_estimator(FisherEstimator,
                   description="output error weighted by the loss's Fisher / Gauss-Newton "
                               "curvature (one backward pass)")

__all__ = [
    "CORRUPTIONS", "ESTIMATORS", "SENSITIVITY_FORMAT", "IntegrityReport",
    "check_cache_integrity", "BaseSensitivityEstimator", "CandidateWeights",
    "ChunkExecutor", "ChunkStopped", "ChunkedEstimate", "InProcessChunkExecutor", "KeyedChunks",
    "chunked_estimate", "current_chunk_executor", "plan_chunks", "use_chunk_executor",
    "CostConstraint", "FisherConfig", "FisherEstimator", "FracBitsConfig",
    "FracBitsEstimator", "HutchinsonConfig",
    "HutchinsonEstimator", "LayerSensitivity", "MeasuredConfig", "MeasuredEstimator",
    "ProgressFn", "Relaxation", "SensitivityTable", "Swapped", "calibration_loss",
    "curvature_sampler", "estimate",
    "estimator_for", "exact_traces", "hash_tensors", "hessian_traces", "make_config",
    "math_attention", "register_estimator", "relax", "weight_errors",
]
