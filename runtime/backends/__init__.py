"""Attention backends behind one interface: `native`, `fp8-reference`, `fp8-npu`, `fp8-triton`, and `auto`."""

from __future__ import annotations

from runtime.backends.auto import BACKEND_NAMES, get_backend, resolve_fp8_backend
from runtime.backends.base import FP8_HEAD_DIMS, AttentionBackend
from runtime.backends.fp8_npu import Fp8NpuBackend, npu_unavailable_reason
from runtime.backends.fp8_reference import Fp8ReferenceBackend
from runtime.backends.fp8_triton import Fp8TritonBackend
from runtime.backends.native import NativeBackend

__all__ = [
    "BACKEND_NAMES",
    "FP8_HEAD_DIMS",
    "AttentionBackend",
    "Fp8NpuBackend",
    "Fp8ReferenceBackend",
    "Fp8TritonBackend",
    "NativeBackend",
    "get_backend",
    "npu_unavailable_reason",
    "resolve_fp8_backend",
]
