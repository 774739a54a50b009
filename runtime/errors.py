"""Errors the runtime raises on purpose: a user mistake or an environment limit, never a bug.

All subclass `qcompiler.errors.QcompileError`, so the CLI prints them without a traceback.
"""

from __future__ import annotations

from qcompiler.errors import QcompileError


class PlanMismatchError(QcompileError):
    """The plan does not fit the pipeline it is loaded into (family, components, layers, heads, head dim),
    or the pipeline stopped following the step sequence the plan was laid out over."""


class StepCountError(PlanMismatchError):
    """The pipeline was called with a number of denoising steps the plan was not compiled for."""


class BackendUnavailableError(QcompileError):
    """The plan asks for FP8 attention that no available backend can serve, and its fallback policy is `error`."""


class UnservableCallError(BackendUnavailableError):
    """A planned-quantized attention call the quantized kernel cannot take as it is (a mask that is not a padding
    mask, dropout, a causal flag, GQA, a non-default scale), and the plan's fallback policy is `error`; the message
    names the component, kind, layer, step and why, and the fix."""


class ParallelLayoutError(PlanMismatchError):
    """The pipeline runs with a context-parallel layout (ring, Ulysses-anything) under which FP8 attention cannot
    quantize the blocks one process would; the message names the layout that works (Ulysses)."""


class ConcurrentCallError(QcompileError):
    """A pipeline with a qcompile plan (or shadow recorder) was entered from a second thread while a call was
    running: the plan's per-call state (step, counters, flags) belongs to one call at a time."""


class UnknownBackendError(QcompileError, ValueError):
    """`backend=` names no attention backend of the registry (runtime.backends.registry), or is not a name."""
