"""FP8 attention emulated in plain PyTorch on any device: rotation, per-block e4m3 quantization with the
kernel's block sizes and scale rule, dequantization, attention in float32, cast back.

It reproduces the kernel's quantization error, not its bits (accumulation order inside a kernel differs).
P @ V follows the plan's `pv_precision`: with "e4m3" (the NPU kernel's choice) the probabilities are scaled by
448 and rounded to e4m3 as the kernels do, but against the row's global max where a flash kernel uses its
running max, so the rounding grid differs slightly (see docs/gpu.md for the measured bound).
"""

from __future__ import annotations

import math

import torch

from runtime.backends.base import Fp8Backend
from runtime.numerics import (
    P_E4M3_SCALE,
    PV_PRECISIONS,
    Numerics,
    dequantize_attention_inputs,
    quantize_attention_inputs,
)


class Fp8ReferenceBackend(Fp8Backend):
    name = "fp8-reference"

    def __init__(self, numerics: Numerics | None = None):
        self.numerics = numerics or Numerics()

    def attend(
        self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, rotation: torch.Tensor | None
    ) -> torch.Tensor:
        quantized = quantize_attention_inputs(query, key, value, rotation, self.numerics)
        q, k, v = dequantize_attention_inputs(quantized, self.numerics)
        out = attention_with_pv_precision(q, k, v, 1.0 / math.sqrt(query.shape[-1]), self.numerics.pv_precision)
        return out.transpose(1, 2).to(query.dtype)


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
