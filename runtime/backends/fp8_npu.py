"""FP8 attention on Ascend 950 through torch_npu.npu_fused_infer_attention_score_v2 (per-block mode 7).

torch_npu needs the CANN toolkit, so it is imported lazily and only here. The call follows the contract in the
shared reference (ascend-fp8-attention.md). Nothing in this repository has run it on an NPU: CPU tests check the
call contract with a stand-in op, and a test marked `npu` compares it with fp8-reference on real hardware.
"""

from __future__ import annotations

import importlib
import importlib.util
import math
from collections.abc import Callable
from typing import Any

import torch

from runtime.backends.base import Fp8Backend
from runtime.numerics import Numerics, quantize_attention_inputs
from runtime.quantize import KV_BLOCK_TOKENS, QUERY_BLOCK_TOKENS

OP_NAME = "npu_fused_infer_attention_score_v2"
# query/key/value_quant_mode = 7: per-block FP8 full quantization (all three must be 7).
PER_BLOCK_FP8_QUANT_MODE = 7
# INT32_MAX for pre_tokens/next_tokens: no band limit, i.e. full bidirectional attention (no causal mask).
NO_BAND_LIMIT = 2**31 - 1
# Layout the op is called with; diffusers hands q/k/v as BSND, so we transpose in and out.
INPUT_LAYOUT = "BNSD"
# SoC names with FP8 attention (Ascend 950PR / 950DT); A2 (910B) and A3 (910C) have none.
FP8_SOC_MARKER = "950"


def npu_unavailable_reason() -> str | None:
    """None when torch_npu imports, an NPU is visible and it is an FP8-capable Ascend 950, else why not."""
    if importlib.util.find_spec("torch_npu") is None:
        return "torch_npu is not installed (pip install the project's npu extra on an Ascend machine with CANN)"
    try:
        torch_npu = importlib.import_module("torch_npu")
    except Exception as exc:  # an import failure without CANN is an environment fact, not a bug of ours
        return f"torch_npu failed to import: {exc}"
    if not torch.npu.is_available():  # type: ignore[attr-defined]
        return "torch_npu is installed but no NPU is visible"
    name = torch_npu.npu.get_device_name(0)
    if FP8_SOC_MARKER not in name:
        return f"{name} has no FP8 attention (per-block FP8 needs an Ascend 950PR/950DT; A2/A3 offer INT8 only)"
    if not hasattr(torch_npu, OP_NAME):
        return f"this torch_npu has no {OP_NAME}"
    return None


def _default_op() -> Callable[..., Any]:
    return getattr(importlib.import_module("torch_npu"), OP_NAME)


class Fp8NpuBackend(Fp8Backend):
    """`op` defaults to torch_npu's kernel, resolved on first use; tests pass a stand-in to check the call."""

    name = "fp8-npu"

    def __init__(self, numerics: Numerics | None = None, op: Callable[..., Any] | None = None):
        self.numerics = numerics or Numerics()
        self._op = op

    def unavailable_reason(self) -> str | None:
        if self._op is not None:
            return None
        return npu_unavailable_reason()

    def unsupported_reason(self, head_dim: int) -> str | None:
        reason = super().unsupported_reason(head_dim)
        if reason is None and (self.numerics.query_block_tokens, self.numerics.kv_block_tokens) != (
            QUERY_BLOCK_TOKENS,
            KV_BLOCK_TOKENS,
        ):
            reason = (
                f"the kernel's blocks are {QUERY_BLOCK_TOKENS} query / {KV_BLOCK_TOKENS} key-value tokens, the plan "
                f"asks {self.numerics.query_block_tokens} / {self.numerics.kv_block_tokens}"
            )
        if reason is None and self.numerics.pv_precision != "e4m3":
            reason = f"the NPU kernel computes P @ V with e4m3 P; the plan asks pv_precision={self.numerics.pv_precision}"
        return reason

    def attend(
        self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, rotation: torch.Tensor | None
    ) -> torch.Tensor:
        if self._op is None:
            self._op = _default_op()
        batch, tokens, heads, head_dim = query.shape
        q = quantize_attention_inputs(query, key, value, rotation, self.numerics)  # BNSD fp8 + scales
        out, _softmax_lse = self._op(
            q.query,
            q.key,
            q.value,
            dequant_scale_query=q.query_scale,  # [B, N, ceil(S_q/128), 1] float32
            dequant_scale_key=q.key_scale,  # [B, N, ceil(S_kv/256), 1] float32
            dequant_scale_value=q.value_scale,  # [B, N, ceil(S_kv/256), 1] float32
            num_query_heads=heads,
            num_key_value_heads=heads,
            softmax_scale=1.0 / math.sqrt(head_dim),  # the op defaults to 1.0, not 1/sqrt(D)
            pre_tokens=NO_BAND_LIMIT,
            next_tokens=NO_BAND_LIMIT,
            input_layout=INPUT_LAYOUT,
            sparse_mode=0,
            query_quant_mode=PER_BLOCK_FP8_QUANT_MODE,
            key_quant_mode=PER_BLOCK_FP8_QUANT_MODE,
            value_quant_mode=PER_BLOCK_FP8_QUANT_MODE,
            out_dtype=query.dtype,  # without it an FP8 input yields fp16
        )
        # BNSD -> BSND; crop to the caller's token count in case the kernel returns padded rows.
        return out.transpose(1, 2)[:, :tokens]
