"""The one small interface every attention backend implements."""

from __future__ import annotations

import torch

# Head dims the FP8 attention kernel accepts (Ascend per-block FP8 contract); the reference emulation keeps
# the same eligibility so a CPU run predicts what an NPU run will do.
FP8_HEAD_DIMS = (64, 128)


class AttentionBackend:
    """Computes attention on BSND (batch, tokens, heads, head dim) q/k/v and returns BSND in q's dtype.

    `rotation` is the D x D matrix applied to Q and K before quantization (None for no rotation); native
    backends ignore it.
    """

    name: str = ""
    is_fp8: bool = False

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


class Fp8Backend(AttentionBackend):
    is_fp8 = True

    def unsupported_reason(self, head_dim: int) -> str | None:
        if head_dim not in FP8_HEAD_DIMS:
            return f"head dim {head_dim} is not one the FP8 attention kernel takes ({' or '.join(map(str, FP8_HEAD_DIMS))})"
        return None
