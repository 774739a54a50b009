"""The registry of attention backends and the one function that picks the backend serving a plan's quantized cells.

A backend is one module under runtime/backends/ whose class carries `@register_backend(name, ...)`: what it
serves (plan dtypes, head dims per dtype, P @ V precisions, devices, masks, context parallelism), its place in
`auto`'s order and its aliases. The registry imports every module of the package on first use (pkgutil), so adding
a backend = adding one module (and refreshing the torch-free manifest, qcompiler/backends.json, with
`python -m runtime.backends.manifest --write`). `backend="auto"` tries the backends with an `auto_order`, lowest
first: the first whose checks pass (its `auto_reason`, the plan's dtype and P @ V precision, imports, device, a
probe call) serves, and a log line says which and why each earlier one did not. Every backend can be forced by name
(or by an alias).
"""

from __future__ import annotations

import importlib
import logging
import pkgutil
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

from qcompiler.backend_table import BackendManifestEntry, HeadDims, no_backend_reason, serving_backends
from qcompiler.errors import QcompileError
from qcompiler.formats import format_names
from qcompiler.numerics import PV_PRECISIONS
from runtime.backends.base import AttentionBackend, QuantizedBackend
from runtime.numerics import Numerics

logger = logging.getLogger("runtime")

# What a backend may declare; the words the manifest and the docs' table use.
DEVICES = ("cpu", "cuda", "npu")
MASKS = ("none", "any")  # "none": full bidirectional attention only (masked calls run the stock processor)
_NAME = re.compile(r"^[a-z][a-z0-9]*(-[a-z0-9]+)*$")


class BackendRegistrationError(QcompileError, ValueError):
    """A `@register_backend` declaration is inconsistent (a programming error in a backend module, found when
    the module is imported)."""


@dataclass(frozen=True)
class BackendSpec:
    """One registered backend: its class and what it declared."""

    name: str
    cls: type[AttentionBackend]
    dtypes: tuple[str, ...]
    head_dims: Mapping[str, HeadDims]
    pv_precisions: tuple[str, ...]
    devices: tuple[str, ...]
    masks: tuple[str, ...]
    context_parallel: bool
    auto_order: int | None
    aliases: tuple[str, ...]
    summary: str
    module: str = field(default="", compare=False)

    @property
    def is_quantized(self) -> bool:
        return bool(self.dtypes)

    def make(self, numerics: Numerics | None = None) -> AttentionBackend:
        """An instance for a plan with `numerics` (a backend serving no quantized cells takes none)."""
        if issubclass(self.cls, QuantizedBackend):
            return self.cls(numerics) if numerics is not None else self.cls()
        return self.cls()

    def manifest_entry(self) -> BackendManifestEntry:
        return BackendManifestEntry(
            name=self.name, aliases=self.aliases, dtypes=self.dtypes, head_dims=dict(self.head_dims),
            pv_precisions=self.pv_precisions, devices=self.devices, masks=self.masks,
            context_parallel=self.context_parallel, auto_order=self.auto_order, summary=self.summary,
        )


_REGISTRY: dict[str, BackendSpec] = {}
_discovered = False

B = TypeVar("B", bound=type[AttentionBackend])


def _fail(name: str, what: str) -> BackendRegistrationError:
    return BackendRegistrationError(f"@register_backend({name!r}): {what}")


def _check_declaration(spec: BackendSpec) -> None:
    name = spec.name
    if not _NAME.match(name):
        raise _fail(name, "a backend name is lowercase words joined by '-' (e.g. 'fp8-triton')")
    taken = {"auto": "the selection mode", **{n: n for n in _REGISTRY},
             **{a: s.name for s in _REGISTRY.values() for a in s.aliases}}
    for word in (name, *spec.aliases):
        if word in taken and taken[word] != name:
            raise _fail(name, f"{word!r} is already taken by {taken[word]!r}")
    existing = _REGISTRY.get(name)
    # The same class registering again (its module reloaded) replaces itself; another class may not.
    if existing is not None and (existing.module, existing.cls.__qualname__) != (spec.module, spec.cls.__qualname__):
        raise _fail(name, f"already registered by {existing.cls.__qualname__} ({existing.module})")
    if not issubclass(spec.cls, AttentionBackend):
        raise _fail(name, f"{spec.cls!r} is not an AttentionBackend")
    quantized = issubclass(spec.cls, QuantizedBackend)
    if quantized != bool(spec.dtypes):
        raise _fail(name, "a QuantizedBackend declares the plan dtypes it runs, any other backend none")
    unknown = [d for d in spec.dtypes if d not in format_names()]
    if unknown:
        raise _fail(name, f"unknown dtype(s) {', '.join(unknown)} (dtypes: {', '.join(format_names())})")
    if set(spec.head_dims) != set(spec.dtypes):
        raise _fail(name, "head_dims must give the head dims of every dtype it runs, and of no other")
    if quantized and not spec.pv_precisions:
        raise _fail(name, f"pv_precisions must name the P @ V precisions it computes ({', '.join(PV_PRECISIONS)})")
    if any(p not in PV_PRECISIONS for p in spec.pv_precisions):
        raise _fail(name, f"pv_precisions must be among {', '.join(PV_PRECISIONS)}")
    if not spec.devices or any(d not in DEVICES for d in spec.devices):
        raise _fail(name, f"devices must be among {', '.join(DEVICES)}")
    if not spec.masks or any(m not in MASKS for m in spec.masks):
        raise _fail(name, f"masks must be among {', '.join(MASKS)}")
    if spec.auto_order is not None:
        if not quantized:
            raise _fail(name, "only a quantized backend can be tried by `auto` (auto_order=None)")
        clash = [s.name for s in _REGISTRY.values() if s.auto_order == spec.auto_order and s.name != name]
        if clash:
            raise _fail(name, f"auto_order {spec.auto_order} is already {clash[0]!r}'s")
    if not spec.summary.strip():
        raise _fail(name, "a one-line summary is required (it is the docs' table row)")


