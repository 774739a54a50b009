"""The processor entry: attention of processors that call `F.scaled_dot_product_attention` themselves.

Most diffusers processors call `dispatch_attention_fn`, where qcompile's backend is installed (runtime/dispatch.py,
the dispatcher entry). A few call SDPA directly: CogVideoX's `CogVideoXAttnProcessor2_0` (and its fused twin) and
the generic `AttnProcessor2_0` (HunyuanVideo-1.5's token refiner), once per forward, and Mochi's
`MochiAttnProcessor2_0`, once per sample in a loop over the batch (batch 1, each sample's own length, no mask;
diffusers_private.SDPA_PROCESSOR_CALLS). runtime/install.py decides per attention module: a processor with an
`_attention_backend` takes the dispatcher entry, one of those classes the processor entry, anything else is
refused.

Every SDPA call made while the module's forward runs is that module's (step, layer) cell: the mode below sends each
one to the same `Site`, which decides and counts per call, so a per-sample processor's forward counts B calls of
its cell, all in the lane the cell says (the report's cells hold B calls per forward; `matches_plan` compares
lanes, not counts).

While a planned module's forward runs, a `torch.overrides.TorchFunctionMode` holding the module's `Site` is pushed
on the thread's function-mode stack: the forward pre-hook pushes it, a forward hook registered with
`always_call=True` pops it, so a forward that raises leaves nothing pushed (a KeyboardInterrupt, which torch
does not run such hooks for, leaves a mode that the next attention forward of the thread drops). Each SDPA call the processor makes
then goes to `Site.attend` (the same decisions, counters, shadow mode and observer records as a dispatcher call),
its [B, H, S, D] query, key and value passed as [B, S, H, D] views (the dispatcher's layout, which Site and the
backends take), the mask as it is (SDPA's and the dispatcher's masks are the same [B, H, Sq, Sk]-broadcastable
tensor; a bool mask means "keep" in both), and the output returned as [B, H, S, D].

Why a mode rather than the alternatives:
- a patched `torch.nn.functional.scaled_dot_product_attention` (or the processor module's `F`) is process-wide:
  every other thread's SDPA, and every SDPA outside the attention module, would go through it. Torch's
  function-mode stack is per thread, so only the calls made in this thread during the module's forward are seen;
- a wrapper processor would replace the stock processor object that `attn_processors`, `set_processor` and the
  site check see: with the mode the stock processor stays in place, and unload removes two hooks, nothing else;
- the mode is popped while it handles a call (torch's rule), so the quantized backend's own torch calls, and
  the native replay below, are never intercepted again.

Native cells: the site's stock backend is `qcompile-sdpa` (registered like `qcompile`), whose function replays
the processor's own call, the very same function with the very same arguments, when Site.attend asks for native
attention on the tensors the entry gave it (and runs SDPA on what it is given otherwise). So every native cell,
and an all-native plan, is bit-identical to stock.

Context parallelism: these processors have no `_parallel_config` and their models no `_cp_plan`; the component
hook refuses a parallel layout where a processor-entry site may run quantized (runtime/hooks.py).
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Callable
from typing import Any, NamedTuple

import torch
from torch.overrides import TorchFunctionMode

from runtime.diffusers_private import SDPA_BUILTIN, current_function_mode, register_attention_backend

QCOMPILE_SDPA_BACKEND_VALUE = "qcompile-sdpa"


class _SdpaCall(NamedTuple):
    """One SDPA call a processor made: the call itself, and the BSND views handed to Site.attend."""

    func: Callable[..., torch.Tensor]
    args: tuple
    kwargs: dict
    query: torch.Tensor
    key: torch.Tensor
    value: torch.Tensor
    attn_mask: Any


class _Thread(threading.local):
    def __init__(self) -> None:
        self.entries: list[tuple[torch.nn.Module, _SiteMode]] = []  # pushed modes, innermost last
        self.call: _SdpaCall | None = None  # the SDPA call Site.attend is serving in this thread


_thread = _Thread()
_installed: weakref.WeakKeyDictionary[torch.nn.Module, Any] = weakref.WeakKeyDictionary()  # module -> its site


def _sdpa_arguments(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, attn_mask: Any = None,
                    dropout_p: float = 0.0, is_causal: bool = False, scale: float | None = None, *,
                    enable_gqa: bool = False) -> tuple:
    """F.scaled_dot_product_attention's signature: its arguments, however the processor passed them."""
    return query, key, value, attn_mask, dropout_p, is_causal, scale, enable_gqa


