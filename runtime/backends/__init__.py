"""Attention backends behind one interface: `native`, `fp8-reference`, `fp8-npu`, `int8-reference`, `int8-npu`
(runtime/backends/int8_*.py, imported lazily by the registry) and `auto` selection."""

from __future__ import annotations

from runtime.backends.auto import BACKEND_NAMES, get_backend, reference_backend_name, resolve_fp8_backend
from runtime.backends.base import FP8_HEAD_DIMS, AttentionBackend
from runtime.backends.fp8_npu import Fp8NpuBackend, npu_unavailable_reason
from runtime.backends.fp8_reference import Fp8ReferenceBackend
from runtime.backends.native import NativeBackend

__all__ = [
    "BACKEND_NAMES",
    "FP8_HEAD_DIMS",
    "AttentionBackend",
    "Fp8NpuBackend",
    "Fp8ReferenceBackend",
    "NativeBackend",
    "get_backend",
    "npu_unavailable_reason",
    "reference_backend_name",
    "resolve_fp8_backend",
]
