"""Replacement for diffusers' WanAttnProcessor that runs FP8 or native per a plain bool set once per forward.

The component hook (runtime/hooks.py) sets `fp8` (and `rotation`) on every processor before each transformer
forward, outside any compiled block; the processor only branches on that bool. The native branch calls the
stock processor it replaced, so an all-native plan is bit-identical to an unpatched pipeline.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from diffusers.models.attention_dispatch import dispatch_attention_fn
from diffusers.models.transformers.transformer_wan import _get_added_kv_projections, _get_qkv_projections

from runtime.backends.base import AttentionBackend
from runtime.call_record import CallRecord, make_record

# WanAttnProcessor's own constant: the text context length, image tokens come first in I2V (Wan2.1) models.
WAN_TEXT_CONTEXT_TOKENS = 512


@dataclass(frozen=True)
class Site:
    """Where an attention module sits in the plan: component, attention kind, layer."""

    component: str
    kind: str
    layer: int


class CallContext:
    """Per-forward facts the step tracker keeps current (read only on observer/shadow paths, never per call)."""

    def __init__(self) -> None:
        self.step = -1
        self.branch = "cond"


def _apply_rotary_emb(hidden_states: torch.Tensor, freqs_cos: torch.Tensor, freqs_sin: torch.Tensor) -> torch.Tensor:
    # Copied from WanAttnProcessor (a nested function there, so not importable).
    x1, x2 = hidden_states.unflatten(-1, (-1, 2)).unbind(-1)
    cos = freqs_cos[..., 0::2]
    sin = freqs_sin[..., 1::2]
    out = torch.empty_like(hidden_states)
    out[..., 0::2] = x1 * cos - x2 * sin
    out[..., 1::2] = x1 * sin + x2 * cos
    return out.type_as(hidden_states)


Attend = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def wan_attention(
    attn: Any,
    hidden_states: torch.Tensor,
    encoder_hidden_states: torch.Tensor | None,
    rotary_emb: tuple[torch.Tensor, torch.Tensor] | None,
    attend: Attend,
) -> torch.Tensor:
    """WanAttnProcessor.__call__ (diffusers 0.42.1) with `attend(q, k, v)` (BSND) in place of the dispatch.

    Only for calls without an attention mask: the FP8 kernel takes none, callers route masked calls to stock.
    """
    encoder_hidden_states_img = None
    if attn.add_k_proj is not None:
        image_context_length = encoder_hidden_states.shape[1] - WAN_TEXT_CONTEXT_TOKENS
        encoder_hidden_states_img = encoder_hidden_states[:, :image_context_length]
        encoder_hidden_states = encoder_hidden_states[:, image_context_length:]

    query, key, value = _get_qkv_projections(attn, hidden_states, encoder_hidden_states)
    query = attn.norm_q(query)
    key = attn.norm_k(key)
    query = query.unflatten(2, (attn.heads, -1))
    key = key.unflatten(2, (attn.heads, -1))
    value = value.unflatten(2, (attn.heads, -1))
    if rotary_emb is not None:
        query = _apply_rotary_emb(query, *rotary_emb)
        key = _apply_rotary_emb(key, *rotary_emb)

    hidden_states_img = None
    if encoder_hidden_states_img is not None:
        key_img, value_img = _get_added_kv_projections(attn, encoder_hidden_states_img)
        key_img = attn.norm_added_k(key_img)
        key_img = key_img.unflatten(2, (attn.heads, -1))
        value_img = value_img.unflatten(2, (attn.heads, -1))
        hidden_states_img = attend(query, key_img, value_img).flatten(2, 3).type_as(query)

    hidden_states = attend(query, key, value).flatten(2, 3).type_as(query)
    if hidden_states_img is not None:
        hidden_states = hidden_states + hidden_states_img
    hidden_states = attn.to_out[0](hidden_states)
    return attn.to_out[1](hidden_states)


class _WrapsStock:
    """Forwards diffusers' backend/parallel settings to the stock processor, which runs the native path:
    `model.set_attention_backend(...)` after load sets them on us and must reach it."""

    stock: Any

    @property
    def _attention_backend(self) -> Any:
        return self.stock._attention_backend

    @_attention_backend.setter
    def _attention_backend(self, value: Any) -> None:
        self.stock._attention_backend = value

    @property
    def _parallel_config(self) -> Any:
        return self.stock._parallel_config

    @_parallel_config.setter
    def _parallel_config(self, value: Any) -> None:
        self.stock._parallel_config = value

    def _native_attend(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
        return dispatch_attention_fn(
            query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, backend=self.stock._attention_backend
        )


class PlanAttnProcessor(_WrapsStock):
    """Runs FP8 when `fp8` is True and a backend serves it, else the stock processor. Counts its calls (eager
    mode only: a counter read inside a compiled block would recompile it every call)."""

    def __init__(self, stock: Any, site: Site, backend: AttentionBackend | None, context: CallContext):
        self.stock = stock
        self.site = site
        self.backend = backend  # None: the plan's FP8 cells fall back to native (policy "native")
        self.context = context
        self.fp8 = False  # set by the component hook once per forward
        self.rotation: torch.Tensor | None = None  # set by the component hook when device/dtype change
        self.observer: Callable[[CallRecord], None] | None = None
        self.native_calls = 0
        self.fp8_calls = 0
        self.fallback_calls = 0

    def __call__(
        self,
        attn: Any,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        rotary_emb: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        if self.fp8 and self.backend is not None and attention_mask is None:
            if not torch.compiler.is_compiling():
                self.fp8_calls += 1
            return wan_attention(attn, hidden_states, encoder_hidden_states, rotary_emb, self._fp8_attend)
        if not torch.compiler.is_compiling():
            if self.fp8:
                self.fallback_calls += 1
            else:
                self.native_calls += 1
        return self.stock(attn, hidden_states, encoder_hidden_states, attention_mask, rotary_emb)

    def _fp8_attend(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
        out = self.backend.attend(query, key, value, self.rotation)
        if self.observer is not None:
            native = self._native_attend(query, key, value)
            self.observer(_record(self.site, self.context, self.backend.name, out, native, used="fp8"))
        return out

    def take_counts(self) -> tuple[int, int, int]:
        """(native, fp8, fallback) calls since the last take, and reset them."""
        counts = (self.native_calls, self.fp8_calls, self.fallback_calls)
        self.native_calls = self.fp8_calls = self.fallback_calls = 0
        return counts


def _record(site: Site, context: CallContext, backend: str, fp8: torch.Tensor, native: torch.Tensor, used: str):
    return make_record(site.component, context.step, site.layer, site.kind, context.branch, backend, fp8, native, used)


class ShadowAttnProcessor(_WrapsStock):
    """Computes native and FP8 attention on the same q/k/v, records the error, continues with native."""

    def __init__(self, stock: Any, site: Site, backend: AttentionBackend, context: CallContext, sink: list):
        self.stock = stock
        self.site = site
        self.backend = backend
        self.context = context
        self.rotation: torch.Tensor | None = None
        self.sink = sink

    def __call__(
        self,
        attn: Any,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        rotary_emb: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        if attention_mask is not None:  # the FP8 kernel takes no mask: nothing to compare
            return self.stock(attn, hidden_states, encoder_hidden_states, attention_mask, rotary_emb)
        return wan_attention(attn, hidden_states, encoder_hidden_states, rotary_emb, self._shadow_attend)

    def _shadow_attend(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
        native = self._native_attend(query, key, value)
        fp8 = self.backend.attend(query, key, value, self.rotation)
        self.sink.append(_record(self.site, self.context, self.backend.name, fp8, native, used="native"))
        return native
