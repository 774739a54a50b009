"""Backend selection by name, including `auto` (fp8-npu when torch_npu and an FP8-capable NPU are present,
else fp8-triton on an sm90+ CUDA GPU with triton)."""

from __future__ import annotations

from runtime.backends.base import AttentionBackend
from runtime.backends.fp8_npu import Fp8NpuBackend
from runtime.backends.fp8_reference import Fp8ReferenceBackend
from runtime.backends.fp8_triton import Fp8TritonBackend, gpu_unavailable_reason
from runtime.backends.native import NativeBackend
from runtime.numerics import Numerics

BACKEND_NAMES = ("auto", "native", "fp8-reference", "fp8-npu", "fp8-triton")


def _check_name(name: str) -> None:
    if name not in BACKEND_NAMES:
        raise ValueError(f"unknown attention backend {name!r}; choose one of {', '.join(BACKEND_NAMES)}")


def resolve_fp8_backend(
    name: str | AttentionBackend, numerics: Numerics | None = None
) -> tuple[AttentionBackend | None, str]:
    """The backend that serves FP8 cells under `name`, or (None, why nothing can). `name` may also be a backend
    object (e.g. Fp8NpuBackend(op=...) with a stand-in op in tests).

    `auto` never falls back to the emulation on its own: fp8-reference is slow and only for checking numerics,
    so it runs only when asked for by name.
    """
    if isinstance(name, AttentionBackend):
        if not name.is_fp8:
            return None, f"backend {name.name!r} is not an FP8 backend"
        reason = name.unavailable_reason()
        return (name, "") if reason is None else (None, reason)
    _check_name(name)
    if name == "native":
        return None, "backend='native' was requested"
    if name == "fp8-reference":
        return Fp8ReferenceBackend(numerics), ""
    # --- fp8-triton (issue 11): by name it also runs under Triton's CPU interpreter; `auto` takes it only on a
    # real sm90+ GPU, and only after fp8-npu could not serve.
    if name == "fp8-triton":
        triton_backend = Fp8TritonBackend(numerics)
        reason = triton_backend.unavailable_reason()
        return (triton_backend, "") if reason is None else (None, reason)
    # --- end fp8-triton
    npu = Fp8NpuBackend(numerics)
    reason = npu.unavailable_reason()
    if reason is None:
        return npu, ""
    if name == "auto":
        gpu_reason = gpu_unavailable_reason()  # fp8-triton (issue 11)
        if gpu_reason is None:
            return Fp8TritonBackend(numerics), ""
        reason += f"; fp8-triton: {gpu_reason}"
        reason += "; backend='auto' found no FP8 kernel (pass backend='fp8-reference' to emulate FP8 in PyTorch)"
    return None, reason


def get_backend(name: str, numerics: Numerics | None = None) -> AttentionBackend:
    """A backend object by name; `auto` gives fp8-npu or fp8-triton when one can run here, else native."""
    _check_name(name)
    if name == "native":
        return NativeBackend()
    if name == "fp8-reference":
        return Fp8ReferenceBackend(numerics)
    if name == "fp8-npu":
        return Fp8NpuBackend(numerics)
    if name == "fp8-triton":
        return Fp8TritonBackend(numerics)
    backend, _reason = resolve_fp8_backend("auto", numerics)
    return backend or NativeBackend()
