"""The one small interface every attention backend implements."""

from __future__ import annotations

from collections.abc import Mapping
from typing import ClassVar

import torch

from qcompiler.backend_table import HeadDims
from qcompiler.formats.int8_per_tensor import NAME as INT8_DTYPE
from runtime.numerics import Numerics

# The Ascend per-block FP8 contract takes head dim 64 or 128. The MX paths are held to the same until an NPU run
# shows otherwise, and the reference and fp8-triton keep the same eligibility so a CPU or GPU run predicts what an
# NPU run will do.
BLOCK_KERNEL_HEAD_DIMS = HeadDims(exactly=(64, 128))
# FIA v1 full quant: "D 32-aligned" (CANN aclnnFusedInferAttentionScoreV4 doc, shared reference a2a3-int8.md
# sec. 1); Q/K and V rotations are Hadamard matrices, which exist for powers of two only.
INT8_KERNEL_HEAD_DIMS = HeadDims(multiple_of=32, power_of_two_if_rotated=True, why="the INT8 kernel's alignment")


def kernel_head_dims(dtype: str) -> HeadDims:
    """The head dims the NPU kernel contract of `dtype` takes (what `reference` holds itself to)."""
    return INT8_KERNEL_HEAD_DIMS if dtype == INT8_DTYPE else BLOCK_KERNEL_HEAD_DIMS


class AttentionBackend:
    """Computes attention on BSND (batch, tokens, heads, head dim) q/k/v and returns BSND in q's dtype.

    `rotation` is the D x D matrix applied to Q and K before quantization (None for no rotation); native
    backends ignore it. Full bidirectional attention only: no mask, no causal, no dropout.
    """

    # Set by @register_backend (runtime/backends/registry.py) from the backend's declaration.
    name: str = ""
    is_quantized: bool = False  # serves the plan's quantized cells, whatever the plan's dtype

    @classmethod
    def auto_reason(cls) -> str | None:
        """Asked by `auto` before anything else: None when `auto` may try this backend here, else why not."""
        return None

    def unavailable_reason(self) -> str | None:
        """None when this backend can run in this process, else why not (shown to the user)."""
        return None

    def unsupported_reason(self, head_dim: int) -> str | None:
        """None when this backend can serve attention with this head dim, else why not."""
        return None

    def attend(
        self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, rotation: torch.Tensor | None
    ) -> torch.Tensor:
        raise NotImplementedError


class QuantizedBackend(AttentionBackend):
    """A backend that runs the plan's quantized cells. `dtypes` (the plan dtypes it runs), `head_dims` (per dtype)
    and `pv_precisions` come from its @register_backend declaration; the plan's own dtype comes from the Numerics
    it is built with."""

    is_quantized = True
    dtypes: tuple[str, ...] = ()
    head_dims: ClassVar[Mapping[str, HeadDims]] = {}
    pv_precisions: tuple[str, ...] = ()

    def __init__(self, numerics: Numerics | None = None):
        self.numerics = numerics or Numerics()

    def dtype_reason(self) -> str | None:
        """None when this backend runs the plan's dtype, else why not."""
        if self.numerics.dtype not in self.dtypes:
            return f"backend {self.name!r} cannot run {self.numerics.dtype} (it runs {', '.join(self.dtypes)})"
        if self.numerics.pv_precision not in self.pv_precisions:
            return (f"backend {self.name!r} computes P @ V with {' or '.join(self.pv_precisions)} P; the plan asks "
                    f"pv_precision={self.numerics.pv_precision}")
        return None

    def unsupported_reason(self, head_dim: int) -> str | None:
        reason = self.dtype_reason()
        if reason is None:
            reason = self.head_dims[self.numerics.dtype].reason(head_dim, self.numerics.dtype, self.numerics.rotated)
        return reason

    def check_inputs(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor) -> None:
        """Refuse, with a clear error, what the kernels cannot take: not BSND, grouped heads, other head dims."""
        if query.dim() != 4 or key.dim() != 4 or value.dim() != 4:
            raise ValueError(f"{self.name}: q/k/v must be 4-D BSND (batch, tokens, heads, head dim), got "
                             f"{tuple(query.shape)}, {tuple(key.shape)}, {tuple(value.shape)}")
        if key.shape != value.shape or key.shape[0] != query.shape[0] or key.shape[2:] != query.shape[2:]:
            raise ValueError(f"{self.name}: q {tuple(query.shape)}, k {tuple(key.shape)}, v {tuple(value.shape)} "
                             "do not share batch, heads and head dim (grouped-query attention is not supported)")
        reason = self.unsupported_reason(query.shape[-1])
        if reason:
            raise ValueError(f"{self.name}: {reason}")
