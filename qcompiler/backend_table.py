"""Which quantized attention backend runs which plan dtypes, at which head dims: the one torch-free table.

The runtime's backends take their `dtypes` and their head-dim checks from it (runtime/backends/), and
`qcompile lint` warns (QC153) when no backend serves a recipe's model at all, so the two say the same thing in the
same words. Each backend's other conditions (imports, device, a probe call, P @ V precision, block sizes) stay in
its runtime code. Adding a backend = a row here and a row in runtime/backends/registry.py.
"""

from __future__ import annotations

from dataclasses import dataclass

from qcompiler.formats import FORMATS, get_format
from qcompiler.formats.int8_per_tensor import NAME as INT8_DTYPE


@dataclass(frozen=True)
class HeadDims:
    """The head dims one attention kernel takes: those in `exactly`, or (when `exactly` is empty) the multiples of
    `multiple_of`, which must also be powers of two when the plan rotates (`power_of_two_if_rotated`)."""

    exactly: tuple[int, ...] = ()
    multiple_of: int = 1
    power_of_two_if_rotated: bool = False
    why: str = ""  # the kernel's words for `multiple_of`, shown in messages

    def reason(self, head_dim: int, dtype: str, rotated: bool) -> str | None:
        """None when the kernel takes `head_dim`, else why not (names the dims it takes)."""
        if self.exactly:
            if head_dim in self.exactly:
                return None
            return f"head dim {head_dim} is not one the {get_format(dtype).label} attention kernel takes ({self.describe(rotated)})"
        if head_dim % self.multiple_of:
            return f"head dim {head_dim} is not a multiple of {self.multiple_of} ({self.why})"
        if rotated and self.power_of_two_if_rotated and head_dim & (head_dim - 1):
            return f"head dim {head_dim} is not a power of two, which the Hadamard rotations need"
        return None

    def describe(self, rotated: bool) -> str:
        """The dims it takes, in words: "64 or 128", "multiples of 32"."""
        if self.exactly:
            return " or ".join(map(str, self.exactly))
        if rotated and self.power_of_two_if_rotated:
            powers = [self.multiple_of * 2**n for n in range(4)]
            return f"powers of two from {self.multiple_of} ({', '.join(map(str, powers))}, ...)"
        return f"multiples of {self.multiple_of}"


# The Ascend per-block FP8 contract takes head dim 64 or 128. The MX paths are held to the same until an NPU run
# shows otherwise, and the reference and fp8-triton keep the same eligibility so a CPU or GPU run predicts what an
# NPU run will do.
BLOCK_KERNEL_HEAD_DIMS = HeadDims(exactly=(64, 128))
# FIA v1 full quant: "D 32-aligned" (CANN aclnnFusedInferAttentionScoreV4 doc, shared reference a2a3-int8.md
# sec. 1); Q/K and V rotations are Hadamard matrices, which exist for powers of two only.
INT8_KERNEL_HEAD_DIMS = HeadDims(multiple_of=32, power_of_two_if_rotated=True, why="the INT8 kernel's alignment")


def _kernel_head_dims(dtype: str) -> HeadDims:
    return INT8_KERNEL_HEAD_DIMS if dtype == INT8_DTYPE else BLOCK_KERNEL_HEAD_DIMS


_FP8 = "fp8_e4m3_per_block"
# backend name (runtime/backends/registry.py) -> the plan dtypes it runs -> the head dims it takes for each.
BACKEND_HEAD_DIMS: dict[str, dict[str, HeadDims]] = {
    "reference": {dtype: _kernel_head_dims(dtype) for dtype in FORMATS},
    "npu-quant-attention": {name: BLOCK_KERNEL_HEAD_DIMS for name, spec in FORMATS.items()
                            if spec.target_name("mindiesd-precision") is not None},
    "npu-mindiesd-fia": {_FP8: BLOCK_KERNEL_HEAD_DIMS},
    "npu-torch-fia": {_FP8: BLOCK_KERNEL_HEAD_DIMS},
    "fp8-triton": {_FP8: BLOCK_KERNEL_HEAD_DIMS},
    "int8-npu": {INT8_DTYPE: INT8_KERNEL_HEAD_DIMS},
}


def backend_dtypes(backend: str) -> tuple[str, ...]:
    """The plan dtypes `backend` runs."""
    return tuple(BACKEND_HEAD_DIMS[backend])


def rotates(numerics: dict) -> bool:
    """Whether a plan's (or recipe's resolved) `numerics` applies a Hadamard rotation to any input."""
    return bool(numerics.get("hadamard_rotation") or numerics.get("v_rotation"))


def head_dim_reason(backend: str, dtype: str, head_dim: int, rotated: bool) -> str | None:
    """None when `backend` runs `dtype` at `head_dim`, else why not. The caller checks the dtype first."""
    return BACKEND_HEAD_DIMS[backend][dtype].reason(head_dim, dtype, rotated)


def serving_backends(dtype: str, head_dim: int, rotated: bool) -> tuple[str, ...]:
    """The backends that run `dtype` at `head_dim`, in table order."""
    return tuple(name for name, row in BACKEND_HEAD_DIMS.items()
                 if dtype in row and row[dtype].reason(head_dim, dtype, rotated) is None)


def who_serves(dtype: str, rotated: bool) -> str:
    """Which backends run `dtype` at which head dims: "reference, npu-torch-fia take head dim 64 or 128"."""
    groups: dict[str, list[str]] = {}
    for name, row in BACKEND_HEAD_DIMS.items():
        if dtype in row:
            groups.setdefault(row[dtype].describe(rotated), []).append(name)
    return "; ".join(f"{', '.join(names)} take{'s' if len(names) == 1 else ''} head dim {dims}"
                     for dims, names in groups.items())


def no_backend_reason(dtype: str, head_dim: int, rotated: bool) -> str | None:
    """None when some backend runs `dtype` at `head_dim`, else a sentence that says which backends take which
    head dims for it."""
    if serving_backends(dtype, head_dim, rotated):
        return None
    return f"no attention backend runs {dtype} at head dim {head_dim} ({who_serves(dtype, rotated)})"
