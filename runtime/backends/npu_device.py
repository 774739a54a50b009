"""What every NPU entry point checks before it can serve: torch_npu imports, an NPU is visible, it is an
Ascend 950 (the only Ascend with FP8/MX attention), and a tiny probe call through the entry point succeeds.

torch_npu and mindiesd need the CANN toolkit, so they are imported lazily and only from the npu_* modules.
Nothing in this repository has run these paths on an NPU: CPU tests check each call contract with a stand-in
op, and tests marked `npu` compare each entry point with the reference backend on real hardware.
"""

from __future__ import annotations

import importlib
import importlib.util
import math
from collections.abc import Callable
from typing import Any

import torch

from runtime.backends.base import QuantizedBackend
from runtime.numerics import QuantizedAttentionInputs, quantize_attention_inputs

# SoC names with FP8 / MX attention (Ascend 950PR / 950DT); A2 (910B) and A3 (910C) have none.
FP8_SOC_MARKER = "950"
# INT32_MAX for pre_tokens/next_tokens: no band limit, i.e. full bidirectional attention (no causal mask).
NO_BAND_LIMIT = 2**31 - 1
# query/key/value_quant_mode = 7: per-block FP8 full quantization in FIA v2 (all three must be 7).
PER_BLOCK_FP8_QUANT_MODE = 7
# Layout the FIA ops are called with for per-block FP8; diffusers hands q/k/v as BSND, so we transpose.
FIA_INPUT_LAYOUT = "BNSD"
# Probe shape: one batch, one head, 256 tokens (one K/V block), head dim 128: the smallest call that exercises
# every scale tensor of the per-block contract.
PROBE_SHAPE = (1, 256, 1, 128)


def visible_npu() -> tuple[Any | None, str, str | None]:
    """(torch_npu, the SoC name of NPU 0, None) when torch_npu imports and an NPU is visible, else
    (None, "", why not). The SoC name is what decides support (an op being registered is not support)."""
    if importlib.util.find_spec("torch_npu") is None:
        return None, "", "torch_npu is not installed (pip install the project's npu extra on an Ascend machine with CANN)"
    try:
        torch_npu = importlib.import_module("torch_npu")
    except Exception as exc:  # an import failure without CANN is an environment fact, not a bug of ours
        return None, "", f"torch_npu failed to import: {exc}"
    if not torch.npu.is_available():  # type: ignore[attr-defined]
        return None, "", "torch_npu is installed but no NPU is visible"
    return torch_npu, torch_npu.npu.get_device_name(0), None


def ascend_fp8_reason() -> str | None:
    """None when torch_npu imports, an NPU is visible and it is an Ascend 950, else why not."""
    _torch_npu, name, reason = visible_npu()
    if reason is not None:
        return reason
    if FP8_SOC_MARKER not in name:
        return f"{name} has no FP8 attention (FP8/MX attention needs an Ascend 950PR/950DT; A2/A3 offer INT8 only)"
    return None


def import_mindiesd() -> tuple[Any | None, str | None]:
    """(mindiesd module, None) or (None, why it cannot be used). mindiesd 3.1.0 refuses torch versions it has no
    ops for ("Unsupported torch version"; MINDIESD_PLUGIN_VARIANT overrides)."""
    if importlib.util.find_spec("mindiesd") is None:
        return None, "mindiesd (MindIE-SD) is not installed"
    try:
        return importlib.import_module("mindiesd"), None
    except Exception as exc:
        return None, f"mindiesd failed to import: {exc}"


