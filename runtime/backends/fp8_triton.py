"""FP8 attention on NVIDIA Hopper (sm90+) with our Triton kernel, on the same per-block numerics as fp8-npu.

Quantization is the one PyTorch function the CPU reference and the NPU backend use
(runtime.numerics.quantize_attention_inputs); the kernel (runtime/kernels/triton_fp8_attention.py) takes its
e4m3 tensors and fp32 scales as they are. The launch goes through the `qcompile::fp8_triton_attention`
torch.library custom op (with a fake implementation), so torch.compile keeps a compiled block in one graph.

Triton is imported lazily: this module imports without it. Under Triton's CPU interpreter (TRITON_INTERPRET=1,
tests only) the backend runs on CPU tensors when asked for by name; `auto` only ever picks it on a real sm90+ GPU.
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import math
import os

import torch

from qcompiler.numerics import KV_BLOCK_TOKENS, PV_PRECISIONS, QUERY_BLOCK_TOKENS
from runtime.backends.base import BLOCK_KERNEL_HEAD_DIMS, QuantizedBackend
from runtime.backends.registry import register_backend
from runtime.numerics import Numerics, QuantizedAttentionInputs, quantize_attention_inputs

# Hopper: the first architecture whose tensor cores take e4m3 in Triton's wgmma path.
MIN_COMPUTE_CAPABILITY = (9, 0)
TRITON_PIN = "triton==3.7.1"  # the version torch 2.13's CUDA wheel pins
OP_NAME = "qcompile::fp8_triton_attention"


def interpreter_requested() -> bool:
    """TRITON_INTERPRET set the way Triton reads it (Triton's CPU interpreter; for tests)."""
    return os.environ.get("TRITON_INTERPRET", "").strip().lower() in ("1", "true", "on", "yes")


def _triton_import_reason() -> str | None:
    if importlib.util.find_spec("triton") is None:
        return f"triton is not installed (pip install the project's gpu extra, i.e. {TRITON_PIN})"
    try:
        importlib.import_module("triton")
    except Exception as exc:  # a broken triton install is an environment fact, reported as such
        return f"triton failed to import: {exc}"
    return None


def gpu_unavailable_reason() -> str | None:
    """None when triton imports and CUDA device 0 is sm90+, else why not. What `auto` asks."""
    if importlib.util.find_spec("triton") is None:
        return f"triton is not installed (pip install the project's gpu extra, i.e. {TRITON_PIN})"
    # The device is checked before triton is imported: importing it takes a while and `auto` asks on every load.
    if not torch.cuda.is_available():
        return "no CUDA device is visible (fp8-triton needs an NVIDIA sm90+ GPU)"
    capability = torch.cuda.get_device_capability()
    if capability < MIN_COMPUTE_CAPABILITY:
        name = torch.cuda.get_device_name()
        return (f"{name} is sm{capability[0]}{capability[1]}; fp8-triton needs sm90+ (H100/H200 or newer): "
                "run native there or use fp8-reference to emulate")
    return _triton_import_reason() or kernel_self_test_reason(f"cuda:{torch.cuda.current_device()}")


# A self-test shape: one partial query tile and two key/value tiles (one partial), the smallest head dim.
_SELF_TEST_SHAPE = (1, 100, 1, 64)  # BSND
_SELF_TEST_KV_TOKENS = 200
# Far above the kernel's measured distance from its tile emulation (<= 7e-6) and far below a wrong result's.
_SELF_TEST_BOUND = 1e-3


@functools.cache
def kernel_self_test_reason(device: str) -> str | None:
    """Compile and run the kernel once on `device` (both PV precisions) against its PyTorch tile emulation: None
    when it agrees, else why not. Run at load, so a kernel that cannot compile or run on this GPU makes the
    plan's fallback policy apply there instead of failing mid-pipeline. Cached per device."""
    try:
        kernel = importlib.import_module("runtime.kernels.triton_fp8_attention")
        g = torch.Generator().manual_seed(0)
        batch, tokens, heads, head_dim = _SELF_TEST_SHAPE
        q = torch.randn(_SELF_TEST_SHAPE, generator=g).to(device)
        k, v = (torch.randn(batch, _SELF_TEST_KV_TOKENS, heads, head_dim, generator=g).to(device) for _ in "kv")
        quantized = quantize_attention_inputs(q, k, v, None, Numerics())
        for pv_precision in kernel.PV_PRECISIONS:
            got = kernel.fp8_attention(quantized, softmax_scale=head_dim**-0.5, pv_precision=pv_precision,
                                       out_dtype=torch.float32)
            want = kernel.emulate_tiles(quantized, softmax_scale=head_dim**-0.5, pv_precision=pv_precision)
            error = ((got - want).norm() / want.norm()).item()
            if not error < _SELF_TEST_BOUND:  # also catches NaN
                return (f"the fp8-triton kernel's self-test on {device} is off by {error:.2e} (relative L2, bound "
                        f"{_SELF_TEST_BOUND:g}) with pv_precision={pv_precision}")
    except Exception as exc:  # a kernel that cannot compile or launch here is a reason to fall back, not a crash
        return f"the fp8-triton kernel failed to run on {device}: {type(exc).__name__}: {str(exc).splitlines()[0][:200]}"
    return None


def triton_unavailable_reason() -> str | None:
    """Like gpu_unavailable_reason, but Triton's CPU interpreter (TRITON_INTERPRET=1) counts as available."""
    if interpreter_requested():
        return _triton_import_reason()
    return gpu_unavailable_reason()


@torch.library.custom_op(OP_NAME, mutates_args=())
def fp8_triton_attention(
    query: torch.Tensor, query_scale: torch.Tensor, key: torch.Tensor, key_scale: torch.Tensor,
    value: torch.Tensor, value_scale: torch.Tensor, softmax_scale: float, pv_precision: str, out_dtype: torch.dtype,
) -> torch.Tensor:
    """BNSD e4m3 q/k/v + fp32 per-block scales -> BSND attention output in `out_dtype`."""
    kernel = importlib.import_module("runtime.kernels.triton_fp8_attention")
    quantized = QuantizedAttentionInputs(query, query_scale, key, key_scale, value, value_scale)
    return kernel.fp8_attention(quantized, softmax_scale=softmax_scale, pv_precision=pv_precision, out_dtype=out_dtype)


@fp8_triton_attention.register_fake
def _(query, query_scale, key, key_scale, value, value_scale, softmax_scale, pv_precision, out_dtype):
    batch, heads, tokens, head_dim = query.shape
    return query.new_empty((batch, tokens, heads, head_dim), dtype=out_dtype)


@register_backend(
    "fp8-triton", auto_order=40, devices=("cuda",),
    dtypes=("fp8_e4m3_per_block",), head_dims=BLOCK_KERNEL_HEAD_DIMS, pv_precisions=PV_PRECISIONS,
    summary="our Triton kernel on NVIDIA sm90+ (Hopper), per-block FP8 as the Ascend kernel",
)
class Fp8TritonBackend(QuantizedBackend):
    @classmethod
    def auto_reason(cls) -> str | None:
        # By name it also runs under Triton's CPU interpreter (tests); `auto` takes it only on a real sm90+ GPU.
        return gpu_unavailable_reason()


    def unavailable_reason(self) -> str | None:
        return triton_unavailable_reason()

    def unsupported_reason(self, head_dim: int) -> str | None:
        reason = super().unsupported_reason(head_dim)
        blocks = (self.numerics.query_block_tokens, self.numerics.kv_block_tokens)
        if reason is None and blocks != (QUERY_BLOCK_TOKENS, KV_BLOCK_TOKENS):
            reason = (f"the kernel's blocks are {QUERY_BLOCK_TOKENS} query / {KV_BLOCK_TOKENS} key-value tokens, "
                      f"the plan asks {blocks[0]} / {blocks[1]}")
        return reason

    def attend(
        self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, rotation: torch.Tensor | None
    ) -> torch.Tensor:
        if query.device.type != "cuda" and not interpreter_requested():
            raise ValueError(
                f"fp8-triton got {query.device.type} tensors; it runs on CUDA (or on CPU under TRITON_INTERPRET=1)"
            )
        quantized = quantize_attention_inputs(query, key, value, rotation, self.numerics)
        out = fp8_triton_attention(
            quantized.query, quantized.query_scale, quantized.key, quantized.key_scale,
            quantized.value, quantized.value_scale,
            1.0 / math.sqrt(query.shape[-1]), self.numerics.pv_precision, query.dtype,
        )
        return out
