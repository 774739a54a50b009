"""The numerics a plan fixes (dtype, rotation, seed, block sizes, K mean subtraction, and for int8_per_tensor the V
rotation, P scale and scale scope), as a small dataclass, and the one place that turns BSND attention inputs into
what each dequantize-then-attend dtype's kernel computes with (int8_per_tensor also quantizes the softmax inside
its kernel, so its reference is runtime/quant/int8.py)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch

from qcompiler.numerics import (
    DEFAULT_DTYPE,
    DEFAULT_INT8_NUMERICS,
    DEFAULT_NUMERICS,
    DEFAULT_PV_PRECISION,
    DEFAULT_ROTATION_SEED,
    DTYPES,
    INT8_DTYPE,
    INT8_SCALE_SCOPES,
    KV_BLOCK_TOKENS,
    P_E4M3_SCALE,  # noqa: F401  (re-exported for the reference and Triton backends)
    PV_PRECISIONS,  # noqa: F401
    QUERY_BLOCK_TOKENS,
    plan_numerics,
)
from runtime.quant.mx import mxfp4_attention_inputs, mxfp8_attention_inputs
from runtime.quant.per_block import dequantize_per_block, quantize_per_block


@dataclass(frozen=True)
class Numerics:
    hadamard_rotation: bool = DEFAULT_NUMERICS["hadamard_rotation"]
    rotation_seed: int = DEFAULT_ROTATION_SEED
    query_block_tokens: int = QUERY_BLOCK_TOKENS
    kv_block_tokens: int = KV_BLOCK_TOKENS
    k_mean_subtraction: bool = DEFAULT_NUMERICS["k_mean_subtraction"]
    dtype: str = DEFAULT_DTYPE
    pv_precision: str = DEFAULT_PV_PRECISION  # fp8_e4m3_per_block only (QC152 refuses it elsewhere)
    # int8_per_tensor only (ignored for the other dtypes; qcompiler.numerics.DEFAULT_INT8_NUMERICS):
    v_rotation: bool = DEFAULT_INT8_NUMERICS["v_rotation"]  # V times a second Hadamard, the output times its transpose
    p_scale: int = DEFAULT_INT8_NUMERICS["p_scale"]  # the factor P~ = exp(s - max) is quantized with
    scale_scope: str = DEFAULT_INT8_NUMERICS["scale_scope"]  # "call": one scale per tensor per call; "head": per head

    def __post_init__(self) -> None:
        if self.dtype not in DTYPES:
            raise ValueError(f"unknown quantized attention dtype {self.dtype!r}; choose one of {', '.join(DTYPES)}")
        if self.pv_precision not in PV_PRECISIONS:
            raise ValueError(f"pv_precision {self.pv_precision!r} is not one of {', '.join(PV_PRECISIONS)}")
        if self.scale_scope not in INT8_SCALE_SCOPES:
            raise ValueError(f"scale scope {self.scale_scope!r}; choose one of {', '.join(INT8_SCALE_SCOPES)}")

    @property
    def is_int8(self) -> bool:
        return self.dtype == INT8_DTYPE

    @classmethod
    def for_dtype(cls, dtype: str, **given: Any) -> Numerics:
        """`dtype`'s numerics with the recipe defaults (qcompiler.numerics.plan_numerics) for what `given` leaves
        out: what a recipe with `numerics: {given}` compiles to."""
        return cls.from_mapping(plan_numerics(dtype, given), dtype=dtype)

    @classmethod
    def int8(cls, **given: Any) -> Numerics:
        """int8_per_tensor numerics, recipe defaults for what `given` leaves out (all three transforms on)."""
        return cls.for_dtype(INT8_DTYPE, **given)

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any], *, dtype: str) -> Numerics:
        """From a plan's `numerics` block; `dtype` is the plan's top-level `dtype` (required, so a caller cannot
        forget it and run an MX plan as per-block FP8). int8_per_tensor plans carry no block sizes."""
        if dtype == INT8_DTYPE:
            return cls(
                hadamard_rotation=bool(data["hadamard_rotation"]),
                rotation_seed=int(data["rotation_seed"]),
                k_mean_subtraction=bool(data["k_mean_subtraction"]),
                dtype=dtype,
                v_rotation=bool(data["v_rotation"]),
                p_scale=int(data["p_scale"]),
                scale_scope=str(data["scale_scope"]),
            )
        return cls(
            hadamard_rotation=bool(data["hadamard_rotation"]),
            rotation_seed=int(data["rotation_seed"]),
            query_block_tokens=int(data["query_block_tokens"]),
            kv_block_tokens=int(data["kv_block_tokens"]),
            k_mean_subtraction=bool(data["k_mean_subtraction"]),
            dtype=dtype,
            pv_precision=str(data.get("pv_precision", DEFAULT_PV_PRECISION)),
        )

    @classmethod
    def from_plan(cls, plan: Any) -> Numerics:
        """From a loaded qcompiler Plan (its `numerics` block and its `dtype`)."""
        return cls.from_mapping(plan.numerics, dtype=plan.data["dtype"])

    def to_mapping(self) -> dict[str, Any]:
        """The plan's `numerics` object for this dtype (inverse of from_mapping)."""
        common = {"hadamard_rotation": self.hadamard_rotation, "rotation_seed": self.rotation_seed,
                  "k_mean_subtraction": self.k_mean_subtraction}
        if self.is_int8:
            return {**common, "v_rotation": self.v_rotation, "p_scale": self.p_scale, "scale_scope": self.scale_scope}
        return {**common, "query_block_tokens": self.query_block_tokens, "kv_block_tokens": self.kv_block_tokens}


