"""qcompile runtime: run a compiled plan in a diffusers pipeline, per (component, step, layer, kind).

    handle = runtime.load(pipe, "plan.json", backend="reference")
    pipe(...)
    print(handle.report().format())
    handle.unload()

FP8 enters at diffusers' attention dispatch (runtime/dispatch.py), so it composes with
`enable_parallelism(ContextParallelConfig(ulysses_degree=N))` and diffusers' caches. See docs/runtime.md.
"""

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
from runtime.load import PlanHandle, load
from runtime.shadow import ShadowRecorder, shadow

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