def probe_reason(backend: QuantizedBackend, device: str = "npu") -> str | None:
    """Run one tiny attention through the backend on `device`; None if it works, else the error. Catches a stack
    whose op exists but rejects the call (e.g. a CANN release without FIA quant mode 7, or without the INT8
    full-quant path) at load time, never mid-pipeline."""
    generator = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(PROBE_SHAPE, generator=generator).to(device, torch.bfloat16) for _ in range(3))
    try:
        out = backend.attend(q, k, v, None)
        if out.shape != q.shape or not bool(torch.isfinite(out).all()):
            return f"{backend.name}: probe call returned shape {tuple(out.shape)} / non-finite values"
    except Exception as exc:
        return f"{backend.name}: probe call failed on this stack: {type(exc).__name__}: {exc}"
    return None


class NpuBackend(QuantizedBackend):
    """An NPU entry point (FP8/MX on an Ascend 950, INT8 on an A2/A3). `op` defaults to the real one, resolved on
    first use; tests pass a stand-in that records its arguments to check the call contract (a stand-in says
    nothing about the kernel). The load-time probe runs through either: the real op on the NPU, a stand-in on the
    CPU, so a stand-in that raises as a rejecting stack does shows what a load does with such a stack."""

    def __init__(self, numerics=None, op: Callable[..., Any] | None = None):
        super().__init__(numerics)
        self._op = op
        self._availability: str | None | bool = False  # False: not checked yet

    def environment_reason(self) -> str | None:
        """Why the real op cannot be reached here (imports, device, op present), or None."""
        raise NotImplementedError

    def resolve_op(self) -> Callable[..., Any]:
        raise NotImplementedError

    def unavailable_reason(self) -> str | None:
        if self._availability is False:
            if self._op is None:
                reason, device = self.environment_reason() or self.dtype_reason(), "npu"
            else:  # a stand-in op: no device or import to look for
                reason, device = self.dtype_reason(), "cpu"
            self._availability = reason or probe_reason(self, device)
        return self._availability  # type: ignore[return-value]

    def op(self) -> Callable[..., Any]:
        if self._op is None:
            self._op = self.resolve_op()
        return self._op


class PerBlockFiaBackend(NpuBackend):
    """Per-block FP8 through an FIA v2 op with quant mode 7 (torch_npu's or MindIE-SD's): rotate, quantize in
    PyTorch with the kernel's block sizes and scale rule (runtime/quant/per_block.py), call, crop, back to BSND."""

    def extra_arguments(self, heads: int) -> dict[str, Any]:
        """Keyword arguments only this op takes (e.g. torch_npu's num_key_value_heads, sparse_mode)."""
        return {}

    def attend(
        self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, rotation: torch.Tensor | None
    ) -> torch.Tensor:
        self.check_inputs(query, key, value)
        op = self.op()
        tokens, heads, head_dim = query.shape[1:]
        q: QuantizedAttentionInputs = quantize_attention_inputs(query, key, value, rotation, self.numerics)
        out = op(
            q.query,  # BNSD float8_e4m3fn
            q.key,
            q.value,
            input_layout=FIA_INPUT_LAYOUT,
            num_query_heads=heads,
            softmax_scale=1.0 / math.sqrt(head_dim),  # the ops default to 1.0, not 1/sqrt(D)
            pre_tokens=NO_BAND_LIMIT,
            next_tokens=NO_BAND_LIMIT,
            query_quant_mode=PER_BLOCK_FP8_QUANT_MODE,
            key_quant_mode=PER_BLOCK_FP8_QUANT_MODE,
            value_quant_mode=PER_BLOCK_FP8_QUANT_MODE,
            dequant_scale_query=q.query_scale,  # [B, N, ceil(S_q/128), 1] float32
            dequant_scale_key=q.key_scale,  # [B, N, ceil(S_kv/256), 1] float32
            dequant_scale_value=q.value_scale,  # [B, N, ceil(S_kv/256), 1] float32
            out_dtype=query.dtype,  # without it an FP8 input yields fp16
            **self.extra_arguments(heads),
        )[0]  # (attention_out, softmax_lse)
        # BNSD -> BSND; crop to the caller's token count in case the kernel returns padded rows.
        return out[:, :, :tokens].transpose(1, 2)
