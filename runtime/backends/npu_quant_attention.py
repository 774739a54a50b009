"""Entry point (a): MindIE-SD's `quant_attention`, called exactly as vllm-omni 0.30.0's NPU flash-attention
backend calls it (diffusion/attention/backends/flash_attn.py, forward_fa_quant_npu):

    quant_attention(query, key, value, precision=P, layout="BSND", scale=softmax_scale, q_rot=R, k_rot=R)

q/k/v in BSND as the model produces them (no transpose, not rotated: the op rotates with q_rot/k_rot), P from
the plan's dtype ("fp8", "mxfp8", "mxfp4": qcompiler/formats/), R the plan's rotation (vllm-omni's
get_quant_attention_rotation for seed 425500; runtime/quant/rotation.py builds it bit for bit). With the plan's
rotation off, q_rot/k_rot are not passed. Needs a MindIE-SD newer than 3.1.0 (the last on PyPI, which does not
export quant_attention). Backend name `npu-quant-attention`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch

from qcompiler.formats import FORMATS, get_format
from runtime.backends.base import BLOCK_KERNEL_HEAD_DIMS
from runtime.backends.npu_device import NpuBackend, ascend_fp8_reason, import_mindiesd
from runtime.backends.registry import register_backend

LAYOUT = "BSND"  # diffusers' q/k/v layout, passed through as vllm-omni does (qkv_layout defaults to BSND)


@register_backend(
    "npu-quant-attention", auto_order=10, devices=("npu",),
    dtypes=tuple(name for name, spec in FORMATS.items() if spec.target_name("mindiesd-precision") is not None),
    head_dims=BLOCK_KERNEL_HEAD_DIMS, pv_precisions=("e4m3",),
    summary="MindIE-SD quant_attention, as vllm-omni 0.30.0 calls it (fp8, mxfp8, mxfp4)",
)
class NpuQuantAttentionBackend(NpuBackend):

    def environment_reason(self) -> str | None:
        reason = ascend_fp8_reason()
        if reason is None:
            module, reason = import_mindiesd()
            if reason is None and not hasattr(module, "quant_attention"):
                version = getattr(module, "__version__", "unknown")
                reason = (f"mindiesd {version} has no quant_attention (it needs a MindIE-SD newer than 3.1.0, the "
                          "release vllm-omni 0.30.0 targets)")
        return reason

    def resolve_op(self) -> Callable[..., Any]:
        module, reason = import_mindiesd()
        if module is None or not hasattr(module, "quant_attention"):
            raise RuntimeError(f"mindiesd.quant_attention is not available: {reason or self.environment_reason()}")
        return module.quant_attention

    def attend(
        self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, rotation: torch.Tensor | None
    ) -> torch.Tensor:
        self.check_inputs(query, key, value)
        op = self.op()
        if self.numerics.k_mean_subtraction:
            # Exact for softmax; done here because the op has no such option.
            key = key - key.mean(dim=1, keepdim=True)
        kwargs: dict[str, Any] = {
            "precision": get_format(self.numerics.dtype).target_name("mindiesd-precision"),
            "layout": LAYOUT,
            "scale": 1.0 / math.sqrt(query.shape[-1]),  # vllm-omni passes the layer's softmax_scale: 1/sqrt(D) in Wan
        }
        if rotation is not None:
            kwargs.update(q_rot=rotation, k_rot=rotation)
        out = op(query, key, value, **kwargs)
        if out.shape != query.shape:
            raise RuntimeError(f"{self.name}: quant_attention returned {tuple(out.shape)} for a BSND query of "
                               f"{tuple(query.shape)}")
        return out
