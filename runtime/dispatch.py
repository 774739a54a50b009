"""FP8 enters at diffusers' attention dispatch, not in a processor of ours.

The stock diffusers processors stay in place and keep doing projections, norms, RoPE and the I2V image context.
`runtime.install` points each planned processor's backend at the `qcompile` backend registered here (on first
install) and puts a forward pre-hook on its attention module that makes the module's `Site` current. When the
processor calls `dispatch_attention_fn(..., backend="qcompile", parallel_config=...)`, `qcompile_attention`
asks that site which attention function runs:

- native: diffusers' dispatch again with the backend the processor had before (so an all-native plan, and
  every native cell, is the stock computation, context parallelism included);
- FP8: our backend's `attend(q, k, v, rotation)` (BSND). A call with a padding mask (text padding) runs it per
  batch sample over the valid tokens only (runtime/masks.py); a call the kernel cannot take (another mask,
  dropout, ...) follows the plan's fallback policy: the stock attention, counted as a fallback, or
  UnservableCallError. Under Ulysses it runs inside diffusers' templated context-parallel attention, after the
  all-to-all, where each rank holds the full sequence for its heads and quantizes exactly the blocks one process
  would (joint [text, image] attention, whose all-to-all gives the ranks' shards in rank order, is put
  back in one process's token order first; masked calls with a `parallel_config` run stock, counted as
  fallback). Cross-attention, whose queries diffusers keeps sharded, runs locally on the rank's query tokens.
  A mask with a `parallel_config` that is the same on every head goes on (native or quantized) as one head, so
  it broadcasts to the rank's H/N heads after the all-to-all (LTX-Video's cross-attention; runtime/masks.py).
  Ring (and Ulysses-anything padding) is refused before the forward starts, by the component hook
  (runtime/hooks.py).

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
from runtime.errors import UnservableCallError
from runtime.masks import Packing, analyze, as_4d, one_head, run_packed
from runtime.metrics import CallError, call_error
from runtime.step_tracker import CallContext

QCOMPILE_BACKEND_VALUE = "qcompile"
PLAN, SHADOW = "plan", "shadow"


class ComponentState:
    """What every site of one transformer component shares, kept current by its hook once per forward."""

    def __init__(self, component: str, mode: str, backend: AttentionBackend | None, context: CallContext,
                 fallback: str = "native"):
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
        self.fallback = fallback  # the plan's policy for a planned-quantized call the kernel cannot take
        # per kind, the quantized calls (shadow mode: measured calls) that carried a padding mask and ran packed
        # (runtime/masks.py)
        self.packed_calls: dict[str, int] = {}
        self.refused: dict[str, str] = {}  # per kind, why the kernel last refused a planned (shadowed) call
        self.unservable_calls: dict[str, int] = {}  # shadow mode: per kind, calls the kernel could not take
        # Under Ulysses, kinds whose one call attends over [text, image] with both streams sharded (Flux,
        # Qwen-Image joint attention): the all-to-all hands each rank [text_0, image_0, text_1, image_1, ...];
        # FP8 cells restore one process's [text, image] order (other blocks, other scales otherwise).
        # `text_tokens` is the rank's text shard length in this forward, set by the component hook.
        self.joint_kinds: frozenset[str] = frozenset()
        self.text_tokens = 0


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
        if parallel_config is not None and attn_mask is not None:
            # A mask the same on every head as one head: it then broadcasts to the rank's H/N heads after the
            # Ulysses all-to-all, which a mask kept at H heads does not (LTX-Video's cross-attention bias makes
            # stock diffusers raise). Native cells included; exact (runtime/masks.py `one_head`).
            attn_mask = one_head(attn_mask)
        if not self.fp8 and state.mode == PLAN:  # the common native cell: straight to the stock backend
            if counting:
                self.native_calls += 1
            return backend_call(self.stock_backend, query, key, value, attn_mask, dropout_p, is_causal, scale,
                                enable_gqa, parallel_config)
        if state.backend is None:
            packing, why = None, "no quantized backend serves this component"
        else:
            packing, why = _quantized_serving(query, key, attn_mask, dropout_p, is_causal, scale, enable_gqa,
                                              parallel_config)
        if state.mode == SHADOW:
            native = self._native(query, key, value, attn_mask, dropout_p, is_causal, scale, enable_gqa,
                                  parallel_config)
            if not why:
                fp8 = self._quantized(query, key, value, attn_mask, packing, scale, parallel_config)
                state.sink.append(self._record(fp8, native, used="native"))
                if packing is not None and counting:
                    state.packed_calls[self.kind] = state.packed_calls.get(self.kind, 0) + 1
            elif counting:
                state.unservable_calls[self.kind] = state.unservable_calls.get(self.kind, 0) + 1
                state.refused[self.kind] = why
            return native
        if not why:
            if counting:
                self.fp8_calls += 1
                if packing is not None:
                    state.packed_calls[self.kind] = state.packed_calls.get(self.kind, 0) + 1
            out = self._quantized(query, key, value, attn_mask, packing, scale, parallel_config)
            if state.observer is not None:
                native = self._native(query, key, value, attn_mask, dropout_p, is_causal, scale, enable_gqa,
                                      parallel_config)
                state.observer(self._record(out, native, used="fp8"))
            return out
        # Under context parallelism or inside a compiled graph a masked call keeps the stock path whatever the
        # policy (as before packing): packing needs the whole sequence's mask, read on the host (docs/runtime.md).
        stock_by_layout = attn_mask is not None and (parallel_config is not None or torch.compiler.is_compiling())
        if state.backend is not None and state.fallback == "error" and not stock_by_layout:
            raise UnservableCallError(
                f"{self.component} / {self.kind} layer {self.layer}, step {state.context.step} "
                f"({state.context.branch}): the plan runs this cell quantized, but the quantized kernel cannot take "
                f"this call as it is: {why}. The plan's fallback policy is 'error', so it is not run natively "
                f"behind your back. Fix: set `fallback: native` in the recipe (such calls then run the stock "
                f"attention and the report counts them as fallback), or keep {self.kind!r} native (leave it out of "
                f"the recipe's attention_kinds, or add a rule with precision: native for it)"
            )
        if counting:
            self.fallback_calls += 1  # planned FP8, but no backend serves it or this call is not FP8-eligible
            if state.backend is not None:
                state.refused[self.kind] = why
        return self._native(query, key, value, attn_mask, dropout_p, is_causal, scale, enable_gqa, parallel_config)

    def _native(self, query, key, value, attn_mask, dropout_p, is_causal, scale, enable_gqa, parallel_config):
        return backend_call(self.stock_backend, query, key, value, attn_mask, dropout_p, is_causal, scale,
                            enable_gqa, parallel_config)

    def _quantized(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, attn_mask: Any,
                   packing: Packing | None, scale: float | None, parallel_config: Any) -> torch.Tensor:
        if packing is None:
            return self._fp8(query, key, value, parallel_config)
        return run_packed(query, key, value, packing, self._fp8_packed,
                          lambda sample, rows: self._stock_rows(query, key, value, attn_mask, scale, sample, rows))

    def _fp8_packed(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
        return self.state.backend.attend(query, key, value, self.state.rotation)

    def _stock_rows(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, attn_mask: torch.Tensor,
                    scale: float | None, samples: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        """The stock attention of query rows `rows` of `samples` whose mask keeps no key: only it says what such
        a row holds (zeros on torch 2.13's SDPA, the unmasked attention for a finite bias)."""
        mask = as_4d(attn_mask, query, key)
        mask = mask if mask.shape[0] == 1 else mask[samples]
        mask = mask if mask.shape[2] == 1 else mask[:, :, rows]
        return backend_call(self.stock_backend, query[samples][:, rows], key[samples], value[samples], mask, 0.0,
                            False, scale, False, None)

    def _fp8(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, parallel_config: Any) -> torch.Tensor:
        if parallel_config is None:  # one process, or cross-attention under CP (queries sharded, K/V whole)
            return self.state.backend.attend(query, key, value, self.state.rotation)
        forward_op = self._fp8_forward_op
        if self.kind in self.state.joint_kinds and self.state.text_tokens:
            forward_op = self._fp8_joint_forward_op
        return templated_context_parallel_attention(query, key, value, forward_op=forward_op,
                                                    parallel_config=parallel_config)

    def _fp8_forward_op(self, ctx: Any, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, attn_mask: Any,
                        dropout_p: float, is_causal: bool, scale: float | None, enable_gqa: bool, return_lse: bool,
                        _save_ctx: bool = True, _parallel_config: Any = None) -> torch.Tensor:
        # Runs after diffusers' Ulysses all-to-all: the full sequence for this rank's heads.
        if return_lse:  # ring merges partial results by log-sum-exp; the hook refuses ring before we get here
            raise RuntimeError("qcompile FP8 attention returns no log-sum-exp (ring attention is not supported)")
        return self.state.backend.attend(query, key, value, self.state.rotation)

    def _fp8_joint_forward_op(self, ctx: Any, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                              *args: Any, _parallel_config: Any = None, **kwargs: Any) -> torch.Tensor:
        # After the all-to-all the sequence is the ranks' [text_r, image_r] in rank order: attend in one
        # process's [text, image] order, then hand the rows back in the order the all-to-all expects.
        ranks = _parallel_config.context_parallel_config.ulysses_degree
        text = self.state.text_tokens
        if query.shape[1] != key.shape[1] or not 0 < text < query.shape[1] // ranks:  # not [text, image] shards
            return self._fp8_forward_op(ctx, query, key, value, *args, _parallel_config=_parallel_config, **kwargs)
        out = self._fp8_forward_op(ctx, *(_one_process_order(x, ranks, text) for x in (query, key, value)), *args,
                                   _parallel_config=_parallel_config, **kwargs)
        batch, length, heads, dim = out.shape
        local_image = length // ranks - text
        return torch.cat([out[:, :ranks * text].reshape(batch, ranks, text, heads, dim),
                          out[:, ranks * text:].reshape(batch, ranks, local_image, heads, dim)], dim=2).flatten(1, 2)

    def _record(self, fp8: torch.Tensor, native: torch.Tensor, used: str) -> CallRecord:
        state = self.state
        error = call_error(fp8, native) if state.error_group is None else _gathered_error(fp8, native, state.error_group)
        return CallRecord(self.component, state.context.step, self.layer, self.kind, state.context.branch,
                          state.backend.name, error.cos_sim, error.rel_l1, error.rmse, used)


def _unservable_arguments(query: torch.Tensor, dropout_p: float, is_causal: bool, scale: float | None,
                          enable_gqa: bool) -> str:
    """What the quantized kernel cannot take besides a mask: it takes no dropout, no causal flag, no GQA, and only
    the default 1/sqrt(D) scale ("" when none)."""
    if dropout_p:
        return f"dropout_p={dropout_p}"
    if is_causal:
        return "a causal flag"
    if enable_gqa:
        return "grouped-query attention (enable_gqa)"
    if scale is not None and not math.isclose(scale, 1.0 / math.sqrt(query.shape[-1])):
        return f"the scale {scale:.6g} (the kernel applies 1/sqrt(head_dim))"
    return ""
def _one_process_order(x: torch.Tensor, ranks: int, text: int) -> torch.Tensor:
    """[text_0, image_0, text_1, image_1, ...] (BSND, equal shards) -> [text_0, text_1, ..., image_0, image_1, ...]."""
    shards = x.reshape(x.shape[0], ranks, x.shape[1] // ranks, *x.shape[2:])
    return torch.cat([shards[:, :, :text].flatten(1, 2), shards[:, :, text:].flatten(1, 2)], dim=1)


def joint_kinds(family: Any) -> frozenset[str]:
    """The family's kinds whose queries and keys are [text, image] in one call (both sharded under Ulysses)."""
    return frozenset(k.name for k in family.kind_specs
                     if len(k.query_tokens) == 2 and k.query_tokens[0] == "text" and k.key_tokens == k.query_tokens)


def _fp8_eligible(query: torch.Tensor, attn_mask: Any, dropout_p: float, is_causal: bool, scale: float | None,
                  enable_gqa: bool) -> bool:
    """The quantized kernel takes the call as it is: no mask, and nothing of `_unservable_arguments`."""
    return attn_mask is None and not _unservable_arguments(query, dropout_p, is_causal, scale, enable_gqa)


def _quantized_serving(query: torch.Tensor, key: torch.Tensor, attn_mask: Any, dropout_p: float, is_causal: bool,
                       scale: float | None, enable_gqa: bool, parallel_config: Any) -> tuple[Packing | None, str]:
    """How the quantized kernel serves a call: (None, "") as it is, (packing, "") over the valid tokens of a padding
    mask (runtime/masks.py), or (None, why it cannot)."""
    why = _unservable_arguments(query, dropout_p, is_causal, scale, enable_gqa)
    if why:
        return None, why
    if attn_mask is None:
        return None, ""
    if parallel_config is not None:
        # Under context parallelism each rank holds a shard of the sequence: packing would need the mask's valid
        # tokens per shard; masked calls keep the stock path (diffusers' own CP attention with the mask), counted
        # as fallback.
        return None, "an attention mask under context parallelism (packing runs in one process only)"
    if torch.compiler.is_compiling():
        return None, "an attention mask inside a compiled graph (packing reads the mask on the host)"
    analysis = analyze(query, key, attn_mask, scale)
    if analysis.packing is None:
        return None, f"an attention mask that is not a padding mask: {analysis.reason}"
    return analysis.packing, ""


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
