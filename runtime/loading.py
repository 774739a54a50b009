"""`runtime.load(pipe, plan)`: check the plan against the pipeline, install it (runtime/install.py) and return a
PlanHandle that reports what ran and restores the pipeline on `unload()`.

Order with diffusers' context parallelism does not matter: the stock processors stay in place, so
`enable_parallelism` before or after load sets their `_parallel_config` as it would without qcompile.
"""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Callable, Mapping
from typing import Any

import torch

from qcompiler.plan.format import Plan, load_plan
from runtime.backends import AttentionBackend, NativeBackend, resolve_quantized_backend
from runtime.backends.registry import component_refusal
from runtime.call_record import CallRecord
from runtime.checks import attention_paths, check_structure, transformer_components
from runtime.dispatch import PLAN, ComponentState, joint_kinds
from runtime.errors import BackendUnavailableError, PlanMismatchError, UnknownBackendError
from runtime.execution_report import FALLBACK, FALLBACK_BACKEND, CellCounts, ExecutionReport, build_report
from runtime.hooks import check_context_parallel_plans, parallel_layout
from runtime.install import ComponentSpec, Installation, install, mark_installed, unmark_installed
from runtime.numerics import Numerics
from runtime.step_tracker import CallContext, StepTracker

logger = logging.getLogger("runtime")


def _embedded_plan(pipe: Any) -> Plan:
    from qcompiler.families import list_families
    from qcompiler.targets.pipeline_dir import PLAN_KEY, embedded_plan_from_configs

    # the transformers of any known family: the plan, once read, says which family it is
    configs = {name: model.config for family in list_families()
               for name, model in transformer_components(pipe, family).items()}
    data = embedded_plan_from_configs(configs)
    if data is None:
        raise PlanMismatchError(
            f"no plan given and the pipeline's transformer configs have no {PLAN_KEY!r}: pass a plan "
            "(runtime.load(pipe, 'plan.json')) or embed one with: qcompile patch PIPELINE_DIR plan.json"
        )
    logger.info("runtime.load: using the plan embedded in the transformer config (%s)", PLAN_KEY)
    return load_plan(data)


def recompile_hint(plan: Plan) -> str:
    recipe = (plan.data.get("recipe") or {}).get("name") or "RECIPE"
    variant = f" --variant {plan.variant}" if plan.variant else ""
    return f"or recompile the plan for {{steps}} steps: qcompile {recipe}{variant} --steps {{steps}} -o plan.json"


