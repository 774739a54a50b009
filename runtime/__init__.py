"""qcompile runtime: run a compiled plan in a diffusers Wan pipeline, per (component, step, layer, kind).

    handle = runtime.load(pipe, "plan.json", backend="reference")
    pipe(...)
    print(handle.report().format())
    handle.unload()

See docs/runtime.md.
"""

from runtime.call_record import CallRecord
from runtime.errors import BackendUnavailableError, PlanMismatchError, StepCountError
from runtime.handle import PlanHandle, load
from runtime.report import ExecutionReport, Mismatch
from runtime.shadow import ShadowRecorder, shadow

__all__ = [
    "BackendUnavailableError",
    "CallRecord",
    "ExecutionReport",
    "Mismatch",
    "PlanHandle",
    "PlanMismatchError",
    "ShadowRecorder",
    "StepCountError",
    "load",
    "shadow",
]
