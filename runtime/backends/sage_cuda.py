"""SageAttention's own kernels on NVIDIA GPUs, for plans of the SageAttention formats:

- `sage-v1`: sageattention 1.0.6 (the PyPI wheel, Triton, sm80+) `sageattn`, for sage1_int8_fp16pv.
- `sage-sm90`: SageAttention 2's `sageattn_qk_int8_pv_fp8_cuda_sm90` (built from source; Hopper only), for
  sage2_int8_fp8pv_sm90.

Called directly with the library's functions, not through diffusers' dispatch: diffusers 0.42.1 imports all of
SageAttention 2's functions in one statement (so with 1.0.6 installed its sage backends are unusable), and its
wrappers pass nothing we do not pass here (`tensor_layout="NHD"`, `is_causal`, `sm_scale`; docs/sageattention.md).
The arguments are exactly those of the CPU references (runtime/quant/sage_formats.py), which is what lets
`reference`, `calibrate` and `suggest` predict these kernels on CPU.

Masks, causal attention, dropout, GQA and non-default scales never reach a backend: the dispatch
(runtime/dispatch.py, `_fp8_eligible`) sends such calls to the stock attention. Under Ulysses the op runs after
diffusers' all-to-all, on the full sequence for the rank's heads, as every quantized backend does.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import math
from collections.abc import Callable
from typing import Any

import torch

from qcompiler.backend_table import HeadDims
from qcompiler.formats.sage1_int8_fp16pv import NAME as SAGE1_DTYPE
from qcompiler.formats.sage2_int8_fp8pv_sm90 import NAME as SM90_DTYPE
from runtime.backends.base import QuantizedBackend
from runtime.backends.registry import register_backend
from runtime.numerics import Numerics
from runtime.quant.sage_formats import (
    SM90_PV_ACCUM_DTYPE,
    SM90_QK_QUANT_GRAN,
    TENSOR_LAYOUT,
    sm90_input_dtype,
)

LIBRARY = "sageattention"
SAGE1_PIN = "sageattention==1.0.6"
SAGE1_FUNCTION = "sageattn"
SM90_FUNCTION = "sageattn_qk_int8_pv_fp8_cuda_sm90"
SAGE2_INSTALL = ("build SageAttention 2 from source: git clone https://github.com/thu-ml/SageAttention && "
                 "cd SageAttention && python setup.py install (docs/gpu.md)")
# [v1] core.py:82 and [v2] core.py:926-937: head dims 64, 96 (padded to 128 by the kernel) and 128.
SAGE_HEAD_DIMS = HeadDims(exactly=(64, 96, 128))
# sageattention 1.0.6's Triton kernels use INT8 tensor-core dots: Ampere (sm80) and newer.
SAGE1_MIN_CAPABILITY = (8, 0)
# The sm90 kernel is compiled for sm_90a (wgmma): Hopper only; Blackwell has its own SageAttention kernels.
SM90_CAPABILITY = (9, 0)


def library_version() -> str | None:
    """The installed sageattention's version, or None when it is not installed."""
    if importlib.util.find_spec(LIBRARY) is None:
        return None
    try:
        return importlib.metadata.version(LIBRARY)
    except importlib.metadata.PackageNotFoundError:  # importable but not installed as a distribution (a checkout)
        return "unknown"


def _major(version: str) -> int | None:
    head = version.split(".", 1)[0]
    return int(head) if head.isdigit() else None


def _cuda_reason(backend: str, needs: str) -> str | None:
    if not torch.cuda.is_available():
        return f"no CUDA device is visible ({backend} runs SageAttention's kernels on an NVIDIA {needs} GPU)"
    return None


def sage1_unavailable_reason() -> str | None:
    """None when sageattention 1.x imports and CUDA device 0 is sm80+, else why not."""
    version = library_version()
    if version is None:
        return f"{LIBRARY} is not installed (pip install {SAGE1_PIN})"
    major = _major(version)
    if major is not None and major != 1:
        return (f"{LIBRARY} {version} is SageAttention {major}: its `{SAGE1_FUNCTION}` picks a kernel per GPU and "
                f"does not compute SageAttention 1's numerics (sage1_int8_fp16pv); install {SAGE1_PIN}, or use "
                f"dtype {SM90_DTYPE} with backend sage-sm90 on Hopper")
    reason = _cuda_reason("sage-v1", "sm80+")
    if reason is not None:
        return reason
    capability = torch.cuda.get_device_capability()
    if capability < SAGE1_MIN_CAPABILITY:
        return (f"{torch.cuda.get_device_name()} is sm{capability[0]}{capability[1]}; sage-v1 needs sm80+ "
                "(Ampere or newer) for its INT8 tensor-core kernels")
    return _import_reason(SAGE1_FUNCTION)


