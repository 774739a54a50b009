"""Shadow mode: every attention call computes native and FP8 outputs on the same inputs, records the error per
(component, step, layer, kind, CFG branch), and continues with the native output, so the run is unchanged.

    with runtime.shadow(pipe, num_inference_steps=4, backend="reference") as rec:
        pipe(..., num_inference_steps=4)
    rec.records  # list[CallRecord]
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from qcompiler.families import Family, list_families
from qcompiler.plan.format import Plan, load_plan
from runtime.backends import AttentionBackend, resolve_quantized_backend
from runtime.call_record import CallRecord
from runtime.checks import attention_paths, check_structure, inspect_component, transformer_components
from runtime.dispatch import SHADOW, ComponentState, joint_kinds
from runtime.errors import BackendUnavailableError, PlanMismatchError
from runtime.install import ComponentSpec, install, mark_installed, unmark_installed
from runtime.numerics import Numerics
from runtime.step_tracker import CallContext, StepTracker


def _kind_layout(family: Family) -> tuple:
    first = family.components[0]
    return tuple((k.name, first.block_list(k.block_list).path, k.module) for k in family.kind_specs)


def family_layout(pipe: Any) -> Family:
    """A family of this pipeline's class, for where its attention modules are (all families of one pipeline
    class must place them alike, or a plan has to say which); layer counts are read from the model."""
    pipeline_classes = {cls.__name__ for cls in type(pipe).__mro__}
    families = [f for f in list_families() if f.pipeline_class in pipeline_classes]
    if len({_kind_layout(f) for f in families}) != 1:
        raise PlanMismatchError(
            f"no single family layout for a {type(pipe).__name__} ({len(families)} found): pass plan=... to "
            "runtime.shadow so its family names the attention modules"
        )
    return families[0]

@dataclass
class ShadowRecorder:
    """Holds the records of a shadow run. `records` grows by one CallRecord per attention call
    (two where one attention module makes two dispatch calls, e.g. a cross-attention over image and text tokens).
    Per kind, over every component: `packed_calls`, measured calls with a padding mask (run packed,
    runtime/masks.py); `unservable_calls`, calls the quantized kernel could not take (not measured, no record),
    and `unservable_reasons`, why it refused the last one."""

    backend: str
    numerics: Numerics
    records: list[CallRecord] = field(default_factory=list)
    pipeline_calls: int = 0
    packed_calls: dict[str, int] = field(default_factory=dict)
    unservable_calls: dict[str, int] = field(default_factory=dict)
    unservable_reasons: dict[str, str] = field(default_factory=dict)

    def to_dicts(self) -> list[dict]:
        return [r.to_dict() for r in self.records]


def _quantized_backend(backend: str, numerics: Numerics) -> AttentionBackend:
    resolved, reason = resolve_quantized_backend(backend, numerics)
    if resolved is None:
        raise BackendUnavailableError(f"shadow mode needs an FP8 backend: {reason}")
    return resolved


@contextmanager
def shadow(
    pipe: Any,
    *,
    num_inference_steps: int | None,
    backend: str = "reference",
    plan: str | Mapping[str, Any] | Plan | None = None,
    numerics: Numerics | None = None,
    kinds: tuple[str, ...] | None = None,
) -> Iterator[ShadowRecorder]:
    """Run shadow mode on every attention module of every transformer component (the one installer,
    runtime/install.py). Under Ulysses context parallelism each record is the error of the full-sequence call
    (statistics summed over the ranks), the same on every rank.

    `num_inference_steps`: the step count calls must use (None: any). `plan`: optional; when given, its
    structure is checked against the pipeline and its numerics and attention kinds are used. `numerics`
    overrides (default: Hadamard rotation, seed 425500, blocks 128/256). `kinds`: subset of the family's kinds.
    """
    loaded = load_plan(plan) if plan is not None else None
    if loaded is not None:
        models = check_structure(pipe, loaded)
        family = loaded.family
        numerics = numerics or Numerics.from_plan(loaded)
    else:
        family = family_layout(pipe)
        models = transformer_components(pipe, family)
        numerics = numerics or Numerics()
    if kinds is not None:
        unknown = sorted(set(kinds) - set(family.kinds))
        if unknown:
            raise PlanMismatchError(f"unknown attention kind(s) {unknown}; this family has {list(family.kinds)}")
    fp8 = _quantized_backend(backend, numerics)
    recorder = ShadowRecorder(backend=fp8.name, numerics=numerics)
    context = CallContext()
    hint = "the step count given to runtime.shadow(num_inference_steps=...)"
    tracker = StepTracker(pipe, num_inference_steps, context, "or pass num_inference_steps={steps} to " + hint)
    specs = []
    for name, model in models.items():
        found = inspect_component(name, model, family)
        why = fp8.unsupported_reason(found.head_dim)
        if why:
            raise BackendUnavailableError(f"shadow mode cannot run FP8 attention in {name}: {why}")
        state = ComponentState(name, SHADOW, fp8, context)
        state.sink = recorder.records
        state.packed_calls, state.unservable_calls = recorder.packed_calls, recorder.unservable_calls
        state.refused = recorder.unservable_reasons
        state.joint_kinds = joint_kinds(family)  # under Ulysses, measure joint calls in one process's token order
        rotation = (found.head_dim, numerics.rotation_seed) if numerics.hadamard_rotation else None
        # without a plan, the family may be another size of this pipeline class: count the model's blocks
        modules = attention_paths(family, name, kinds, None if loaded is not None else model)
        specs.append(ComponentSpec(name, model, modules, state, None, None, rotation, needs_quantized=True))
    mark_installed(pipe, recorder)
    try:
        installation = install(specs, tracker)
    except BaseException:
        unmark_installed(pipe, recorder)
        raise
    try:
        yield recorder
    finally:
        installation.remove()
        recorder.pipeline_calls = tracker.pipeline_calls
        unmark_installed(pipe, recorder)
