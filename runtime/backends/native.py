"""Native attention: the stock diffusers dispatch (default backend), unquantized."""

from __future__ import annotations

import torch

from runtime.backends.base import AttentionBackend
from runtime.backends.registry import register_backend
from runtime.diffusers_private import dispatch_attention_fn


@register_backend("native", devices=("cpu", "cuda", "npu"), masks=("any",),
                  summary="every cell native (the stock diffusers attention)")
class NativeBackend(AttentionBackend):

    def attend(
        self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, rotation: torch.Tensor | None = None
    ) -> torch.Tensor:
        return dispatch_attention_fn(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False)
