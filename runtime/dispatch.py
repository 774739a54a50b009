"""FP8 enters at diffusers' attention dispatch, not in a processor of ours.

The stock diffusers processors stay in place and keep doing projections, norms, RoPE and the I2V image context.
`runtime.install` points each planned processor's backend at the `qcompile` backend registered here (on first
install) and puts a forward pre-hook on its attention module that makes the module's `Site` current. When the
processor calls `dispatch_attention_fn(..., backend="qcompile", parallel_config=...)`, `qcompile_attention`
asks that site which attention function runs:

- native: diffusers' dispatch again with the backend the processor had before (so an all-native plan, and
  every native cell, is the stock computation, context parallelism included);
- FP8: our backend's `attend(q, k, v, rotation)` (BSND). Under Ulysses it runs inside diffusers' templated
  context-parallel attention, after the all-to-all, where each rank holds the full sequence for its heads and
  quantizes exactly the blocks one process would. Cross-attention, whose queries diffusers keeps sharded, runs
  locally on the rank's query tokens. Ring (and Ulysses-anything padding) is refused before the forward starts,
  by the component hook (runtime/hooks.py).

Per call this reads a few attributes and increments one counter: the per-forward decisions (the bool `fp8`, the
rotation matrix, the process group for error metrics) are set once per transformer forward by the hook.

The current site is thread-local: pipelines called in several threads at once each see their own module's site
between its pre-hook and its dispatch call. Everything else a site holds belongs to its pipeline, which runs one
call at a time (runtime/install.py refuses a second thread's entry).

Processors that call `F.scaled_dot_product_attention` themselves reach `Site.attend` through the processor entry
(runtime/processor_entry.py) instead of this backend.
"""

from __future__ import annotations

import functools
import math
import threading
from collections.abc import Callable
from typing import Any

import torch

from runtime.backends.base import AttentionBackend
from runtime.call_record import CallRecord
from runtime.diffusers_private import (
    backend_call,
    processor_backend,
    register_attention_backend,
    templated_context_parallel_attention,
)
from runtime.metrics import CallError, call_error
from runtime.step_tracker import CallContext

QCOMPILE_BACKEND_VALUE = "qcompile"
PLAN, SHADOW = "plan", "shadow"


class ComponentState:
    """What every site of one transformer component shares, kept current by its hook once per forward."""

    def __init__(self, component: str, mode: str, backend: AttentionBackend | None, context: CallContext):
        self.component = component
        self.mode = mode  # PLAN: follow the flags; SHADOW: native output, FP8 error recorded
        self.backend = backend  # the FP8 backend; None: planned FP8 cells fall back to native
        self.context = context
        self.rotation: torch.Tensor | None = None
        # The context-parallel process group while the model is parallel: per-call errors are all-reduced over
        # it, so each record is the error of the full-sequence call, the same on every rank.
        self.error_group: Any = None
        self.observer: Callable[[CallRecord], None] | None = None  # plan mode: records of FP8 calls
        self.sink: list[CallRecord] | None = None  # shadow mode: where records go


