"""Quantizers for attention inputs, registered per format (qcompiler/formats/<dtype>.py names the format):
per-block FP8 (per_block.py), OCP MX formats (mx.py), per-tensor INT8 with its CPU reference of the Atlas A2/A3
kernel (int8.py); the Q/K rotation applied before them (rotation.py) and SageAttention references (sage.py).

A quantizer module registers what it serves with `register_quantizer(dtype, ...)` at import; `quantizer(dtype)`
imports the package's modules on first use, so adding a format's runtime side is adding one module here.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

# (BSND q, k, v, rotation, numerics) -> float32 BNSD q, k, v as that format's kernel computes with them
# (quantized, then dequantized), for formats whose kernel dequantizes and then attends.
KernelInputs = Callable[..., tuple[torch.Tensor, torch.Tensor, torch.Tensor]]
# (BSND q, k, v, rotation, numerics) -> BSND output: the whole attention, for formats that quantize inside the
# kernel too (int8_per_tensor's INT8 softmax).
AttentionReference = Callable[..., torch.Tensor]


@dataclass(frozen=True)
class Quantizer:
    """What the runtime has for one format: `kernel_inputs` (dequantize-then-attend formats) and/or
    `attention_reference` (a CPU reference of the whole quantized attention)."""

    dtype: str
    kernel_inputs: KernelInputs | None = None
    attention_reference: AttentionReference | None = None


QUANTIZERS: dict[str, Quantizer] = {}
_discovered = False


def register_quantizer(dtype: str, *, kernel_inputs: KernelInputs | None = None,
                       attention_reference: AttentionReference | None = None) -> Quantizer:
    """Register the runtime side of format `dtype` (a name of qcompiler.formats.FORMATS)."""
    from qcompiler.formats import FORMATS

    if dtype not in FORMATS:
        raise ValueError(f"quantizer for unknown format {dtype!r}; add qcompiler/formats/{dtype}.py first")
    if kernel_inputs is None and attention_reference is None:
        raise ValueError(f"quantizer for {dtype!r} gives neither kernel_inputs nor attention_reference")
    entry = Quantizer(dtype, kernel_inputs, attention_reference)
    QUANTIZERS[dtype] = entry
    return entry


def _discover() -> None:
    global _discovered
    if _discovered:
        return
    _discovered = True
    for module in pkgutil.iter_modules(__path__):
        importlib.import_module(f"{__name__}.{module.name}")


def quantizer(dtype: str) -> Quantizer:
    """The registered runtime side of `dtype`; KeyError naming the registered ones otherwise."""
    _discover()
    try:
        return QUANTIZERS[dtype]
    except KeyError:
        raise KeyError(f"no quantizer is registered for dtype {dtype!r} (registered: {', '.join(QUANTIZERS)}); "
                       f"a runtime/quant/ module registers it with register_quantizer") from None


def registered_quantizers() -> dict[str, Quantizer]:
    _discover()
    return dict(QUANTIZERS)


def prepare_qk(query: torch.Tensor, key: torch.Tensor, rotation: torch.Tensor | None,
               numerics: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """K mean subtraction (when the plan asks) and the rotation of Q and K, on BSND, before any quantizer."""
    if numerics.k_mean_subtraction:
        # Exact for softmax: subtracting K's mean over tokens adds a per-query constant to every score.
        key = key - key.mean(dim=1, keepdim=True)
    if rotation is not None:
        # Same orthogonal R on Q and K: (QR)(KR)^T = QK^T. V is not rotated.
        query = query @ rotation
        key = key @ rotation
    return query, key
