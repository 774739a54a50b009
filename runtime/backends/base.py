"""The one small interface every attention backend implements."""

from __future__ import annotations

import torch

from qcompiler.backend_table import BLOCK_KERNEL_HEAD_DIMS, head_dim_reason
from runtime.numerics import Numerics

# Head dims the per-block FP8 and MX kernels take; the table in qcompiler/backend_table.py is their one home.
QUANTIZED_HEAD_DIMS = BLOCK_KERNEL_HEAD_DIMS.exactly
FP8_HEAD_DIMS = QUANTIZED_HEAD_DIMS  # the name the rest of the runtime used before MX formats


class AttentionBackend:
    """Computes attention on BSND (batch, tokens, heads, head dim) q/k/v and returns BSND in q's dtype.

    `rotation` is the D x D matrix applied to Q and K before quantization (None for no rotation); native
    backends ignore it. Full bidirectional attention only: no mask, no causal, no dropout.
    """

    name: str = ""
    is_fp8: bool = False  # serves the plan's quantized ("fp8") cells, whatever the plan's dtype

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
    """A backend that runs the plan's quantized cells. `dtypes`: the plan dtypes it can run (its row of
    qcompiler/backend_table.py, which also says at which head dims); the plan's own dtype comes from the Numerics
    it is built with."""

    is_fp8 = True
    dtypes: tuple[str, ...] = ()
    # P @ V precisions it computes (numerics.pv_precision); the Ascend kernels round P to e4m3 and nothing else.
    pv_precisions: tuple[str, ...] = ("e4m3",)

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
            reason = head_dim_reason(self.name, self.numerics.dtype, head_dim, self.numerics.rotated)
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


# The name the runtime used before MX formats; kept so callers outside this package keep working.
Fp8Backend = QuantizedBackend
