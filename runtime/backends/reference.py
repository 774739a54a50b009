"""Quantized attention emulated in plain PyTorch on any device, for every plan dtype: rotation, quantization
exactly as the NPU path quantizes (runtime/numerics.py: per-block FP8 or OCP MX), dequantization, attention in
float32, cast back. int8_per_tensor also quantizes the softmax probabilities inside its kernel, so it runs the
step-by-step CPU reference of the A2/A3 INT8 kernel instead (runtime/quant/int8.py; float64 tiles, slow).

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
from runtime.quant.int8 import int8_attention_reference


class ReferenceBackend(QuantizedBackend):
    name = "reference"
    dtypes = DTYPE_NAMES

    def attend(
        self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, rotation: torch.Tensor | None
    ) -> torch.Tensor:
        self.check_inputs(query, key, value)
        if self.numerics.is_int8:
            return int8_attention_reference(query, key, value, rotation, self.numerics)
        q, k, v = kernel_attention_inputs(query, key, value, rotation, self.numerics)
        out = F.scaled_dot_product_attention(q, k, v, scale=1.0 / math.sqrt(query.shape[-1]))
        # Crop rows a format padded (mxfp4 pads sequences to 512); BNSD -> BSND.
        return out[:, :, : query.shape[1]].transpose(1, 2).to(query.dtype)


Fp8ReferenceBackend = ReferenceBackend  # the class name before MX formats
