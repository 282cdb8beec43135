"""Sensitivity estimators: how much each layer's quantization to b bits costs (Ω)."""

from __future__ import annotations

from sensitivity._candidates import CandidateWeights, Swapped
from sensitivity._estimate import DEFAULT_BITS, ESTIMATORS, estimate, load_table, make_config
from sensitivity._fracbits import CostConstraint, FracBitsConfig, Relaxation, relax
from sensitivity._hutchinson import HutchinsonConfig, exact_traces, hessian_traces
from sensitivity._measured import MeasuredConfig
from sensitivity._table import SENSITIVITY_FORMAT, LayerSensitivity, SensitivityTable

__all__ = ["DEFAULT_BITS", "ESTIMATORS", "SENSITIVITY_FORMAT", "CandidateWeights",
           "CostConstraint", "Swapped",
           "FracBitsConfig", "HutchinsonConfig", "Relaxation", "relax",
           "LayerSensitivity", "MeasuredConfig", "SensitivityTable", "estimate",
           "exact_traces", "hessian_traces", "load_table", "make_config"]
