"""Entry point (c): torch_npu.npu_fused_infer_attention_score_v2 with per-block FP8 quant mode 7, for stacks
that still have it. Later CANN releases removed mode 7 from this op (vllm-omni PR #6482); the load-time probe
(npu_device.probe_reason) turns that into a reason the fallback policy acts on, never a mid-pipeline crash.
Contract: shared reference ascend-fp8-attention.md. Backend name `npu-torch-fia` (alias `fp8-npu`)."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

from runtime.backends.base import BLOCK_KERNEL_HEAD_DIMS
from runtime.backends.npu_device import PerBlockFiaBackend, ascend_fp8_reason
from runtime.backends.registry import register_backend

OP_NAME = "npu_fused_infer_attention_score_v2"


@register_backend(
    "npu-torch-fia", aliases=("fp8-npu",), auto_order=30, devices=("npu",),
    dtypes=("fp8_e4m3_per_block",), head_dims=BLOCK_KERNEL_HEAD_DIMS, pv_precisions=("e4m3",),
    summary="torch_npu npu_fused_infer_attention_score_v2, per-block FP8 quant mode 7 (older CANN)",
)
class NpuTorchFiaBackend(PerBlockFiaBackend):

    def environment_reason(self) -> str | None:
        reason = ascend_fp8_reason()
        if reason is None and not hasattr(importlib.import_module("torch_npu"), OP_NAME):
            reason = f"this torch_npu has no {OP_NAME}"
        return reason

    def resolve_op(self) -> Callable[..., Any]:
        return getattr(importlib.import_module("torch_npu"), OP_NAME)

    def extra_arguments(self, heads: int) -> dict[str, Any]:
        # torch_npu's signature: num_key_value_heads=0 means "= num_query_heads"; pass it explicitly, and
        # sparse_mode=0 (no mask), both as the seed's call did.
        return {"num_key_value_heads": heads, "sparse_mode": 0}

