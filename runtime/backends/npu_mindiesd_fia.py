"""Entry point (b): MindIE-SD 3.1.0's own op torch.ops.mindiesd.fused_infer_attention_score_v2 with per-block
FP8 (quant mode 7), the call its FP8RotateQuantFA makes. The op ships its own Ascend 950 kernel, so it does not
depend on CANN keeping mode 7 in torch_npu's op.

Differences from FP8RotateQuantFA, on purpose: we quantize in PyTorch with the same block sizes and scale rule
as its npu_dynamic_block_quant call (128-token Q rows, 256-token K/V rows, one 128-column block = the whole head
for D <= 128, scale = amax / 448), so batch > 1 works in one call (its wrapper squeezes batch 1). Same op
arguments otherwise; no num_key_value_heads or sparse_mode (FP8RotateQuantFA passes neither).
Backend name `npu-mindiesd-fia`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from runtime.backends.base import BLOCK_KERNEL_HEAD_DIMS
from runtime.backends.npu_device import PerBlockFiaBackend, ascend_fp8_reason, import_mindiesd
from runtime.backends.registry import register_backend

OP_NAME = "fused_infer_attention_score_v2"  # under torch.ops.mindiesd, registered when mindiesd imports


def _mindiesd_op() -> Callable[..., Any] | None:
    try:
        return getattr(torch.ops.mindiesd, OP_NAME)
    except (AttributeError, RuntimeError):
        return None


@register_backend(
    "npu-mindiesd-fia", auto_order=20, devices=("npu",),
    dtypes=("fp8_e4m3_per_block",), head_dims=BLOCK_KERNEL_HEAD_DIMS, pv_precisions=("e4m3",),
    summary="MindIE-SD 3.1.0's fused_infer_attention_score_v2, per-block FP8 (quant mode 7)",
)
class NpuMindiesdFiaBackend(PerBlockFiaBackend):

    def environment_reason(self) -> str | None:
        reason = ascend_fp8_reason()
        if reason is None:
            _module, reason = import_mindiesd()
        if reason is None and _mindiesd_op() is None:
            reason = f"mindiesd imported but registered no torch.ops.mindiesd.{OP_NAME}"
        return reason

    def resolve_op(self) -> Callable[..., Any]:
        import_mindiesd()
        op = _mindiesd_op()
        if op is None:
            raise RuntimeError(f"torch.ops.mindiesd.{OP_NAME} is not available: {self.environment_reason()}")
        return op
