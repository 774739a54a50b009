"""The one installer for plan mode (`runtime.load`) and shadow mode (`runtime.shadow`).

For each component x attention kind x layer (module paths from the family data: block list path, layer, module),
it keeps the stock processor and installs one of two entries, chosen per attention module by its processor:
- the dispatcher entry, for a processor that calls diffusers' `dispatch_attention_fn` (it has an
  `_attention_backend`): its backend points at qcompile's dispatch backend, and a forward pre-hook on the
  attention module makes its Site current (runtime/dispatch.py);
- the processor entry, for a processor known to call `F.scaled_dot_product_attention` itself
  (diffusers_private.SDPA_PROCESSOR_CALLS: CogVideoX's, the generic AttnProcessor2_0, once per forward; Mochi's,
  once per sample): hooks on the attention module send its SDPA calls to its Site while its forward runs
  (runtime/processor_entry.py). Such a module needs no `set_processor` (Mochi's MochiAttention has none).
Any other processor is refused. One model may mix both (HunyuanVideo-1.5: dispatcher joint blocks, an SDPA token
refiner). Then one ComponentHook per component. Removal undoes exactly that, in reverse, so the pipeline is stock
again (and keeps whatever `enable_parallelism` set on the processors, before or after install).

It also wraps the pipeline's `__call__` so that a call owns the plan's per-call state for its whole duration, in
its thread (StepTracker.enter_call): a second thread entering the same pipeline meanwhile is refused before it
touches the scheduler, and the first call goes on unharmed.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from runtime.diffusers_private import (
    SDPA_PROCESSOR_CLASSES,
    calls_sdpa,
    has_processor_backend,
    processor_backend,
    set_processor_backend,
)
from runtime.dispatch import ComponentState, Site, qcompile_backend
from runtime.errors import PlanMismatchError
from runtime.execution_report import CellCounts
from runtime.hooks import ComponentHook
from runtime.models.base import DISPATCHER, PROCESSOR
from runtime.processor_entry import install_entry, installed_site, sdpa_stock_backend
from runtime.step_tracker import StepTracker

INSTALLED_ATTR = "_qcompile_runtime"  # set on a pipeline while a plan or shadow recorder is installed


@dataclass(frozen=True)
class ComponentSpec:
    """What to install on one component. `rows[kind][step]`: the plan's flags (None in shadow mode);
    `rotation`: (head_dim, seed) when FP8 calls rotate Q and K."""

    name: str
    model: torch.nn.Module
    modules: Mapping[str, Sequence[str]]  # kind -> the module path of each layer (runtime.checks.attention_paths)
    state: ComponentState
    rows: Mapping[str, Sequence[Sequence[bool]]] | None
    counts: Mapping[str, CellCounts] | None
    rotation: tuple[int, int] | None
    needs_quantized: bool


@dataclass
class Installation:
    hooks: list[ComponentHook] = field(default_factory=list)
    sites: list[Site] = field(default_factory=list)
    _undo: list[Callable[[], None]] = field(default_factory=list)

    def states(self) -> list[ComponentState]:
        return [hook.state for hook in self.hooks]

    def remove(self) -> None:
        for undo in reversed(self._undo):
            undo()
        self._undo, self.hooks, self.sites = [], [], []


def mark_installed(pipe: Any, owner: object) -> None:
    current = getattr(pipe, INSTALLED_ATTR, None)
    if current is not None:
        raise PlanMismatchError(
            f"this pipeline already has a qcompile {type(current).__name__} installed; unload it first"
        )
    setattr(pipe, INSTALLED_ATTR, owner)


def unmark_installed(pipe: Any, owner: object) -> None:
    if getattr(pipe, INSTALLED_ATTR, None) is owner:
        delattr(pipe, INSTALLED_ATTR)


def attention_module(model: torch.nn.Module, component: str, kind: str, path: str) -> tuple[Any, str]:
    """The attention module at `path` and the entry that reaches its calls (DISPATCHER or PROCESSOR)."""
    try:
        module = model.get_submodule(path)
    except AttributeError:
        raise PlanMismatchError(f"{component} has no attention module {path} ({kind} attention)") from None
    processor = getattr(module, "processor", None)
    # A module without set_processor (Mochi's MochiAttention) is served when its processor is one the entry serves
    if not hasattr(module, "set_processor") and not calls_sdpa(processor):
        raise PlanMismatchError(f"{component}.{path} is a {type(module).__name__}, not a diffusers attention module "
                                "with a processor")
    if calls_sdpa(processor):  # first: set_attention_backend never gives these an `_attention_backend`, but a user may
        if installed_site(module) is not None:
            raise PlanMismatchError(f"{component}.{path} already runs qcompile's processor entry; unload it first")
        return module, PROCESSOR
    if has_processor_backend(processor):
        if processor_backend(processor) is qcompile_backend():
            raise PlanMismatchError(f"{component}.{path} already runs qcompile's attention backend; unload it first")
        return module, DISPATCHER
    raise PlanMismatchError(
        f"{component}.{path} ({kind} attention) has the attention processor {type(processor).__name__}, which "
        "qcompile cannot reach: it serves processors that call diffusers' attention dispatch (they have an "
        "`_attention_backend`) and the processors known to call F.scaled_dot_product_attention themselves "
        f"({', '.join(SDPA_PROCESSOR_CLASSES)}). Use the model's stock processors (set_default_attn_processor or "
        "the class's own), or add the processor's class to runtime/diffusers_private.py if it calls SDPA once "
        "per forward or once per sample"
    )


def guard_calls(tracker: StepTracker) -> Callable[[], None]:
    """Make `pipe(...)` own the call in its thread (tracker.enter_call / exit_call); returns the undo.

    Python looks `__call__` up on the type, never on the instance, so the pipeline gets a subclass of its own
    class, made for it alone (same name, module and MRO otherwise: isinstance, save_pretrained's `_class_name`
    and the family check see the same class), and gets its class back at unload. diffusers' hooks cannot do
    this: they see forwards, never the end of a pipeline call.
    """
    pipe = tracker.pipe
    cls = type(pipe)
    if not callable(pipe):
        return lambda: None
    call = cls.__call__
    active = True

    @functools.wraps(call)
    def __call__(self: Any, *args: Any, **kwargs: Any) -> Any:
        if not active or self is not pipe:  # unloaded while a subclass of ours was kept, or a copy of the pipeline
            return call(self, *args, **kwargs)
        tracker.enter_call()
        try:
            return call(self, *args, **kwargs)
        finally:
            tracker.exit_call()

    guarded = type(cls.__name__, (cls,), {"__call__": __call__, "__module__": cls.__module__,
                                          "__qualname__": cls.__qualname__, "__doc__": cls.__doc__})
    object.__setattr__(pipe, "__class__", guarded)

    def undo() -> None:
        nonlocal active
        active = False
        if type(pipe) is guarded:
            object.__setattr__(pipe, "__class__", cls)

    return undo


def install(specs: Sequence[ComponentSpec], tracker: StepTracker) -> Installation:
    """Install on every spec'd component; on any error, remove what was installed and re-raise."""
    installation = Installation()
    ours = qcompile_backend()
    try:
        installation._undo.append(guard_calls(tracker))
        for spec in specs:
            sites: dict[str, list[Site]] = {}
            for kind, paths in sorted(spec.modules.items()):
                kind_sites = []
                for layer, path in enumerate(paths):
                    module, entry = attention_module(spec.model, spec.name, kind, path)
                    if entry == PROCESSOR:
                        site = Site(spec.name, kind, layer, module, spec.state, stock_backend=sdpa_stock_backend())
                        installation._undo.append(install_entry(site))
                    else:
                        site = Site(spec.name, kind, layer, module, spec.state)
                        set_processor_backend(site.processor, ours)
                        installation._undo.append(lambda s=site: set_processor_backend(s.processor, s.stock_backend))
                        handle = module.register_forward_pre_hook(site.make_current)
                        installation._undo.append(handle.remove)
                    kind_sites.append(site)
                sites[kind] = kind_sites
                installation.sites.extend(kind_sites)
            hook = ComponentHook(spec.model, spec.state, sites, spec.rows, tracker, spec.counts, spec.rotation,
                                 spec.needs_quantized)
            hook.check_layout()  # refuse an unservable parallel layout at install time too
            hook.install()
            installation._undo.append(hook.remove)
            installation.hooks.append(hook)
    except BaseException:
        installation.remove()
        raise
    return installation
