"""The runtime's view of a plan's numerics: `Numerics` is qcompiler.formats' typed record (the one the compiler
writes; `Numerics.from_plan(plan)`), and `kernel_attention_inputs` turns BSND attention inputs into what the
plan's format's kernel computes with, through the quantizer its runtime/quant/ module registered."""

from __future__ import annotations

import torch

from qcompiler.formats import Numerics
from qcompiler.numerics import (  # noqa: F401  (re-exported for the reference and Triton backends)
    DEFAULT_PV_PRECISION,
    P_E4M3_SCALE,
    PV_PRECISIONS,
)
from runtime.quant import prepare_qk, quantizer
from runtime.quant.per_block import (  # noqa: F401  (re-exported: the per-block FP8 backends' inputs)
    QuantizedAttentionInputs,
    dequantize_attention_inputs,
    quantize_attention_inputs,
)

__all__ = ["DEFAULT_PV_PRECISION", "Numerics", "QuantizedAttentionInputs", "dequantize_attention_inputs",
           "kernel_attention_inputs", "prepare_qk", "quantize_attention_inputs"]


def kernel_attention_inputs(
    query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, rotation: torch.Tensor | None, numerics: Numerics
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """BSND q/k/v -> the float32 BNSD q, k, v the plan's kernel computes with (quantized, then dequantized).

    For mxfp4_e2m1 the sequences stay padded to a multiple of 512 (the kernel attends to the padded keys:
    runtime/quant/mx.py); crop the output to the query's token count.
    """
    inputs = quantizer(numerics.dtype).kernel_inputs
    if inputs is None:
        raise ValueError(f"{numerics.dtype} quantizes inside its kernel; use its attention_reference "
                         f"(runtime.quant.quantizer({numerics.dtype!r}))")
    return inputs(query, key, value, rotation, numerics)
