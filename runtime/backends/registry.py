"""Every attention backend by name, and the one function that picks the backend serving a plan's quantized cells.

Adding a backend = one row in BACKENDS (and its dtypes and head dims in qcompiler/backend_table.py). Rows with `auto=True` are tried by `backend="auto"` in table order: the
first whose capability check passes (imports, device, the plan's dtype, a probe call) serves, and a log line says
which and why the earlier ones did not. Every row can be forced by name (or by an alias).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

from qcompiler.backend_table import no_backend_reason, serving_backends
from runtime.backends.base import AttentionBackend, QuantizedBackend
from runtime.backends.fp8_triton import Fp8TritonBackend, gpu_unavailable_reason
from runtime.backends.int8_npu import Int8NpuBackend
from runtime.backends.native import NativeBackend
from runtime.backends.npu_mindiesd_fia import NpuMindiesdFiaBackend
from runtime.backends.npu_quant_attention import NpuQuantAttentionBackend
from runtime.backends.npu_torch_fia import NpuTorchFiaBackend
from runtime.backends.reference import ReferenceBackend
from runtime.numerics import Numerics

logger = logging.getLogger("runtime")


@dataclass(frozen=True)
class BackendEntry:
    name: str
    make: Callable[[Numerics], AttentionBackend]
    auto: bool  # tried by backend="auto", in table order
    summary: str
    aliases: tuple[str, ...] = ()
    # Asked first by `auto` (None: the backend's own checks suffice); fp8-triton runs by name under Triton's CPU
    # interpreter for tests, but `auto` must take it only on a real sm90+ GPU.
    auto_reason: Callable[[], str | None] | None = None


BACKENDS: dict[str, BackendEntry] = {
    entry.name: entry
    for entry in (
        BackendEntry("native", lambda numerics: NativeBackend(), False,
                     "every cell native (the stock diffusers attention)"),
        BackendEntry("reference", ReferenceBackend, False,
                     "every dtype emulated in PyTorch on any device (slow; for checking numerics)",
                     aliases=("fp8-reference",)),
        BackendEntry("npu-quant-attention", NpuQuantAttentionBackend, True,
                     "MindIE-SD quant_attention, as vllm-omni 0.30.0 calls it (fp8, mxfp8, mxfp4)"),
        BackendEntry("npu-mindiesd-fia", NpuMindiesdFiaBackend, True,
                     "MindIE-SD 3.1.0's fused_infer_attention_score_v2, per-block FP8 (quant mode 7)"),
        BackendEntry("npu-torch-fia", NpuTorchFiaBackend, True,
                     "torch_npu npu_fused_infer_attention_score_v2, per-block FP8 quant mode 7 (older CANN)",
                     aliases=("fp8-npu",)),
        BackendEntry("fp8-triton", Fp8TritonBackend, True,
                     "our Triton kernel on NVIDIA sm90+ (Hopper), per-block FP8 as the Ascend kernel",
                     auto_reason=gpu_unavailable_reason),
        BackendEntry("int8-npu", Int8NpuBackend, True,
                     "torch_npu npu_fused_infer_attention_score full-quant INT8 (int8_per_tensor; Atlas A2/A3 only)"),
    )
}
ALIASES: dict[str, str] = {alias: entry.name for entry in BACKENDS.values() for alias in entry.aliases}
BACKEND_NAMES = ("auto", *BACKENDS, *ALIASES)


def canonical_name(name: str) -> str:
    """The registry name for `name` (aliases resolved); ValueError naming the choices for an unknown one."""
    if name == "auto" or name in BACKENDS:
        return name
    if name in ALIASES:
        return ALIASES[name]
    raise ValueError(f"unknown attention backend {name!r}; choose one of {', '.join(BACKEND_NAMES)}")


def _capability_reason(backend: AttentionBackend) -> str | None:
    if not backend.is_fp8:
        return f"backend {backend.name!r} is not a quantized backend"
    # The dtype first: "cannot run int8_per_tensor" says more than "torch_npu is not installed" about a backend
    # that could never serve this plan.
    reason = backend.dtype_reason() if isinstance(backend, QuantizedBackend) else None
    return reason if reason is not None else backend.unavailable_reason()


def resolve_fp8_backend(
    name: str | AttentionBackend, numerics: Numerics | None = None
) -> tuple[AttentionBackend | None, str]:
    """THE selection function: the backend that serves the plan's quantized cells under `name`, or (None, why
    nothing can; the caller applies the plan's fallback policy). `name` may also be a backend object (e.g. an
    NPU backend with a stand-in op in tests).

    `auto` never falls back to the reference emulation on its own: it is slow and only for checking numerics,
    so it runs only when asked for by name.
    """
    numerics = numerics or Numerics()
    if isinstance(name, AttentionBackend):
        reason = _capability_reason(name)
        return (name, "") if reason is None else (None, reason)
    name = canonical_name(name)
    if name == "native":
        return None, "backend='native' was requested"
    if name != "auto":
        backend = BACKENDS[name].make(numerics)
        reason = _capability_reason(backend)
        return (backend, "") if reason is None else (None, reason)
    skipped = []
    for entry in BACKENDS.values():
        if not entry.auto:
            continue
        reason = entry.auto_reason() if entry.auto_reason else None
        backend = entry.make(numerics)
        reason = reason or _capability_reason(backend)
        if reason is None:
            logger.info("backend='auto' chose %s for %s%s", entry.name, numerics.dtype,
                        f" (skipped: {'; '.join(skipped)})" if skipped else "")
            return backend, ""
        skipped.append(f"{entry.name}: {reason}")
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
    """None when `backend` (resolve_fp8_backend's answer for `requested`; `reason` when it is None) serves the
    plan's quantized cells in a component with `head_dim`, else (why not, what to do). When no backend at all runs
    the plan's dtype at that head dim, the answer says so and names which backends take which head dims, rather
    than sending the user to another backend that would refuse it too; it never suggests the backend requested."""
    if isinstance(requested, str) and canonical_name(requested) == "native":
        return reason, ""
    why = reason if backend is None else backend.unsupported_reason(head_dim)
    if why is None:
        return None
    dtype, rotated = numerics.dtype, _rotated(numerics)
    nobody = no_backend_reason(dtype, head_dim, rotated)
    if nobody is not None:
        if backend is not None:  # the backend's own words first: the head dim it refuses, and why
            nobody = f"{backend.name}: {why}; {nobody}"
        return nobody, (f"Serve a model with one of those head dims, or set `fallback: native` in the recipe and "
                        f"recompile (the plan's {dtype} cells at head dim {head_dim} then run native).")
    name = requested.name if isinstance(requested, AttentionBackend) else canonical_name(requested)
    servers = serving_backends(dtype, head_dim, rotated)
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
