"""Quantizers for attention inputs: per-block FP8 (per_block.py), OCP MX formats (mx.py), per-tensor INT8 with its
CPU reference of the Atlas A2/A3 kernel (int8.py), and the Q/K rotation applied before them (rotation.py)."""