class PlanHandle:
    """A plan installed in a pipeline. Use as a context manager, or call `unload()` when done."""

    def __init__(self, pipe: Any, plan: Plan, backend: str | AttentionBackend, served: dict[str, AttentionBackend | None],
                 fallback_reasons: dict[str, str]):
        self.pipe = pipe
        self.plan = plan
        self.backend = backend  # as requested: a registry name (runtime.backends.registry) or a backend object
        self.fallback_reasons = fallback_reasons
        self._served = served
        self._context = CallContext()
        self._tracker = StepTracker(pipe, plan.num_inference_steps, self._context, recompile_hint(plan))
        self._installation = Installation()
        self._models: dict[str, torch.nn.Module] = {}
        self._counts: dict[tuple[str, str], CellCounts] = {}
        self._states: list[ComponentState] = []  # kept past unload: the report reads their packed/refused calls
        self._active = False

    @property
    def active(self) -> bool:
        return self._active

    @property
    def quantized_backend(self) -> str | None:
        """Name of the backend that serves quantized (FP8, MX, INT8) cells (None when none does)."""
        return next((b.name for b in self._served.values() if b is not None), None)

    def _install(self, models: dict[str, torch.nn.Module]) -> None:
        plan, steps = self.plan, self.plan.num_inference_steps
        numerics = Numerics.from_plan(plan)
        family = plan.family
        force_native = self.backend == "native" or isinstance(self.backend, NativeBackend)
        specs = []
        for name in plan.component_names:
            backend = self._served[name]
            rows, counts = {}, {}
            modules = attention_paths(family, name)
            for kind in sorted(modules):
                table = plan.table(name, kind)
                # backend="native" runs every cell natively, whatever the plan says (a deliberate override).
                rows[kind] = tuple(tuple(False for _ in row) for row in table) if force_native else table
                counts[kind] = self._counts[(name, kind)] = CellCounts(steps, len(modules[kind]))
            needs_quantized = backend is not None and any(any(row) for kind_rows in rows.values() for row in kind_rows)
            rotation = (family.component(name).head_dim, numerics.rotation_seed) if (
                backend is not None and numerics.hadamard_rotation) else None
            state = ComponentState(name, PLAN, backend, self._context, plan.fallback)
            self._states.append(state)
            state.joint_kinds = joint_kinds(family)
            specs.append(ComponentSpec(name, models[name], modules, state, rows, counts, rotation, needs_quantized))
        self._models = models
        self._installation = install(specs, self._tracker)
        self._active = True

    def unload(self) -> None:
        """Restore the stock processors' backends and remove the hooks; the pipeline then runs exactly as never
        patched (with whatever parallel config it has). The report stays readable. Calling it twice is harmless.
        Refused (ConcurrentCallError) from another thread while a call of the pipeline runs."""
        if self._active:
            self._tracker.check_unload()
            self._installation.remove()
            unmark_installed(self.pipe, self)
            self._active = False

    def __enter__(self) -> PlanHandle:
        return self

    def __exit__(self, *exc: object) -> None:
        self.unload()

    def set_observer(self, observer: Callable[[CallRecord], None] | None) -> None:
        """Call `observer(record)` after every FP8 attention call with the error of its output against native
        attention on the same inputs (costs one extra native attention per FP8 call; eager mode only). Under
        context parallelism the error is of the full-sequence call (a collective: every rank computes it)."""
        for state in self._installation.states():
            state.observer = observer

    def reset_report(self) -> None:
        for counts in self._counts.values():
            counts.clear()
        for state in self._states:
            state.packed_calls.clear()
            state.refused.clear()
        self._tracker.observed.clear()
        self._tracker.pipeline_calls = 0

    def report(self) -> ExecutionReport:
        """What ran on this rank since load (or the last reset_report), cell for cell comparable with the plan.
        Under context parallelism, `runtime.gather_reports(handle.report())` combines the ranks' reports."""
        compiled = sum(h.compiled_forwards for h in self._installation.hooks)
        notes = []
        if compiled:
            notes.append(f"{compiled} forwards ran compiled blocks: their cells count the decisions the hook set, "
                         "one per forward, not attention calls")
        notes.extend(self._ineligible_notes())
        rank, world = _rank_and_world()
        layouts = {parallel_layout(m) for m in self._models.values()} - {None}
        names = {name: backend.name if backend is not None else FALLBACK_BACKEND
                 for name, backend in self._served.items()}
        return build_report(
            self.plan, self._counts, names, fallback_reasons=self.fallback_reasons,
            pipeline_calls=self._tracker.pipeline_calls, observed_schedule=self._tracker.observed_schedule(),
            quantized_backend=self.quantized_backend, counted="decisions" if compiled else "calls", notes=notes,
            rank=rank, world_size=world, parallel=",".join(sorted(layouts)) or None,
            packed_calls=self._packed_calls(),
        )

    def _packed_calls(self) -> dict[str, dict[str, int]]:
        """Per component and kind, the planned-quantized calls that carried a padding mask and ran quantized over
        the valid tokens only (runtime/masks.py); counted with the quantized calls of their cells too."""
        packed: dict[str, dict[str, int]] = {}
        for state in self._states:
            for kind, calls in sorted(state.packed_calls.items()):
                if calls:
                    packed.setdefault(state.component, {})[kind] = calls
        return packed

    def _ineligible_notes(self) -> list[str]:
        """Which cells ran how where a call carried what the quantized kernel does not take: padding masks served
        by packing, and calls run stock (a mask that is not padding, e.g. under context parallelism, dropout, ...),
        per component and kind."""
        notes = []
        refused = {(state.component, kind): why for state in self._states
                   for kind, why in state.refused.items()}
        for component, kinds in self._packed_calls().items():
            for kind, calls in kinds.items():
                notes.append(f"{component} / {kind}: {calls} planned-quantized calls carried a padding mask: they ran "
                             "quantized over the valid tokens only (packed per sample)")
        for (name, kind), counts in sorted(self._counts.items()):
            calls = sum(cell[FALLBACK] for row in counts.counts for cell in row)
            if calls and self._served.get(name) is not None:
                why = refused.get((name, kind))
                notes.append(f"{name} / {kind}: {calls} planned-quantized calls carried an attention mask (or "
                             "dropout, a causal flag, GQA, a non-default scale) the quantized kernel does not take: "
                             "they ran the stock attention with it, counted as fallback"
                             + (f" (last: {why})" if why else ""))
        return notes

