"""Per-block FP8 (e4m3) quantization with the block sizes and scale rule of the Ascend kernel contract.

Tensors are BNSD (batch, heads, tokens, head dim). One float32 dequant scale per (batch, head, block of
tokens), covering the whole head dim: x ~= x_fp8 * scale. See shared reference ascend-fp8-attention.md.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from qcompiler.formats import Numerics

# The kernel's block sizes (128 query tokens, 256 key/value tokens per scale) are kernel-contract constants.
from qcompiler.numerics import KV_BLOCK_TOKENS, QUERY_BLOCK_TOKENS  # noqa: F401  (re-exported for quantizers)
from runtime.quant import prepare_qk, register_quantizer

DTYPE = "fp8_e4m3_per_block"

# Largest finite torch.float8_e4m3fn value; the kernel contract's scale rule is scale = amax(block) / 448
# (npu_dynamic_block_quant with dst FLOAT8_E4M3FN).
E4M3_MAX = 448.0
FP8_DTYPE = torch.float8_e4m3fn


def num_blocks(tokens: int, block_tokens: int) -> int:
    return math.ceil(tokens / block_tokens)


def quantize_per_block(x: torch.Tensor, block_tokens: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Quantize a BNSD tensor to e4m3 with one scale per (batch, head, `block_tokens`-token block).

    Returns (x_fp8 [B, N, S, D] float8_e4m3fn, scale [B, N, ceil(S / block_tokens), 1] float32). The last
    block may be partial: it is zero-padded to compute its amax (zeros never raise an amax) and the padding is
    cropped from the result. An all-zero block gets scale 0 and quantizes to zeros.
    """
    batch, heads, tokens, head_dim = x.shape
    blocks = num_blocks(tokens, block_tokens)
    padded = F.pad(x.float(), (0, 0, 0, blocks * block_tokens - tokens))
    grouped = padded.view(batch, heads, blocks, block_tokens, head_dim)
    scale = grouped.abs().amax(dim=(3, 4), keepdim=True) / E4M3_MAX
    divisor = torch.where(scale > 0, scale, torch.ones_like(scale))
    # amax / scale == 448 exactly in real arithmetic; the clamp guards fp32 rounding, since an e4m3fn cast of a
    # value past the format's range gives NaN, not saturation.
    quantized = (grouped / divisor).clamp(-E4M3_MAX, E4M3_MAX).to(FP8_DTYPE)
    quantized = quantized.view(batch, heads, blocks * block_tokens, head_dim)[:, :, :tokens]
    return quantized, scale.view(batch, heads, blocks, 1)


def dequantize_per_block(x_fp8: torch.Tensor, scale: torch.Tensor, block_tokens: int) -> torch.Tensor:
    """x_fp8 * scale in float32, each scale broadcast over its block of tokens and the whole head dim."""
    tokens = x_fp8.shape[2]
    per_token = scale.repeat_interleave(block_tokens, dim=2)[:, :, :tokens]
    return x_fp8.float() * per_token


@dataclass(frozen=True)
class QuantizedAttentionInputs:
    """FP8 q/k/v in BNSD with their float32 per-block dequant scales, as the FIA kernels' mode 7 takes them."""

    query: torch.Tensor
    query_scale: torch.Tensor
    key: torch.Tensor
    key_scale: torch.Tensor
    value: torch.Tensor
    value_scale: torch.Tensor


def quantize_attention_inputs(
    query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, rotation: torch.Tensor | None, numerics: Numerics
) -> QuantizedAttentionInputs:
    """BSND q/k/v (after RoPE and q/k norm) -> rotated, per-block FP8 BNSD tensors and scales."""
    if numerics.dtype != DTYPE:
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


def per_block_kernel_inputs(query, key, value, rotation, numerics):
    return dequantize_attention_inputs(quantize_attention_inputs(query, key, value, rotation, numerics), numerics)


register_quantizer(DTYPE, kernel_inputs=per_block_kernel_inputs)
