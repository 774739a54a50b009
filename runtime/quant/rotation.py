"""Randomized Hadamard rotation for incoherent processing of Q and K before FP8 quantization.

R = diag(s) @ H_D / sqrt(D), s a seeded random +-1 vector, H_D the Sylvester Hadamard matrix (D a power of
two). R is orthogonal, so (Q R)(K R)^T = Q K^T in exact arithmetic while outlier channels get spread out.
The construction is bit-identical to vllm-omni 0.30.0's `get_quant_attention_rotation` (platforms/npu/quant/
kv_quant_npu.py) for the same seed: int64 randint signs from a private CPU generator (the global RNG is untouched),
a float32 Sylvester matrix, R built in float32 and only then cast to the caller's dtype and device.
Matrices are cached per (device, dtype, head_dim, seed) in a dict under a lock: one module-level tensor would
be clobbered by a second device (tensor parallel) or raced by threads.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable

import torch

RotationKey = tuple[torch.device, torch.dtype, int, int]


def sylvester_hadamard(size: int) -> torch.Tensor:
    """H_size with entries +-1 (float32, exact), built by Sylvester's doubling; size must be a power of two."""
    if size < 1 or size & (size - 1):
        raise ValueError(f"a Sylvester Hadamard matrix needs a power-of-two size, got {size}")
    matrix = torch.ones(1, 1, dtype=torch.float32)
    while matrix.shape[0] < size:
        matrix = torch.cat([torch.cat([matrix, matrix], 1), torch.cat([matrix, -matrix], 1)], 0)
    return matrix


def random_signs(head_dim: int, seed: int) -> torch.Tensor:
    """The seeded +-1 diagonal s (float32). Same seed -> same signs on every machine (CPU generator)."""
    generator = torch.Generator(device="cpu").manual_seed(seed)
    signs = torch.randint(0, 2, (head_dim,), generator=generator, dtype=torch.int64)
    return signs.to(torch.float32).mul_(2).sub_(1)


def randomized_hadamard(head_dim: int, seed: int) -> torch.Tensor:
    """R = diag(s) H / sqrt(D) in float32 on CPU, in vllm-omni 0.30.0's order of operations (so a cast to
    bf16/fp16 rounds the same float32 values it rounds)."""
    return random_signs(head_dim, seed)[:, None] * sylvester_hadamard(head_dim) / math.sqrt(head_dim)


class RotationCache:
    """Thread-safe cache of rotation matrices, one per (device, dtype, head_dim, seed)."""

    def __init__(self, builder: Callable[[int, int], torch.Tensor] = randomized_hadamard):
        self._builder = builder
        self._lock = threading.Lock()
        self._matrices: dict[RotationKey, torch.Tensor] = {}
        self.builds = 0  # how many matrices were built (a test checks one per key under contention)

    def get(self, device: torch.device | str, dtype: torch.dtype, head_dim: int, seed: int) -> torch.Tensor:
        key = (torch.device(device), dtype, head_dim, seed)
        matrix = self._matrices.get(key)  # lock-free fast path: dict reads are atomic in CPython
        if matrix is not None:
            return matrix
        with self._lock:
            matrix = self._matrices.get(key)
            if matrix is None:
                matrix = self._builder(head_dim, seed).to(device=key[0], dtype=dtype)
                self._matrices[key] = matrix
                self.builds += 1
            return matrix

    def __len__(self) -> int:
        return len(self._matrices)


_DEFAULT_CACHE = RotationCache()


def get_rotation(device: torch.device | str, dtype: torch.dtype, head_dim: int, seed: int) -> torch.Tensor:
    """The process-wide cached rotation matrix for (device, dtype, head_dim, seed)."""
    return _DEFAULT_CACHE.get(device, dtype, head_dim, seed)
