"""Sensitivity estimators (Hutchinson Hessian trace, FracBits, measured loss change)."""