class Site:
    """One attention module of the plan: (component, kind, layer), its stock processor, this forward's flag
    and its call counters (harvested by the hook after each forward)."""

    __slots__ = ("component", "kind", "layer", "module", "processor", "stock_backend", "state", "fp8",
                 "native_calls", "fp8_calls", "fallback_calls")

    def __init__(self, component: str, kind: str, layer: int, module: Any, state: ComponentState,
                 stock_backend: Any = None):
        self.component, self.kind, self.layer = component, kind, layer
        self.module = module
        self.processor = module.processor
        # None: the backend the processor dispatches to; the processor entry passes its own (processor_entry.py)
        self.stock_backend = processor_backend(self.processor) if stock_backend is None else stock_backend
        self.state = state
        self.fp8 = False
        self.native_calls = self.fp8_calls = self.fallback_calls = 0

    def take_counts(self) -> tuple[int, int, int]:
        counts = (self.native_calls, self.fp8_calls, self.fallback_calls)
        self.native_calls = self.fp8_calls = self.fallback_calls = 0
        return counts

    def make_current(self, module: Any, args: Any) -> None:  # the attention module's forward pre-hook
        _current.site = self

    def attend(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, attn_mask: Any, dropout_p: float,
               is_causal: bool, scale: float | None, enable_gqa: bool, parallel_config: Any) -> torch.Tensor:
        state = self.state
        counting = not torch.compiler.is_compiling()  # a counter bumped in a graph would recompile it each call
        if not self.fp8 and state.mode == PLAN:  # the common native cell: straight to the stock backend
            if counting:
                self.native_calls += 1
            return backend_call(self.stock_backend, query, key, value, attn_mask, dropout_p, is_causal, scale,
                                enable_gqa, parallel_config)
        eligible = state.backend is not None and _fp8_eligible(query, attn_mask, dropout_p, is_causal, scale, enable_gqa)
        if state.mode == SHADOW:
            native = self._native(query, key, value, attn_mask, dropout_p, is_causal, scale, enable_gqa,
                                  parallel_config)
            if eligible:
                fp8 = self._fp8(query, key, value, parallel_config)
                state.sink.append(self._record(fp8, native, used="native"))
            return native
        if self.fp8 and eligible:
            if counting:
                self.fp8_calls += 1
            out = self._fp8(query, key, value, parallel_config)
            if state.observer is not None:
                native = self._native(query, key, value, attn_mask, dropout_p, is_causal, scale, enable_gqa,
                                      parallel_config)
                state.observer(self._record(out, native, used="fp8"))
            return out
        if counting:
            self.fallback_calls += 1  # planned FP8, but no backend serves it or this call is not FP8-eligible
        return self._native(query, key, value, attn_mask, dropout_p, is_causal, scale, enable_gqa, parallel_config)

    def _native(self, query, key, value, attn_mask, dropout_p, is_causal, scale, enable_gqa, parallel_config):
        return backend_call(self.stock_backend, query, key, value, attn_mask, dropout_p, is_causal, scale,
                            enable_gqa, parallel_config)

    def _fp8(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, parallel_config: Any) -> torch.Tensor:
        if parallel_config is None:  # one process, or cross-attention under CP (queries sharded, K/V whole)
            return self.state.backend.attend(query, key, value, self.state.rotation)
        return templated_context_parallel_attention(query, key, value, forward_op=self._fp8_forward_op,
                                                    parallel_config=parallel_config)

    def _fp8_forward_op(self, ctx: Any, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, attn_mask: Any,
                        dropout_p: float, is_causal: bool, scale: float | None, enable_gqa: bool, return_lse: bool,
                        _save_ctx: bool = True, _parallel_config: Any = None) -> torch.Tensor:
        # Runs after diffusers' Ulysses all-to-all: the full sequence for this rank's heads.
        if return_lse:  # ring merges partial results by log-sum-exp; the hook refuses ring before we get here
            raise RuntimeError("qcompile FP8 attention returns no log-sum-exp (ring attention is not supported)")
        return self.state.backend.attend(query, key, value, self.state.rotation)

    def _record(self, fp8: torch.Tensor, native: torch.Tensor, used: str) -> CallRecord:
        state = self.state
        error = call_error(fp8, native) if state.error_group is None else _gathered_error(fp8, native, state.error_group)
        return CallRecord(self.component, state.context.step, self.layer, self.kind, state.context.branch,
                          state.backend.name, error.cos_sim, error.rel_l1, error.rmse, used)


def _fp8_eligible(query: torch.Tensor, attn_mask: Any, dropout_p: float, is_causal: bool, scale: float | None,
                  enable_gqa: bool) -> bool:
    """The FP8 kernel takes no mask, no dropout, no causal flag, no GQA, and the default 1/sqrt(D) scale."""
    default_scale = scale is None or math.isclose(scale, 1.0 / math.sqrt(query.shape[-1]))
    return attn_mask is None and not dropout_p and not is_causal and not enable_gqa and default_scale


def _gathered_error(fp8: torch.Tensor, native: torch.Tensor, group: Any) -> CallError:
    """call_error over the whole call when each rank holds a shard of it: sum the sufficient statistics."""
    a = fp8.detach().reshape(-1).to(torch.float64)
    b = native.detach().reshape(-1).to(torch.float64)
    diff = a - b
    stats = torch.stack([torch.dot(a, b), torch.dot(a, a), torch.dot(b, b), diff.abs().sum(), b.abs().sum(),
                         torch.dot(diff, diff), torch.tensor(float(a.numel()), dtype=torch.float64)])
    torch.distributed.all_reduce(stats, group=group)
    dot, aa, bb, l1_diff, l1_ref, squared, count = stats.tolist()
    na, nb = math.sqrt(aa), math.sqrt(bb)
    cos = (1.0 if na == nb else 0.0) if na == 0 or nb == 0 else min(1.0, max(-1.0, dot / (na * nb)))
    rel = (0.0 if l1_diff == 0 else math.inf) if l1_ref == 0 else l1_diff / l1_ref
    return CallError(cos_sim=cos, rel_l1=rel, rmse=math.sqrt(squared / count))


class _Current(threading.local):
    site: Site | None = None  # per thread: the attention module whose forward is running in this thread


_current = _Current()


def qcompile_attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, attn_mask: Any = None,
                       dropout_p: float = 0.0, is_causal: bool = False, scale: float | None = None,
                       enable_gqa: bool = False, _parallel_config: Any = None) -> torch.Tensor:
    """The function diffusers' dispatch calls for backend "qcompile"."""
    site = _current.site
    if site is None:
        raise RuntimeError("attention backend 'qcompile' called outside an attention module qcompile installed; "
                           "set it with runtime.load(...), not with set_attention_backend")
    return site.attend(query, key, value, attn_mask, dropout_p, is_causal, scale, enable_gqa, _parallel_config)


@functools.cache
def qcompile_backend() -> Any:
    """The `qcompile` member of diffusers' AttentionBackendName, registered on first use (runtime.load/shadow
    install), so importing runtime leaves diffusers' backend enum alone."""
    # Context parallel: native cells are diffusers' own CP path; FP8 cells run inside its Ulysses template.
    return register_attention_backend(QCOMPILE_BACKEND_VALUE, qcompile_attention, supports_context_parallel=True)
