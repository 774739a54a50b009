"""Shadow mode: every attention call computes native and FP8 outputs on the same inputs, records the error per
(component, step, layer, kind, CFG branch), and continues with the native output, so the run is unchanged.

    with runtime.shadow(pipe, num_inference_steps=4, backend="fp8-reference") as rec:
        pipe(..., num_inference_steps=4)
    rec.records  # list[CallRecord]
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from qcompiler.plan import Plan, load_plan
from runtime.backends import AttentionBackend, resolve_fp8_backend
from runtime.call_record import CallRecord
from runtime.checks import check_structure, inspect_component, transformer_components
from runtime.errors import BackendUnavailableError
from runtime.handle import INSTALLED_ATTR, attention_modules, mark_installed
from runtime.hooks import ComponentHook
from runtime.numerics import Numerics
from runtime.processor import CallContext, ShadowAttnProcessor, Site
from runtime.step_tracker import StepTracker

# Wan attention module paths when no plan names them (the families' data says the same).
WAN_ATTENTION_KINDS = {"self": "blocks.{layer}.attn1", "cross": "blocks.{layer}.attn2"}


@dataclass
class ShadowRecorder:
    """Holds the records of a shadow run. `records` grows by one CallRecord per attention call
    (two for Wan2.1 I2V cross-attention, which attends to image and text tokens separately)."""

    backend: str
    numerics: Numerics
    records: list[CallRecord] = field(default_factory=list)
    pipeline_calls: int = 0

    def to_dicts(self) -> list[dict]:
        return [r.to_dict() for r in self.records]


def _fp8_backend(backend: str, numerics: Numerics) -> AttentionBackend:
    resolved, reason = resolve_fp8_backend(backend, numerics)
    if resolved is None:
        raise BackendUnavailableError(f"shadow mode needs an FP8 backend: {reason}")
    return resolved


@contextmanager
def shadow(
    pipe: Any,
    *,
    num_inference_steps: int | None,
    backend: str = "fp8-reference",
    plan: str | Mapping[str, Any] | Plan | None = None,
    numerics: Numerics | None = None,
    kinds: tuple[str, ...] | None = None,
) -> Iterator[ShadowRecorder]:
    """Install shadow processors on every attention module of every transformer component.

    `num_inference_steps`: the step count calls must use (None: any). `plan`: optional; when given, its
    structure is checked against the pipeline and its numerics and attention kinds are used. `numerics`
    overrides (default: Hadamard rotation, seed 425500, blocks 128/256). `kinds`: subset of "self"/"cross".
    """
    loaded = load_plan(plan) if plan is not None else None
    if loaded is not None:
        models = check_structure(pipe, loaded)
        patterns = {k: v["module"] for k, v in loaded.data["family"]["attention_kinds"].items()}
        numerics = numerics or Numerics.from_mapping(loaded.numerics, loaded.data["dtype"])
    else:
        models = transformer_components(pipe)
        patterns = dict(WAN_ATTENTION_KINDS)
        numerics = numerics or Numerics()
    if kinds is not None:
        patterns = {k: patterns[k] for k in kinds}
    fp8 = _fp8_backend(backend, numerics)
    recorder = ShadowRecorder(backend=fp8.name, numerics=numerics)
    context = CallContext()
    hint = "the step count given to runtime.shadow(num_inference_steps=...)"
    tracker = StepTracker(pipe, num_inference_steps, context, "or pass num_inference_steps={steps} to " + hint)
    hooks: list[ComponentHook] = []
    restore: list[tuple[Any, Any]] = []
    mark_installed(pipe, recorder)
    try:
        for name, model in models.items():
            found = inspect_component(name, model)
            why = fp8.unsupported_reason(found.head_dim)
            if why:
                raise BackendUnavailableError(f"shadow mode cannot run FP8 attention in {name}: {why}")
            processors: dict[str, list[ShadowAttnProcessor]] = {}
            for kind, pattern in sorted(patterns.items()):
                procs = []
                for layer, module in enumerate(attention_modules(model, pattern, found.num_layers)):
                    proc = ShadowAttnProcessor(module.processor, Site(name, kind, layer), fp8, context, recorder.records)
                    restore.append((module, module.processor))
                    module.set_processor(proc)
                    procs.append(proc)
                processors[kind] = procs
            rotation = (found.head_dim, numerics.rotation_seed) if numerics.hadamard_rotation else None
            hook = ComponentHook(name, model, processors, None, tracker, None, rotation)
            hook.install()
            hooks.append(hook)
        yield recorder
    finally:
        for hook in hooks:
            hook.remove()
        for module, stock in reversed(restore):
            module.set_processor(stock)
        recorder.pipeline_calls = tracker.pipeline_calls
        if getattr(pipe, INSTALLED_ATTR, None) is recorder:
            delattr(pipe, INSTALLED_ATTR)
