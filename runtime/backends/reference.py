"""Quantized attention emulated in plain PyTorch on any device, for every plan dtype: rotation, quantization
exactly as the NPU path quantizes (runtime/numerics.py: per-block FP8 or OCP MX), dequantization, attention in
float32, cast back. int8_per_tensor also quantizes the softmax probabilities inside its kernel, so it runs the
step-by-step CPU reference of the A2/A3 INT8 kernel instead (runtime/quant/int8.py; float64 tiles, slow).

It reproduces the kernels' quantization, not their bits (accumulation order inside a kernel differs).
For fp8_e4m3_per_block, P @ V follows the plan's `pv_precision`: with "e4m3" (the NPU kernel's choice) the
probabilities are scaled by 448 and rounded to e4m3 as the kernels do, but against the row's global max where a
flash kernel uses its running max, so the rounding grid differs slightly (docs/gpu.md has the measured bound).
The MX formats' P stays float32 (MindIE-SD documents no P quantization for them).
Backend name `reference`; `fp8-reference` (its name before MX formats) is accepted as an alias.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from qcompiler.formats import format_names
from qcompiler.numerics import P_E4M3_SCALE, PV_PRECISIONS
from runtime.backends.base import QuantizedBackend, kernel_head_dims
from runtime.backends.registry import register_backend
from runtime.numerics import kernel_attention_inputs
from runtime.quant import quantizer


@register_backend(
    "reference", aliases=("fp8-reference",), devices=("cpu", "cuda", "npu"),
    dtypes=format_names(), head_dims={dtype: kernel_head_dims(dtype) for dtype in format_names()}, pv_precisions=PV_PRECISIONS,
    summary="every dtype emulated in PyTorch on any device (slow; for checking numerics)",
)
class ReferenceBackend(QuantizedBackend):

    def attend(
        self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, rotation: torch.Tensor | None
    ) -> torch.Tensor:
        self.check_inputs(query, key, value)
        whole = quantizer(self.numerics.dtype).attention_reference  # formats that quantize inside the kernel
        if whole is not None:
            return whole(query, key, value, rotation, self.numerics)
        q, k, v = kernel_attention_inputs(query, key, value, rotation, self.numerics)
        softmax_scale = 1.0 / math.sqrt(query.shape[-1])
        if "pv_precision" in self.numerics.spec.key_names:
            out = attention_with_pv_precision(q, k, v, softmax_scale, self.numerics.pv_precision)
        else:
            out = F.scaled_dot_product_attention(q, k, v, scale=softmax_scale)
        # Crop rows a format padded (mxfp4 pads sequences to 512); BNSD -> BSND.
        return out[:, :, : query.shape[1]].transpose(1, 2).to(query.dtype)



# Query rows per chunk: bounds the fp32 score matrix to chunk x S_kv per (batch, head).
_QUERY_CHUNK = 1024


def attention_with_pv_precision(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, softmax_scale: float, pv_precision: str
) -> torch.Tensor:
    """fp32 BNSD attention whose probabilities P are rounded to `pv_precision` ("e4m3" or "fp16") before P @ V;
    the softmax denominator sums the unrounded P in fp32, as the kernels do."""
    if pv_precision not in PV_PRECISIONS:
        raise ValueError(f"pv_precision {pv_precision!r} is not one of {', '.join(PV_PRECISIONS)}")
    chunks = []
    for start in range(0, q.shape[2], _QUERY_CHUNK):
        scores = (q[:, :, start : start + _QUERY_CHUNK] @ k.transpose(-1, -2)) * softmax_scale
        p = torch.exp(scores - scores.amax(dim=-1, keepdim=True))
        denominator = p.sum(dim=-1, keepdim=True)
        if pv_precision == "e4m3":
            rounded = (p * P_E4M3_SCALE).to(torch.float8_e4m3fn).float() / P_E4M3_SCALE
        else:
            rounded = p.half().float()
        chunks.append((rounded @ v) / denominator)
    return torch.cat(chunks, dim=2)
