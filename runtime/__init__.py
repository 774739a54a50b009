"""qcompile runtime: run a compiled plan in a diffusers pipeline, per (component, step, layer, kind).

    handle = runtime.load(pipe, "plan.json", backend="reference")
    pipe(...)
    print(handle.report().format())
    handle.unload()

Quantized attention enters where the stock processor computes attention: at diffusers' attention dispatch
(runtime/dispatch.py), which composes with `enable_parallelism(ContextParallelConfig(ulysses_degree=N))` and
diffusers' caches, or, for processors that call F.scaled_dot_product_attention themselves (CogVideoX, the
HunyuanVideo token refiners), at that call (runtime/processor_entry.py). See docs/runtime.md.
"""

from typing import TYPE_CHECKING

from runtime.lazy import lazy_getattr

# `import runtime` imports neither torch nor diffusers, and leaves diffusers' backend enum alone: each name is
# imported from its module on first use (PEP 562), and qcompile's attention backend is registered with diffusers
# by the first `load`/`shadow` (runtime.dispatch.qcompile_backend).
_HOMES = {
    "BackendUnavailableError": "runtime.errors",
    "ConcurrentCallError": "runtime.errors",
    "ParallelLayoutError": "runtime.errors",
    "PlanMismatchError": "runtime.errors",
    "StepCountError": "runtime.errors",
    "UnknownBackendError": "runtime.errors",
    "CallRecord": "runtime.call_record",
    "ExecutionReport": "runtime.execution_report",
    "Mismatch": "runtime.execution_report",
    "combine_reports": "runtime.execution_report",
    "gather_reports": "runtime.execution_report",
    "PlanHandle": "runtime.loading",
    "load": "runtime.loading",
    "ShadowRecorder": "runtime.shadowing",
    "shadow": "runtime.shadowing",
}

if TYPE_CHECKING:
    from runtime.call_record import CallRecord
    from runtime.errors import (
        BackendUnavailableError,
        ConcurrentCallError,
        ParallelLayoutError,
        PlanMismatchError,
        StepCountError,
        UnknownBackendError,
    )
    from runtime.execution_report import ExecutionReport, Mismatch, combine_reports, gather_reports
    from runtime.loading import PlanHandle, load
    from runtime.shadowing import ShadowRecorder, shadow


__getattr__ = lazy_getattr(__name__, _HOMES, globals())


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_HOMES))


__all__ = [
    "BackendUnavailableError",
    "CallRecord",
    "ConcurrentCallError",
    "ExecutionReport",
    "Mismatch",
    "ParallelLayoutError",
    "PlanHandle",
    "PlanMismatchError",
    "ShadowRecorder",
    "StepCountError",
    "UnknownBackendError",
    "combine_reports",
    "gather_reports",
    "load",
    "shadow",
]
