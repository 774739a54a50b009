"""The FP8 numerics a plan fixes (rotation, seed, block sizes, K mean subtraction), as a small dataclass."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch

from qcompiler.numerics import DEFAULT_DTYPE, DEFAULT_NUMERICS, DEFAULT_ROTATION_SEED, DTYPES
from runtime.quantize import dequantize_per_block, quantize_per_block

# Defaults come from qcompiler.numerics, the one record the compiler writes plans from.
_DEFAULT_SPEC = DTYPES[DEFAULT_DTYPE]


@dataclass(frozen=True)
class Numerics:
    hadamard_rotation: bool = DEFAULT_NUMERICS["hadamard_rotation"]
    rotation_seed: int = DEFAULT_ROTATION_SEED
    query_block_tokens: int = _DEFAULT_SPEC.query_block_tokens
    kv_block_tokens: int = _DEFAULT_SPEC.kv_block_tokens
    k_mean_subtraction: bool = DEFAULT_NUMERICS["k_mean_subtraction"]

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any]) -> Numerics:
        return cls(
            hadamard_rotation=bool(data["hadamard_rotation"]),
            rotation_seed=int(data["rotation_seed"]),
            query_block_tokens=int(data["query_block_tokens"]),
            kv_block_tokens=int(data["kv_block_tokens"]),
            k_mean_subtraction=bool(data["k_mean_subtraction"]),
        )


@dataclass(frozen=True)
class QuantizedAttentionInputs:
    """FP8 q/k/v in BNSD with their float32 dequant scales, as the kernel takes them."""

    query: torch.Tensor
    query_scale: torch.Tensor
    key: torch.Tensor
    key_scale: torch.Tensor
    value: torch.Tensor
    value_scale: torch.Tensor


def quantize_attention_inputs(
    query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, rotation: torch.Tensor | None, numerics: Numerics
) -> QuantizedAttentionInputs:
    """BSND q/k/v (after RoPE and q/k norm) -> rotated, per-block quantized BNSD tensors and scales."""
    query, key, value = (t.transpose(1, 2) for t in (query, key, value))
    if numerics.k_mean_subtraction:
        # Exact for softmax: subtracting K's mean over tokens adds a per-query constant to every score.
        key = key - key.mean(dim=2, keepdim=True)
    if rotation is not None:
        # Same orthogonal R on Q and K: (QR)(KR)^T = QK^T. V is not rotated.
        query = query @ rotation
        key = key @ rotation
    q8, q_scale = quantize_per_block(query, numerics.query_block_tokens)
    k8, k_scale = quantize_per_block(key, numerics.kv_block_tokens)
    v8, v_scale = quantize_per_block(value, numerics.kv_block_tokens)
    return QuantizedAttentionInputs(q8, q_scale, k8, k_scale, v8, v_scale)


def dequantize_attention_inputs(
    quantized: QuantizedAttentionInputs, numerics: Numerics
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """float32 BNSD q, k, v from their FP8 forms."""
    return (
        dequantize_per_block(quantized.query, quantized.query_scale, numerics.query_block_tokens),
        dequantize_per_block(quantized.key, quantized.key_scale, numerics.kv_block_tokens),
        dequantize_per_block(quantized.value, quantized.value_scale, numerics.kv_block_tokens),
    )