def register_backend(
    name: str, *, summary: str, devices: tuple[str, ...], dtypes: tuple[str, ...] = (),
    head_dims: HeadDims | Mapping[str, HeadDims] | None = None, pv_precisions: tuple[str, ...] = (),
    masks: tuple[str, ...] = ("none",), context_parallel: bool = True, auto_order: int | None = None,
    aliases: tuple[str, ...] = (),
) -> Callable[[B], B]:
    """Class decorator: register the AttentionBackend subclass under `name`.

    dtypes: the plan dtypes it runs (none for a backend that serves no quantized cells); head_dims: the head dims
    it takes, one HeadDims for every dtype or one per dtype; pv_precisions: the P @ V precisions it computes;
    devices: where it runs ("cpu", "cuda", "npu"); masks: "none" (full bidirectional attention only) or "any";
    context_parallel: serves under diffusers' Ulysses context parallelism (the qcompile dispatch runs it inside
    the Ulysses template); auto_order: its place in `auto`'s order (lowest first), None = only by name;
    aliases: other names it answers to; summary: one line for the docs' table.
    Sets `name`, `dtypes`, `head_dims` and `pv_precisions` on the class.
    """
    dims = {} if head_dims is None else (
        dict.fromkeys(dtypes, head_dims) if isinstance(head_dims, HeadDims) else dict(head_dims))

    def decorate(cls: B) -> B:
        spec = BackendSpec(
            name=name, cls=cls, dtypes=tuple(dtypes), head_dims=dims, pv_precisions=tuple(pv_precisions),
            devices=tuple(devices), masks=tuple(masks), context_parallel=context_parallel, auto_order=auto_order,
            aliases=tuple(aliases), summary=summary, module=cls.__module__,
        )
        _check_declaration(spec)
        cls.name = name
        if issubclass(cls, QuantizedBackend):
            cls.dtypes, cls.head_dims, cls.pv_precisions = spec.dtypes, dims, spec.pv_precisions
        _REGISTRY[name] = spec
        return cls

    return decorate


def unregister_backend(name: str) -> None:
    """Remove a registration (a backend registered for a test or by a plugin that is being unloaded)."""
    _REGISTRY.pop(name, None)


def import_backend_modules(package: str) -> list[str]:
    """Import every module of `package` (each backend module registers itself when imported); returns their
    names. The registry does it for runtime.backends on first use."""
    folder = importlib.import_module(package)
    names = [f"{package}.{info.name}" for info in sorted(pkgutil.iter_modules(folder.__path__), key=lambda i: i.name)]
    for name in names:
        importlib.import_module(name)
    return names


def _discover() -> None:
    global _discovered
    if not _discovered:
        import_backend_modules("runtime.backends")
        _discovered = True


def _order(spec: BackendSpec) -> tuple[Any, ...]:
    # The backends `auto` never tries first (by name), then `auto`'s order: the order of every listing.
    return (spec.auto_order is not None, spec.auto_order or 0, spec.name)


def backends() -> dict[str, BackendSpec]:
    """Every registered backend by name: first those only chosen by name (alphabetically), then `auto`'s order."""
    _discover()
    return {spec.name: spec for spec in sorted(_REGISTRY.values(), key=_order)}


def aliases() -> dict[str, str]:
    """alias -> backend name."""
    return {alias: spec.name for spec in backends().values() for alias in spec.aliases}


def backend_names() -> tuple[str, ...]:
    """Every name `backend=` takes: "auto", the backends, then their aliases."""
    return ("auto", *backends(), *aliases())


def __getattr__(attribute: str) -> Any:
    # Computed on each access so a backend registered later (a plugin, a test) is listed too.
    if attribute == "BACKENDS":
        return backends()
    if attribute == "BACKEND_NAMES":
        return backend_names()
    raise AttributeError(f"module {__name__!r} has no attribute {attribute!r}")


