"""Attention backends behind one interface (base.py), each one module that registers itself with what it serves
(`@register_backend`, registry.py): `native`, `reference` (alias `fp8-reference`), the NPU entry points
`npu-quant-attention`, `npu-mindiesd-fia`, `npu-torch-fia` (alias `fp8-npu`), `int8-npu`, the GPU kernel
`fp8-triton`, and `auto`. qcompiler/backends.json is their torch-free manifest (manifest.py writes it)."""

from __future__ import annotations

from typing import Any

from runtime.backends.base import AttentionBackend, QuantizedBackend
from runtime.backends.fp8_triton import Fp8TritonBackend
from runtime.backends.int8_npu import Int8NpuBackend
from runtime.backends.native import NativeBackend
from runtime.backends.npu_device import ascend_fp8_reason
from runtime.backends.npu_mindiesd_fia import NpuMindiesdFiaBackend
from runtime.backends.npu_quant_attention import NpuQuantAttentionBackend
from runtime.backends.npu_torch_fia import NpuTorchFiaBackend
from runtime.backends.reference import ReferenceBackend
from runtime.backends.registry import (
    BackendRegistrationError,
    BackendSpec,
    backend_names,
    backends,
    canonical_name,
    register_backend,
    resolve_quantized_backend,
    unregister_backend,
)

__all__ = [
    "BACKENDS",
    "BACKEND_NAMES",
    "AttentionBackend",
    "BackendRegistrationError",
    "BackendSpec",
    "Fp8TritonBackend",
    "Int8NpuBackend",
    "NativeBackend",
    "NpuMindiesdFiaBackend",
    "NpuQuantAttentionBackend",
    "NpuTorchFiaBackend",
    "QuantizedBackend",
    "ReferenceBackend",
    "ascend_fp8_reason",
    "backend_names",
    "backends",
    "canonical_name",
    "register_backend",
    "resolve_quantized_backend",
    "unregister_backend",
]


def __getattr__(attribute: str) -> Any:
    # BACKENDS / BACKEND_NAMES are computed on each access (registry.py), so later registrations show.
    if attribute in ("BACKENDS", "BACKEND_NAMES"):
        from runtime.backends import registry

        return getattr(registry, attribute)
    raise AttributeError(f"module {__name__!r} has no attribute {attribute!r}")
