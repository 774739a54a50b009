"""Quantization numerics of the attention dtypes (int8.py: int8_per_tensor, issue 14)."""
