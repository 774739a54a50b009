"""The rotation cache under concurrent first use: one build per key, every thread gets the same tensor."""

from __future__ import annotations

import threading
import time

import torch

from runtime.quant.rotation import RotationCache, randomized_hadamard


def test_concurrent_first_use_builds_each_matrix_once():
    def slow_builder(head_dim: int, seed: int) -> torch.Tensor:
        time.sleep(0.01)  # widen the race window a naive check-then-set cache would lose
        return randomized_hadamard(head_dim, seed)

    cache = RotationCache(builder=slow_builder)
    keys = [("cpu", torch.float32, 64, 1), ("cpu", torch.bfloat16, 64, 1), ("cpu", torch.float32, 128, 1),
            ("cpu", torch.float32, 64, 2)]
    barrier = threading.Barrier(16)
    results: list[list[torch.Tensor]] = [[] for _ in range(16)]

    def worker(index: int) -> None:
        barrier.wait()
        for _ in range(3):
            results[index].extend(cache.get(*key) for key in keys)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert cache.builds == len(keys) == len(cache)
    for per_thread in results:
        for i, matrix in enumerate(per_thread):
            assert matrix is results[0][i % len(keys)]
    assert results[0][1].dtype == torch.bfloat16 and results[0][2].shape == (128, 128)


def test_keys_separate_device_dtype_head_dim_and_seed():
    cache = RotationCache()
    a = cache.get("cpu", torch.float32, 64, 425500)
    assert cache.get(torch.device("cpu"), torch.float32, 64, 425500) is a
    assert cache.get("cpu", torch.float64, 64, 425500) is not a
    assert cache.get("cpu", torch.float32, 64, 1234) is not a
