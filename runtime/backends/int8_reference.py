"""`int8-reference`: the int8_per_tensor CPU reference (runtime/quant/int8.py) as an attention backend.

Slow (float64 tiles) and only for checking numerics: it reproduces the A2/A3 INT8 kernel's quantization steps
with the inferred kernel semantics, not its speed. `auto` never picks it; ask for it by name.
"""

from __future__ import annotations

import torch

from runtime.backends.base import AttentionBackend
from runtime.numerics import INT8_DTYPE_NAME, Numerics
from runtime.quant.int8 import DEFAULT_SEMANTICS, KernelSemantics, int8_attention_reference

# FIA v1 full quant: "D 32-aligned" (CANN aclnnFusedInferAttentionScoreV4 doc, a2a3-int8.md sec. 1).
INT8_HEAD_DIM_ALIGNMENT = 32


class Int8Backend(AttentionBackend):
    """Serves a plan's quantized cells with dtype int8_per_tensor. (`is_fp8` is the base class's name for
    "serves the quantized cells"; it predates INT8.)"""

    is_fp8 = True
    dtype = INT8_DTYPE_NAME

    def __init__(self, numerics: Numerics | None = None):
        self.numerics = numerics or Numerics.int8()

    def unsupported_reason(self, head_dim: int) -> str | None:
        if head_dim % INT8_HEAD_DIM_ALIGNMENT:
            return f"head dim {head_dim} is not a multiple of {INT8_HEAD_DIM_ALIGNMENT} (the INT8 kernel's alignment)"
        rotated = self.numerics.hadamard_rotation or self.numerics.v_rotation
        if rotated and head_dim & (head_dim - 1):
            return f"head dim {head_dim} is not a power of two, which the Hadamard rotations need"
        return None


class Int8ReferenceBackend(Int8Backend):
    name = "int8-reference"

    def __init__(self, numerics: Numerics | None = None, semantics: KernelSemantics = DEFAULT_SEMANTICS):
        super().__init__(numerics)
        self.semantics = semantics

    def attend(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
               rotation: torch.Tensor | None) -> torch.Tensor:
        return int8_attention_reference(query, key, value, rotation, self.numerics, self.semantics)
