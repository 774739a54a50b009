"""Quantized attention emulated in plain PyTorch on any device, for every plan dtype: rotation, quantization
exactly as the NPU path quantizes (runtime/numerics.py: per-block FP8 or OCP MX), dequantization, attention in
float32, cast back.

It reproduces the kernels' quantization, not their bits (accumulation order inside a kernel differs).
Backend name `reference`; `fp8-reference` (its name before MX formats) is accepted as an alias.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from qcompiler.numerics import DTYPE_NAMES
from runtime.backends.base import QuantizedBackend
from runtime.numerics import kernel_attention_inputs


class ReferenceBackend(QuantizedBackend):
    name = "reference"
    dtypes = DTYPE_NAMES

    def attend(
        self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, rotation: torch.Tensor | None
    ) -> torch.Tensor:
        self.check_inputs(query, key, value)
        q, k, v = kernel_attention_inputs(query, key, value, rotation, self.numerics)
        out = F.scaled_dot_product_attention(q, k, v, scale=1.0 / math.sqrt(query.shape[-1]))
        # Crop rows a format padded (mxfp4 pads sequences to 512); BNSD -> BSND.
        return out[:, :, : query.shape[1]].transpose(1, 2).to(query.dtype)


Fp8ReferenceBackend = ReferenceBackend  # the class name before MX formats
