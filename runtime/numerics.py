"""The numerics a plan fixes (dtype, rotation, seed, block sizes, K mean subtraction, and for
`int8_per_tensor` the V rotation, P scale and scale scope), as a small dataclass."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch

from runtime.quantize import KV_BLOCK_TOKENS, QUERY_BLOCK_TOKENS, dequantize_per_block, quantize_per_block

# The seed vllm-omni passed to msModelSlim's create_rot; our default when no plan says otherwise.
DEFAULT_ROTATION_SEED = 425500
FP8_DTYPE_NAME = "fp8_e4m3_per_block"
INT8_DTYPE_NAME = "int8_per_tensor"
# quant_scale1 of the INT8 kernel: P~ = exp(s - m) in [0, 1] becomes an INT8 in [0, 127] (a2a3-int8.md sec. 5).
INT8_P_SCALE = 127


@dataclass(frozen=True)
class Numerics:
    hadamard_rotation: bool = True
    rotation_seed: int = DEFAULT_ROTATION_SEED
    query_block_tokens: int = QUERY_BLOCK_TOKENS
    kv_block_tokens: int = KV_BLOCK_TOKENS
    k_mean_subtraction: bool = False
    # --- int8_per_tensor only (issue 14); ignored for FP8 dtypes ---
    dtype: str = FP8_DTYPE_NAME
    v_rotation: bool = False  # multiply V by a second Hadamard, O by its transpose afterwards
    p_scale: int = INT8_P_SCALE  # the factor P~ is quantized with
    scale_scope: str = "call"  # "call": one scale per tensor per call; "head": one call (and scale) per head

    @property
    def is_int8(self) -> bool:
        return self.dtype == INT8_DTYPE_NAME

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any], dtype: str = FP8_DTYPE_NAME) -> Numerics:
        """From a plan's (or sensitivity file's) `numerics` and its `dtype`. INT8 plans carry no block sizes."""
        if dtype == INT8_DTYPE_NAME:
            return cls(
                dtype=dtype,
                hadamard_rotation=bool(data["hadamard_rotation"]),
                rotation_seed=int(data["rotation_seed"]),
                k_mean_subtraction=bool(data["k_mean_subtraction"]),
                v_rotation=bool(data["v_rotation"]),
                p_scale=int(data["p_scale"]),
                scale_scope=str(data["scale_scope"]),
            )
        return cls(
            dtype=dtype,
            hadamard_rotation=bool(data["hadamard_rotation"]),
            rotation_seed=int(data["rotation_seed"]),
            query_block_tokens=int(data["query_block_tokens"]),
            kv_block_tokens=int(data["kv_block_tokens"]),
            k_mean_subtraction=bool(data["k_mean_subtraction"]),
        )

    @classmethod
    def int8(cls, *, k_mean_subtraction: bool = True, hadamard_rotation: bool = True, v_rotation: bool = True,
             rotation_seed: int = DEFAULT_ROTATION_SEED, scale_scope: str = "call") -> Numerics:
        """INT8 numerics; the defaults are the recipe defaults (all three transforms on, one scale per call)."""
        return cls(dtype=INT8_DTYPE_NAME, k_mean_subtraction=k_mean_subtraction, hadamard_rotation=hadamard_rotation,
                   v_rotation=v_rotation, rotation_seed=rotation_seed, scale_scope=scale_scope)

    def to_mapping(self) -> dict[str, Any]:
        """The plan/sensitivity `numerics` object for this dtype (inverse of from_mapping)."""
        if self.is_int8:
            return {"hadamard_rotation": self.hadamard_rotation, "rotation_seed": self.rotation_seed,
                    "k_mean_subtraction": self.k_mean_subtraction, "v_rotation": self.v_rotation,
                    "p_scale": self.p_scale, "scale_scope": self.scale_scope}
        return {"hadamard_rotation": self.hadamard_rotation, "rotation_seed": self.rotation_seed,
                "query_block_tokens": self.query_block_tokens, "kv_block_tokens": self.kv_block_tokens,
                "k_mean_subtraction": self.k_mean_subtraction}


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
