"""Observe a transformer's attention calls independently of qcompile's runtime: which attention module made each
call, through diffusers' dispatcher (`dispatch_attention_fn`) or `F.scaled_dot_product_attention` directly, with
or without a mask, and the call's shape.

Its own hooks and wrappers only: forward hooks on the transformer and on every module with a `processor`, a
wrapper on each processor module's `dispatch_attention_fn`, and a wrapper on `F.scaled_dot_product_attention`
(which a processor that calls SDPA itself looks up at call time). Only the calls made in the thread running the
transformer's forward count, and only the outermost: an SDPA call made while a recorded call runs (the native
backend under a dispatch call, or whatever serves a processor's SDPA call) is that call's, not another one.
"""

from __future__ import annotations

import re
import sys
import threading
from collections import Counter
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

_LAYER = re.compile(r"^(?P<block_list>.+)\.(?P<layer>\d+)\.(?P<module>\w+)$")


@dataclass(frozen=True)
class Call:
    module: str  # the attention module's path in the transformer, e.g. "transformer_blocks.3.attn"
    via: str  # "dispatch" or "sdpa"
    masked: bool
    heads: int
    head_dim: int
    q_len: int
    kv_len: int
    batch: int
    mask_dtype: str | None = None  # "bool" or a float dtype name (additive bias)
    mask_shape: tuple[int, ...] | None = None
    # Query rows whose mask allows no key at all (boolean masks only; stock SDPA writes zeros there).
    fully_masked_rows: int = 0

    @property
    def block_list(self) -> str:
        return _LAYER.match(self.module)["block_list"]

    @property
    def kind_module(self) -> str:
        return _LAYER.match(self.module)["module"]

    @property
    def layer(self) -> int:
        return int(_LAYER.match(self.module)["layer"])


@dataclass
class Observation:
    forwards: list[list[Call]] = field(default_factory=list)
    steps: int = 0

    def per_forward(self, index: int = 0) -> Counter:
        """Calls of one forward, counted per (block list path, module attribute, via, masked)."""
        return Counter((c.block_list, c.kind_module, c.via, c.masked) for c in self.forwards[index])


@contextmanager
def observe(transformer):
    """Record every attention call inside `transformer`'s forwards (text-encoder calls are outside and ignored)."""
    obs = Observation()
    state = {"module": None, "inside": False, "busy": False, "thread": None}
    attention = {m: n for n, m in transformer.named_modules() if hasattr(m, "processor")}

    def enter(*_):
        obs.forwards.append([])
        state["inside"] = True
        state["thread"] = threading.get_ident()

    def leave(*_):
        state["inside"] = False

    hooks = [transformer.register_forward_pre_hook(enter), transformer.register_forward_hook(leave)]
    for module, name in attention.items():
        hooks.append(module.register_forward_pre_hook(lambda *_, n=name: state.update(module=n)))
        hooks.append(module.register_forward_hook(lambda *_: state.update(module=None)))

    def ours() -> bool:
        """An outermost attention call of an observed attention module, in the transformer's thread."""
        return (state["inside"] and state["module"] is not None and not state["busy"]
                and state["thread"] == threading.get_ident())

    def record(via, q, k, mask, layout):
        if layout == "BSHD":
            batch, q_len, heads, head_dim = q.shape
            kv_len = k.shape[1]
        else:
            batch, heads, q_len, head_dim = q.shape
            kv_len = k.shape[2]
        mask_dtype = mask_shape = None
        fully_masked = 0
        if mask is not None:
            mask_dtype = "bool" if mask.dtype == torch.bool else str(mask.dtype).removeprefix("torch.")
            mask_shape = tuple(mask.shape)
            if mask.dtype == torch.bool:
                fully_masked = int((~mask.expand(batch, -1, q_len, kv_len).any(dim=-1)).sum())
        obs.forwards[-1].append(Call(state["module"], via, mask is not None, heads, head_dim, q_len, kv_len, batch,
                                     mask_dtype, mask_shape, fully_masked))

    patched = []
    stock_sdpa = F.scaled_dot_product_attention

    def call_recorded(stock, via, layout, query, key, value, attn_mask, args, kwargs):
        if not ours():
            return stock(query, key, value, attn_mask, *args, **kwargs)
        record(via, query, key, attn_mask, layout)
        state["busy"] = True
        try:
            return stock(query, key, value, attn_mask, *args, **kwargs)
        finally:
            state["busy"] = False

    def sdpa(query, key, value, attn_mask=None, *args, **kwargs):
        return call_recorded(stock_sdpa, "sdpa", "BHSD", query, key, value, attn_mask, args, kwargs)

    for proc_module in {sys.modules[type(m.processor).__module__] for m in attention}:
        stock = getattr(proc_module, "dispatch_attention_fn", None)
        if stock is None:
            continue

        def dispatch(query, key, value, attn_mask=None, *args, _stock=stock, **kwargs):
            return call_recorded(_stock, "dispatch", "BSHD", query, key, value, attn_mask, args, kwargs)

        proc_module.dispatch_attention_fn = dispatch
        patched.append((proc_module, stock))
    F.scaled_dot_product_attention = sdpa
    try:
        yield obs
    finally:
        F.scaled_dot_product_attention = stock_sdpa
        for proc_module, stock in patched:
            proc_module.dispatch_attention_fn = stock
        for hook in hooks:
            hook.remove()