def sm90_unavailable_reason() -> str | None:
    """None when SageAttention 2 (with its sm90 kernel) imports and CUDA device 0 is sm90, else why not."""
    version = library_version()
    if version is None:
        return f"{LIBRARY} is not installed; {SAGE2_INSTALL}"
    major = _major(version)
    if major is not None and major < 2:
        return (f"{LIBRARY} {version} is SageAttention 1 (the only release on PyPI): it has no `{SM90_FUNCTION}`; "
                f"{SAGE2_INSTALL}")
    reason = _cuda_reason("sage-sm90", "sm90 (H100/H200)")
    if reason is not None:
        return reason
    capability = torch.cuda.get_device_capability()
    if capability != SM90_CAPABILITY:
        return (f"{torch.cuda.get_device_name()} is sm{capability[0]}{capability[1]}; `{SM90_FUNCTION}` runs on "
                "sm90 (H100/H200) only")
    return _import_reason(SM90_FUNCTION)


def _import_reason(function: str) -> str | None:
    try:
        module = importlib.import_module(LIBRARY)
    except Exception as exc:  # a broken install (no triton, a CUDA extension built for another torch) is a reason
        return f"{LIBRARY} failed to import: {type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}"
    if not callable(getattr(module, function, None)):
        return f"this {LIBRARY} has no `{function}` (built without it?); {SAGE2_INSTALL}"
    return None


class _SageBackend(QuantizedBackend):
    """`function` defaults to the library's, resolved on first use; tests pass a recording stand-in to check the
    call (contract only: nothing in CI runs the real kernel)."""

    function_name = ""

    def __init__(self, numerics: Numerics | None = None, function: Callable[..., Any] | None = None):
        super().__init__(numerics or Numerics.for_dtype(self.dtypes[0]))
        self._function = function

    @property
    def function(self) -> Callable[..., Any]:
        if self._function is None:
            self._function = getattr(importlib.import_module(LIBRARY), self.function_name)
        return self._function

    @classmethod
    def environment_reason(cls) -> str | None:
        raise NotImplementedError

    @classmethod
    def auto_reason(cls) -> str | None:
        return cls.environment_reason()

    def unavailable_reason(self) -> str | None:
        # A stand-in function (tests) needs no library and no GPU.
        return None if self._function is not None else self.environment_reason()

    def _refuse(self, query: torch.Tensor, rotation: torch.Tensor | None) -> None:
        if rotation is not None:
            raise ValueError(f"{self.name}: SageAttention rotates nothing, but the plan asks for a Q/K rotation "
                             "(recompile with `hadamard_rotation: false`)")
        if query.device.type != "cuda" and self._function is None:
            raise ValueError(f"{self.name} got {query.device.type} tensors; SageAttention's kernels run on CUDA")


@register_backend(
    "sage-v1", auto_order=60, devices=("cuda",),
    dtypes=(SAGE1_DTYPE,), head_dims=SAGE_HEAD_DIMS, pv_precisions=("fp16",),
    summary="sageattention 1.0.6 `sageattn` (Triton, NVIDIA sm80+): SageAttention 1's INT8 Q/K, FP16 P.V",
)
class Sage1Backend(_SageBackend):
    function_name = SAGE1_FUNCTION

    @classmethod
    def environment_reason(cls) -> str | None:
        return sage1_unavailable_reason()

    def attend(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
               rotation: torch.Tensor | None) -> torch.Tensor:
        self.check_inputs(query, key, value)
        self._refuse(query, rotation)
        smooth_k = self.numerics.k_mean_subtraction
        # 1.0.6 smooths K in place on the tensor it is given ([v1] core.py:89-91): hand it a copy, since the
        # caller's K may still be read (shadow mode's native twin, the audit).
        return self.function(query, key.clone() if smooth_k else key, value, tensor_layout=TENSOR_LAYOUT,
                             is_causal=False, sm_scale=1.0 / math.sqrt(query.shape[-1]), smooth_k=smooth_k)


@register_backend(
    "sage-sm90", auto_order=61, devices=("cuda",),
    dtypes=(SM90_DTYPE,), head_dims=SAGE_HEAD_DIMS, pv_precisions=("e4m3",),
    summary="SageAttention 2 `sageattn_qk_int8_pv_fp8_cuda_sm90` (CUDA, H100/H200): INT8 Q/K per thread, FP8 P.V",
)
class Sm90Backend(_SageBackend):
    function_name = SM90_FUNCTION

    @classmethod
    def environment_reason(cls) -> str | None:
        return sm90_unavailable_reason()

    def attend(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
               rotation: torch.Tensor | None) -> torch.Tensor:
        self.check_inputs(query, key, value)
        self._refuse(query, rotation)
        dtype = sm90_input_dtype(query.dtype)  # the kernel takes fp16/bf16 only; fp32 runs in bf16
        out = self.function(query.to(dtype), key.to(dtype), value.to(dtype), tensor_layout=TENSOR_LAYOUT,
                            is_causal=False, qk_quant_gran=SM90_QK_QUANT_GRAN,
                            sm_scale=1.0 / math.sqrt(query.shape[-1]), pv_accum_dtype=SM90_PV_ACCUM_DTYPE,
                            smooth_k=self.numerics.k_mean_subtraction)
        return out.to(query.dtype)
