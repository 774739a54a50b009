"""Attention backends behind one interface (base.py), each one module that registers itself with what it serves
(`@register_backend`, registry.py): `native`, `reference` (alias `fp8-reference`), the NPU entry points
`npu-quant-attention`, `npu-mindiesd-fia`, `npu-torch-fia` (alias `fp8-npu`), `int8-npu`, the GPU kernel
`fp8-triton`, and `auto`. qcompiler/backends.json is their torch-free manifest (manifest.py writes it).

Importing the package imports nothing else: the names below load their module on first use, and the registry
imports every backend module when it is first asked."""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "AttentionBackend": "base",
    "QuantizedBackend": "base",
    "Fp8TritonBackend": "fp8_triton",
    "Int8NpuBackend": "int8_npu",
    "NativeBackend": "native",
    "ascend_fp8_reason": "npu_device",
    "NpuMindiesdFiaBackend": "npu_mindiesd_fia",
    "NpuQuantAttentionBackend": "npu_quant_attention",
    "NpuTorchFiaBackend": "npu_torch_fia",
    "ReferenceBackend": "reference",
    "BACKENDS": "registry",
    "BACKEND_NAMES": "registry",
    "BackendRegistrationError": "registry",
    "BackendSpec": "registry",
    "backend_names": "registry",
    "backends": "registry",
    "canonical_name": "registry",
    "register_backend": "registry",
    "resolve_quantized_backend": "registry",
    "unregister_backend": "registry",
}

__all__ = sorted(_EXPORTS)


def __getattr__(attribute: str) -> Any:
    if attribute not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {attribute!r}")
    # Not cached for BACKENDS / BACKEND_NAMES: the registry computes them on each access.
    return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[attribute]}"), attribute)


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])
