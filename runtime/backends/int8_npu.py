"""`int8-npu`: int8_per_tensor attention on Atlas A2 (910B) / A3 (910C) through torch_npu's FIA v1
`npu_fused_infer_attention_score` in full-quant mode (INT8 q/k/v, per-tensor scales, INT8 softmax).

The call follows shared reference a2a3-int8.md sec. 5. Scales are computed on the device (no .item(), no host
synchronisation). Nothing in this repository has run it on an NPU: CPU tests check the call contract with a
stand-in op that records its arguments, and a test marked `a2a3` compares the op with the CPU reference
(runtime/quant/int8.py, served as the `reference` backend) on a real A2/A3, under every inferred kernel semantics,
to settle them. Registered below: `auto` tries it, and it serves only
int8_per_tensor plans and only on an A2/A3 SoC. Like the FP8 entry points it makes one probe call at load
(npu_device.probe_reason), so a CANN stack that rejects the call leads to the plan's fallback policy at load,
never to an error mid-pipeline.
"""

from __future__ import annotations

import importlib
import math
from collections.abc import Callable
from typing import Any

import torch

from qcompiler.formats.int8_per_tensor import NAME as INT8_DTYPE
from runtime.backends.base import INT8_KERNEL_HEAD_DIMS
from runtime.backends.npu_device import NpuBackend, visible_npu
from runtime.backends.registry import register_backend
from runtime.numerics import Numerics
from runtime.quant.int8 import DEFAULT_SEMANTICS, KernelSemantics, prepare_int8_inputs, undo_v_rotation

OP_NAME = "npu_fused_infer_attention_score"
# INT32_MAX for pre_tokens/next_tokens: no band limit, i.e. full bidirectional attention (no causal mask).
NO_BAND_LIMIT = 2**31 - 1
INPUT_LAYOUT = "BNSD"
# SoC names (torch_npu.npu.get_device_name) of the chips with this INT8 kernel and no FP8: Atlas A2 is
# Ascend910B1..B4, Atlas A3 is Ascend910_93xx (sold as 910C). An op being registered is not support (the
# 950's build registers it too, and older 910A/910ProB lack the full-quant path), so we go by SoC name.
A2A3_SOC_PREFIXES = ("Ascend910B", "Ascend910_93", "Ascend910C")


def is_a2a3_soc(name: str) -> bool:
    return name.startswith(A2A3_SOC_PREFIXES)


def int8_npu_unavailable_reason() -> str | None:
    """None when torch_npu imports, an NPU is visible and it is an Atlas A2/A3, else why not."""
    torch_npu, name, reason = visible_npu()
    if reason is not None:
        return reason
    if not is_a2a3_soc(name):
        return f"{name} is not an Atlas A2/A3 (910B/910C): int8_per_tensor attention runs only there"
    if not hasattr(torch_npu, OP_NAME):
        return f"this torch_npu has no {OP_NAME}"
    return None


@register_backend(
    "int8-npu", auto_order=50, devices=("npu",),
    dtypes=(INT8_DTYPE,), head_dims=INT8_KERNEL_HEAD_DIMS, pv_precisions=("e4m3",),
    summary="torch_npu npu_fused_infer_attention_score full-quant INT8 (int8_per_tensor; Atlas A2/A3 only)",
)
class Int8NpuBackend(NpuBackend):
    """`op` defaults to torch_npu's kernel, resolved on first use; tests pass a stand-in to check the call.
    `semantics` only decides which quant_scale1 is passed (127 if the kernel multiplies, 1/127 if it divides)."""

    def __init__(self, numerics: Numerics | None = None, op: Callable[..., Any] | None = None,
                 semantics: KernelSemantics = DEFAULT_SEMANTICS):
        super().__init__(numerics or Numerics.int8(), op)
        self.semantics = semantics

    def environment_reason(self) -> str | None:
        return int8_npu_unavailable_reason()

    def resolve_op(self) -> Callable[..., Any]:
        return getattr(importlib.import_module("torch_npu"), OP_NAME)

    def _call(self, q8: torch.Tensor, k8: torch.Tensor, v8: torch.Tensor, dequant1: torch.Tensor,
              dequant2: torch.Tensor, quant1: torch.Tensor) -> torch.Tensor:
        heads, head_dim = q8.shape[1], q8.shape[-1]
        out = self.op()(
            q8, k8, v8,
            num_heads=heads,
            input_layout=INPUT_LAYOUT,
            scale=1.0 / math.sqrt(head_dim),  # the op defaults to 1.0, not 1/sqrt(D)
            pre_tokens=NO_BAND_LIMIT,
            next_tokens=NO_BAND_LIMIT,
            sparse_mode=0,
            dequant_scale1=dequant1,  # s_q * s_k, shape {1}, float32: dequantizes the INT32 QK result
            quant_scale1=quant1,  # P~ -> INT8 factor, shape {1}, float32
            dequant_scale2=dequant2,  # s_v / 127, shape {1}, float32: dequantizes the P8 V8 result
        )
        return out[0]  # (attention_out fp16, softmax_lse)

    def attend(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
               rotation: torch.Tensor | None) -> torch.Tensor:
        self.check_inputs(query, key, value)
        tokens = query.shape[1]
        inputs = prepare_int8_inputs(query, key, value, rotation, self.numerics)  # device ops only
        dequant1 = inputs.dequant_scale1.float()
        dequant2 = inputs.dequant_scale2(self.numerics.p_scale).float()
        quant1 = torch.full((1,), self.semantics.quant_scale1_value(self.numerics.p_scale), dtype=torch.float32,
                            device=inputs.query.device)
        if self.numerics.scale_scope == "call":
            out = self._call(inputs.query, inputs.key, inputs.value, dequant1.view(1), dequant2.view(1), quant1)
        else:  # one call per head, each with its own scales (the kernel takes only per-tensor ones)
            out = torch.cat([
                self._call(inputs.query[:, h:h + 1], inputs.key[:, h:h + 1], inputs.value[:, h:h + 1],
                           dequant1[h:h + 1], dequant2[h:h + 1], quant1)
                for h in range(inputs.query.shape[1])
            ], dim=1)
        out = undo_v_rotation(out.float(), inputs.v_rotation)  # fp16 out -> float32 -> O R_v^T
        # BNSD -> BSND, cropped to the caller's tokens in case the kernel pads, cast back to the input dtype.
        return out.transpose(1, 2)[:, :tokens].to(query.dtype)
