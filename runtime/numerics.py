"""The FP8 numerics a plan fixes (rotation, seed, block sizes, K mean subtraction), as a small dataclass."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch

from runtime.quantize import KV_BLOCK_TOKENS, QUERY_BLOCK_TOKENS, dequantize_per_block, quantize_per_block

# The seed vllm-omni passed to msModelSlim's create_rot; our default when no plan says otherwise.
DEFAULT_ROTATION_SEED = 425500
# Precision of the softmax probabilities P in the P @ V product: "e4m3" (P * 448 cast to e4m3, as the NPU kernel
# does; the default, also when a plan omits the key) or "fp16" (GPU kernel only).
PV_PRECISIONS = ("e4m3", "fp16")
DEFAULT_PV_PRECISION = "e4m3"
# With "e4m3", P (in [0, 1]) is scaled onto e4m3's full range [0, 448] before rounding, so small probabilities
# keep 3 mantissa bits instead of falling into e4m3's subnormals; the 1/448 is folded into V's dequant scale.
P_E4M3_SCALE = 448.0


@dataclass(frozen=True)
class Numerics:
    hadamard_rotation: bool = True
    rotation_seed: int = DEFAULT_ROTATION_SEED
    query_block_tokens: int = QUERY_BLOCK_TOKENS
    kv_block_tokens: int = KV_BLOCK_TOKENS
    k_mean_subtraction: bool = False
    pv_precision: str = DEFAULT_PV_PRECISION

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any]) -> Numerics:
        return cls(
            hadamard_rotation=bool(data["hadamard_rotation"]),
            rotation_seed=int(data["rotation_seed"]),
            query_block_tokens=int(data["query_block_tokens"]),
            kv_block_tokens=int(data["kv_block_tokens"]),
            k_mean_subtraction=bool(data["k_mean_subtraction"]),
            pv_precision=str(data.get("pv_precision", DEFAULT_PV_PRECISION)),
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
