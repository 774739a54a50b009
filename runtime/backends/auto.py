"""Backend selection by name, including `auto` (fp8-npu when torch_npu and an FP8-capable NPU are present)."""

from __future__ import annotations

from runtime.backends.base import AttentionBackend
from runtime.backends.fp8_npu import Fp8NpuBackend
from runtime.backends.fp8_reference import Fp8ReferenceBackend
from runtime.backends.native import NativeBackend
from runtime.numerics import FP8_DTYPE_NAME, INT8_DTYPE_NAME, Numerics

BACKEND_NAMES = ("auto", "native", "fp8-reference", "fp8-npu", "int8-reference", "int8-npu")


# --- int8_per_tensor (issue 14): its own two backends; `auto` picks int8-npu only for this dtype and only on an
# --- Atlas A2/A3 (detected by SoC name). Everywhere else the plan's fallback policy applies.
INT8_BACKEND_NAMES = ("int8-reference", "int8-npu")


def _backend_dtype(backend: AttentionBackend) -> str:
    return getattr(backend, "dtype", FP8_DTYPE_NAME)


def _resolve_int8_backend(name: str, numerics: Numerics) -> tuple[AttentionBackend | None, str]:
    from runtime.backends.int8_npu import Int8NpuBackend
    from runtime.backends.int8_reference import Int8ReferenceBackend

    if name == "int8-reference":
        return Int8ReferenceBackend(numerics), ""
    if name not in ("auto", "int8-npu"):
        return None, f"backend {name!r} computes FP8, the plan's dtype is {INT8_DTYPE_NAME} (use int8-npu or int8-reference)"
    npu = Int8NpuBackend(numerics)
    reason = npu.unavailable_reason()
    if reason is None:
        return npu, ""
    if name == "auto":
        reason += f"; backend='auto' found no {INT8_DTYPE_NAME} kernel (pass backend='int8-reference' to emulate it)"
    return None, reason


def reference_backend_name(numerics: Numerics) -> str:
    """The PyTorch emulation of `numerics.dtype` (what reports and calibration use where no kernel runs)."""
    return "int8-reference" if numerics.is_int8 else "fp8-reference"
# --- end int8_per_tensor


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
        wanted = numerics.dtype if numerics is not None else _backend_dtype(name)
        if _backend_dtype(name) != wanted:
            return None, f"backend {name.name!r} computes {_backend_dtype(name)}, the plan's dtype is {wanted}"
        reason = name.unavailable_reason()
        return (name, "") if reason is None else (None, reason)
    _check_name(name)
    if name == "native":
        return None, "backend='native' was requested"
    if numerics is not None and numerics.is_int8:
        return _resolve_int8_backend(name, numerics)
    if name in INT8_BACKEND_NAMES:
        return None, f"backend {name!r} computes {INT8_DTYPE_NAME}, the plan's dtype is {FP8_DTYPE_NAME}"
    if name == "fp8-reference":
        return Fp8ReferenceBackend(numerics), ""
    npu = Fp8NpuBackend(numerics)
    reason = npu.unavailable_reason()
    if reason is None:
        return npu, ""
    if name == "auto":
        reason += "; backend='auto' found no FP8 kernel (pass backend='fp8-reference' to emulate FP8 in PyTorch)"
    return None, reason


def get_backend(name: str, numerics: Numerics | None = None) -> AttentionBackend:
    """A backend object by name; `auto` gives fp8-npu when it can run here, else native."""
    _check_name(name)
    if name == "native":
        return NativeBackend()
    if name == "fp8-reference":
        return Fp8ReferenceBackend(numerics)
    if name == "fp8-npu":
        return Fp8NpuBackend(numerics)
    if name in INT8_BACKEND_NAMES:  # issue 14
        from runtime.backends.int8_npu import Int8NpuBackend
        from runtime.backends.int8_reference import Int8ReferenceBackend

        cls = Int8ReferenceBackend if name == "int8-reference" else Int8NpuBackend
        return cls(numerics if numerics is not None and numerics.is_int8 else Numerics.int8())
    backend, _reason = resolve_fp8_backend("auto", numerics)
    return backend or NativeBackend()