def canonical_name(name: str) -> str:
    """The registry name for `name` (aliases resolved); ValueError naming the choices for an unknown one."""
    registered = backends()
    if name == "auto" or name in registered:
        return name
    alias_of = aliases()
    if name in alias_of:
        return alias_of[name]
    raise ValueError(f"unknown attention backend {name!r}; choose one of {', '.join(backend_names())}")


def _capability_reason(backend: AttentionBackend) -> str | None:
    if not backend.is_quantized:
        return f"backend {backend.name!r} is not a quantized backend"
    # The dtype first: "cannot run int8_per_tensor" says more than "torch_npu is not installed" about a backend
    # that could never serve this plan.
    reason = backend.dtype_reason() if isinstance(backend, QuantizedBackend) else None
    return reason if reason is not None else backend.unavailable_reason()


def resolve_quantized_backend(
    name: str | AttentionBackend, numerics: Numerics | None = None
) -> tuple[AttentionBackend | None, str]:
    """THE selection function: the backend that serves the plan's quantized cells under `name`, or (None, why
    nothing can; the caller applies the plan's fallback policy). `name` may also be a backend object (e.g. an
    NPU backend with a stand-in op in tests).

    `auto` tries the backends with an `auto_order`, lowest first, and never falls back to the reference emulation
    on its own: it is slow and only for checking numerics, so it runs only when asked for by name.
    """
    numerics = numerics or Numerics()
    if isinstance(name, AttentionBackend):
        reason = _capability_reason(name)
        return (name, "") if reason is None else (None, reason)
    name = canonical_name(name)
    if name == "native":
        return None, "backend='native' was requested"
    registered = backends()
    if name != "auto":
        backend = registered[name].make(numerics)
        reason = _capability_reason(backend)
        return (backend, "") if reason is None else (None, reason)
    skipped = []
    for spec in registered.values():
        if spec.auto_order is None:
            continue
        reason = spec.cls.auto_reason()
        backend = spec.make(numerics)
        reason = reason or _capability_reason(backend)
        if reason is None:
            logger.info("backend='auto' chose %s for %s%s", spec.name, numerics.dtype,
                        f" (skipped: {'; '.join(skipped)})" if skipped else "")
            return backend, ""
        skipped.append(f"{spec.name}: {reason}")
    why = "; ".join(skipped)
    logger.info("backend='auto' found no quantized attention kernel for %s: %s", numerics.dtype, why)
    return None, (f"backend='auto' found no kernel for {numerics.dtype} ({why}); pass backend='reference' to "
                  "emulate it in PyTorch")


def _rotated(numerics: Numerics) -> bool:
    return numerics.rotated


def component_refusal(
    requested: str | AttentionBackend, backend: AttentionBackend | None, reason: str, numerics: Numerics,
    head_dim: int,
) -> tuple[str, str] | None:
    """None when `backend` (resolve_quantized_backend's answer for `requested`; `reason` when it is None) serves the
    plan's quantized cells in a component with `head_dim`, else (why not, what to do). When no backend at all runs
    the plan's dtype at that head dim, the answer says so and names which backends take which head dims, rather
    than sending the user to another backend that would refuse it too; it never suggests the backend requested."""
    if isinstance(requested, str) and canonical_name(requested) == "native":
        return reason, ""
    why = reason if backend is None else backend.unsupported_reason(head_dim)
    if why is None:
        return None
    dtype, rotated = numerics.dtype, _rotated(numerics)
    entries = tuple(spec.manifest_entry() for spec in backends().values())
    nobody = no_backend_reason(dtype, head_dim, rotated, entries)
    if nobody is not None:
        if backend is not None:  # the backend's own words first: the head dim it refuses, and why
            nobody = f"{backend.name}: {why}; {nobody}"
        return nobody, (f"Serve a model with one of those head dims, or set `fallback: native` in the recipe and "
                        f"recompile (the plan's {dtype} cells at head dim {head_dim} then run native).")
    name = requested.name if isinstance(requested, AttentionBackend) else canonical_name(requested)
    servers = serving_backends(dtype, head_dim, rotated, entries)
    kernels = [s for s in servers if s not in (name, "reference")]
    steps = []
    if kernels:
        either = kernels[0] if len(kernels) == 1 else f"{', '.join(kernels[:-1])} or {kernels[-1]}"
        steps.append(f"run where {either} can serve it (docs/npu-backends.md, docs/gpu.md)")
    if "reference" in servers and name not in ("reference", "auto"):  # auto's own reason already offers it
        steps.append(f"pass backend='reference' to emulate {dtype} in PyTorch")
    steps.append("set `fallback: native` in the recipe and recompile")
    remedy = ", ".join(steps[:-1]) + (", or " if len(steps) > 1 else "") + steps[-1]
    return why, remedy[0].upper() + remedy[1:] + "."