def _rank_and_world() -> tuple[int, int]:
    dist = torch.distributed
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def check_backend_argument(backend: object) -> None:
    """Refuse a `backend=` that is neither a registry name (runtime.backends.registry) nor an AttentionBackend."""
    from runtime.backends.registry import BACKEND_NAMES

    if isinstance(backend, AttentionBackend) or (isinstance(backend, str) and backend in BACKEND_NAMES):
        return
    choices = ", ".join(repr(name) for name in BACKEND_NAMES)
    if isinstance(backend, str):
        close = [name for name in BACKEND_NAMES if name.lower() == backend.strip().lower()]
        hint = f" (names are lower case: did you mean {close[0]!r}?)" if close else ""
        raise UnknownBackendError(f"unknown attention backend {backend!r}{hint}; backend= takes one of {choices}, "
                                  "or an AttentionBackend object")
    raise UnknownBackendError(f"backend= takes one backend name (a str) or an AttentionBackend object, not a "
                              f"{type(backend).__name__} ({backend!r}); the names are {choices}")


def _serving_backends(
    plan: Plan, backend: str | AttentionBackend, models: dict[str, torch.nn.Module]
) -> tuple[dict[str, AttentionBackend | None], dict[str, str]]:
    """Per component, the backend serving its FP8 cells (None: native), and why FP8 falls back where it does.
    Raises BackendUnavailableError where the plan wants FP8, nothing can serve it and the policy is `error`."""
    numerics = Numerics.from_plan(plan)
    quantized, reason = resolve_quantized_backend(backend, numerics)
    served: dict[str, AttentionBackend | None] = {}
    fallbacks: dict[str, str] = {}
    for name in plan.component_names:
        why, remedy = component_refusal(backend, quantized, reason, numerics,
                                        plan.family.component(name).head_dim) or ("", "")
        wants_fp8 = any(any(row) for kind in plan.attention_kinds for row in plan.table(name, kind))
        served[name] = None if why else quantized
        if not why or not wants_fp8 or backend == "native" or isinstance(backend, NativeBackend):
            continue
        if plan.fallback == "error":
            raise BackendUnavailableError(
                f"the plan asks for FP8 attention in {name} but nothing here can serve it: {why}. Its fallback "
                f"policy is 'error'. {remedy}"
            )
        fallbacks[name] = why
    if fallbacks:
        warnings.warn(
            "FP8 attention unavailable, planned FP8 cells run native (fallback: native): "
            + "; ".join(f"{n}: {w}" for n, w in fallbacks.items()),
            RuntimeWarning,
            stacklevel=3,
        )
    return served, fallbacks


def load(pipe: Any, plan: str | os.PathLike[str] | Mapping[str, Any] | Plan | None = None, *,
         backend: str | AttentionBackend = "auto") -> PlanHandle:
    """Install `plan` (a path, a parsed dict, a Plan, or None for the plan embedded by `qcompile patch`) in a
    diffusers pipeline of the plan's family. `backend`: "auto" (the first kernel that can serve the plan's dtype
    here, see runtime.backends.registry), a backend name from that registry ("reference" is the exact PyTorch emulation of
    every dtype, any device; "native" runs every cell native), or an AttentionBackend object.

    Works before or after `model.enable_parallelism(config=ContextParallelConfig(ulysses_degree=N))`; FP8 cells
    then run after the Ulysses all-to-all. Raises PlanError (bad/edited plan), PlanMismatchError (plan does not
    fit the pipeline), ParallelLayoutError (ring or Ulysses-anything with FP8 cells; also raised by the first
    forward when that layout is enabled after load), BackendUnavailableError (FP8 needed, none available,
    fallback policy `error`), UnknownBackendError (`backend` is not a registry name or a backend object).
    The pipeline then runs one call at a time: a second thread entering it during a call gets
    ConcurrentCallError (use one pipeline per thread).
    """
    check_backend_argument(backend)
    loaded = _embedded_plan(pipe) if plan is None else load_plan(plan)
    check_context_parallel_plans(transformer_components(pipe, loaded.family))  # before the processor checks
    models = check_structure(pipe, loaded)
    served, fallbacks = _serving_backends(loaded, backend, models)
    handle = PlanHandle(pipe, loaded, backend, served, fallbacks)
    mark_installed(pipe, handle)
    try:
        handle._install(models)
    except BaseException:
        unmark_installed(pipe, handle)
        raise
    return handle
