"""Quantizers for attention inputs: per-block FP8 (per_block.py), OCP MX formats (mx.py), and the Q/K rotation
applied before either (rotation.py)."""