class _SiteMode(TorchFunctionMode):
    """Sends the SDPA calls of one attention module's forward, in one thread, to its site."""

    def __init__(self, site: Any):
        super().__init__()
        self.site = site
        self.active = True  # False once popped (a mode a BaseException left on the stack passes calls through)

    def __torch_function__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        if func is not SDPA_BUILTIN or not self.active:
            return func(*args, **kwargs)
        query, key, value, attn_mask, dropout_p, is_causal, scale, enable_gqa = _sdpa_arguments(*args, **kwargs)
        if not query.dim() == key.dim() == value.dim() == 4:
            return func(*args, **kwargs)  # not [B, H, S, D]: no site serves it (the cell shows as skipped)
        q, k, v = query.transpose(1, 2), key.transpose(1, 2), value.transpose(1, 2)
        previous, _thread.call = _thread.call, _SdpaCall(func, args, kwargs, q, k, v, attn_mask)
        try:
            out = self.site.attend(q, k, v, attn_mask, dropout_p, is_causal, scale, enable_gqa, None)
        finally:
            _thread.call = previous
        return out.transpose(1, 2)


def _stock_sdpa(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, attn_mask: Any = None,
                dropout_p: float = 0.0, is_causal: bool = False, scale: float | None = None,
                enable_gqa: bool = False) -> torch.Tensor:
    """The `qcompile-sdpa` backend: native attention for a processor-entry site, BSND in and out."""
    call = _thread.call
    if call is None:
        raise RuntimeError(f"attention backend {QCOMPILE_SDPA_BACKEND_VALUE!r} called outside an attention call "
                           "qcompile's processor entry serves; set it with runtime.load(...), not with "
                           "set_attention_backend")
    if query is call.query and key is call.key and value is call.value and attn_mask is call.attn_mask:
        return call.func(*call.args, **call.kwargs).transpose(1, 2)  # the processor's own call, as it made it
    out = call.func(query.transpose(1, 2), key.transpose(1, 2), value.transpose(1, 2), attn_mask=attn_mask,
                    dropout_p=dropout_p, is_causal=is_causal, scale=scale, enable_gqa=enable_gqa)
    return out.transpose(1, 2)


_stock_member: Any = None  # registered by the first install of a processor-entry site


def sdpa_stock_backend() -> Any:
    """The `qcompile-sdpa` member of diffusers' AttentionBackendName: the stock backend of processor-entry sites."""
    global _stock_member
    if _stock_member is None:  # registration is idempotent: two threads' first installs get the same member
        _stock_member = register_attention_backend(QCOMPILE_SDPA_BACKEND_VALUE, _stock_sdpa,
                                                   supports_context_parallel=False)
    return _stock_member


def is_processor_site(site: Any) -> bool:
    """Whether `site` is reached through the processor entry (never registers anything)."""
    return _stock_member is not None and site.stock_backend is _stock_member


def installed_site(module: torch.nn.Module) -> Any:
    """The site whose processor entry is on `module` (None: none is)."""
    return _installed.get(module)


def _drop_stale(entries: list) -> None:
    """Drop the modes a forward interrupted by a BaseException left behind (torch runs always-called forward hooks
    for an Exception only: a KeyboardInterrupt skips them). Attention modules do not nest, so any entry found
    when an attention forward starts is such a one: it stops serving, and leaves torch's stack if on top."""
    while entries:
        _, mode = entries.pop()
        mode.active = False
        if current_function_mode() is mode:
            mode.__exit__(None, None, None)


def install_entry(site: Any) -> Callable[[], None]:
    """Put the processor entry on `site.module` (forward pre-hook and always-called forward hook); returns the
    undo."""
    module = site.module

    def enter(module: torch.nn.Module, args: Any) -> None:
        _drop_stale(_thread.entries)
        mode = _SiteMode(site)
        mode.__enter__()
        _thread.entries.append((module, mode))

    def leave(module: torch.nn.Module, args: Any, output: Any) -> None:
        entries = _thread.entries
        # Only a forward whose pre-hook ran here pushed a mode (an earlier pre-hook may have raised first).
        if entries and entries[-1][0] is module:
            _, mode = entries.pop()
            mode.active = False
            mode.__exit__(None, None, None)

    pre = module.register_forward_pre_hook(enter)
    post = module.register_forward_hook(leave, always_call=True)
    _installed[module] = site

    def undo() -> None:
        pre.remove()
        post.remove()
        if _installed.get(module) is site:
            del _installed[module]

    return undo
