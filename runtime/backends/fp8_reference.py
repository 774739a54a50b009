"""FP8 attention emulated in plain PyTorch on any device: rotation, per-block e4m3 quantization with the
kernel's block sizes and scale rule, dequantization, attention in float32, cast back.

It reproduces the kernel's quantization error, not its bits (accumulation order inside a kernel differs).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from runtime.backends.base import Fp8Backend
from runtime.numerics import Numerics, dequantize_attention_inputs, quantize_attention_inputs


class Fp8ReferenceBackend(Fp8Backend):
    name = "fp8-reference"

    def __init__(self, numerics: Numerics | None = None):
        self.numerics = numerics or Numerics()

    def attend(
        self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, rotation: torch.Tensor | None
    ) -> torch.Tensor:
        quantized = quantize_attention_inputs(query, key, value, rotation, self.numerics)
        q, k, v = dequantize_attention_inputs(quantized, self.numerics)
        out = F.scaled_dot_product_attention(q, k, v, scale=1.0 / math.sqrt(query.shape[-1]))
        return out.transpose(1, 2).to(query.dtype)
