"""Attention backends behind one interface (base.py), by name in one registry (registry.py): `native`,
`reference` (alias `fp8-reference`), the NPU entry points `npu-quant-attention`, `npu-mindiesd-fia`,
`npu-torch-fia` (alias `fp8-npu`), and `auto`."""

from __future__ import annotations

from runtime.backends.base import FP8_HEAD_DIMS, QUANTIZED_HEAD_DIMS, AttentionBackend, QuantizedBackend
from runtime.backends.native import NativeBackend
from runtime.backends.npu_device import ascend_fp8_reason
from runtime.backends.npu_mindiesd_fia import NpuMindiesdFiaBackend
from runtime.backends.npu_quant_attention import NpuQuantAttentionBackend
from runtime.backends.npu_torch_fia import Fp8NpuBackend, NpuTorchFiaBackend
from runtime.backends.reference import Fp8ReferenceBackend, ReferenceBackend
from runtime.backends.registry import BACKEND_NAMES, BACKENDS, canonical_name, resolve_fp8_backend

__all__ = [
    "BACKENDS",
    "BACKEND_NAMES",
    "FP8_HEAD_DIMS",
    "QUANTIZED_HEAD_DIMS",
    "AttentionBackend",
    "Fp8NpuBackend",
    "Fp8ReferenceBackend",
    "NativeBackend",
    "NpuMindiesdFiaBackend",
    "NpuQuantAttentionBackend",
    "NpuTorchFiaBackend",
    "QuantizedBackend",
    "ReferenceBackend",
    "ascend_fp8_reason",
    "canonical_name",
    "resolve_fp8_backend",
]