@dataclass(frozen=True)
class QuantizedAttentionInputs:
    """FP8 q/k/v in BNSD with their float32 per-block dequant scales, as the FIA kernels' mode 7 takes them."""

    query: torch.Tensor
    query_scale: torch.Tensor
    key: torch.Tensor
    key_scale: torch.Tensor
    value: torch.Tensor
    value_scale: torch.Tensor


def prepare_qk(
    query: torch.Tensor, key: torch.Tensor, rotation: torch.Tensor | None, numerics: Numerics
) -> tuple[torch.Tensor, torch.Tensor]:
    """K mean subtraction (when the plan asks) and the rotation of Q and K, on BSND, before any quantizer."""
    if numerics.k_mean_subtraction:
        # Exact for softmax: subtracting K's mean over tokens adds a per-query constant to every score.
        key = key - key.mean(dim=1, keepdim=True)
    if rotation is not None:
        # Same orthogonal R on Q and K: (QR)(KR)^T = QK^T. V is not rotated.
        query = query @ rotation
        key = key @ rotation
    return query, key


def quantize_attention_inputs(
    query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, rotation: torch.Tensor | None, numerics: Numerics
) -> QuantizedAttentionInputs:
    """BSND q/k/v (after RoPE and q/k norm) -> rotated, per-block FP8 BNSD tensors and scales."""
    if numerics.dtype != "fp8_e4m3_per_block":
        raise ValueError(f"per-block FP8 quantization asked for a {numerics.dtype} plan")
    query, key = prepare_qk(query, key, rotation, numerics)
    query, key, value = (t.transpose(1, 2) for t in (query, key, value))
    q8, q_scale = quantize_per_block(query, numerics.query_block_tokens)
    k8, k_scale = quantize_per_block(key, numerics.kv_block_tokens)
    v8, v_scale = quantize_per_block(value, numerics.kv_block_tokens)
    return QuantizedAttentionInputs(q8, q_scale, k8, k_scale, v8, v_scale)


def dequantize_attention_inputs(
    quantized: QuantizedAttentionInputs, numerics: Numerics
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """float32 BNSD q, k, v from their per-block FP8 forms."""
    return (
        dequantize_per_block(quantized.query, quantized.query_scale, numerics.query_block_tokens),
        dequantize_per_block(quantized.key, quantized.key_scale, numerics.kv_block_tokens),
        dequantize_per_block(quantized.value, quantized.value_scale, numerics.kv_block_tokens),
    )


def _per_block_inputs(query, key, value, rotation, numerics):
    return dequantize_attention_inputs(quantize_attention_inputs(query, key, value, rotation, numerics), numerics)


def _mx_inputs(quantizer):
    def inputs(query, key, value, rotation, numerics):
        query, key = prepare_qk(query, key, rotation, numerics)
        return tuple(t.transpose(1, 2) for t in quantizer(query, key, value))
    return inputs


# dtype -> (BSND q, k, v, rotation, numerics) -> float32 BNSD q, k, v as that dtype's kernel sees them.
# One row per qcompiler.numerics.DTYPES row (a test checks the two tables agree).
KERNEL_INPUTS = {
    "fp8_e4m3_per_block": _per_block_inputs,
    "mxfp8_e4m3": _mx_inputs(mxfp8_attention_inputs),
    "mxfp4_e2m1": _mx_inputs(mxfp4_attention_inputs),
}


def kernel_attention_inputs(
    query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, rotation: torch.Tensor | None, numerics: Numerics
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """BSND q/k/v -> the float32 BNSD q, k, v the plan's kernel computes with (quantized, then dequantized).

    For mxfp4_e2m1 the sequences stay padded to a multiple of 512 (the kernel attends to the padded keys:
    runtime/quant/mx.py); crop the output to the query's token count.
    """
    return KERNEL_INPUTS[numerics.dtype](query, key, value, rotation, numerics)
