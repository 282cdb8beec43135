"""Measured per-layer latency tables for hardware targets."""
