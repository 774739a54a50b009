"""What a plan costs under diffusers' Ulysses context parallelism (CPU figures, gloo, 2 ranks, 1 thread each).

1. Ulysses-2 tiny Wan2.2 I2V pipeline with an all-native plan loaded / stock Ulysses-2, the same ranks, runs
   interleaved (goal <= 1.02x).
2. Ulysses-2 with an FP8 plan (fp8-reference) / one process with the same plan (reported, no goal: on CPU the
   ranks share the cores and the all-to-alls go through gloo, so this says little about GPUs or NPUs).

    .venv/bin/python benchmarks/ulysses_overhead.py [--repeats 10]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.multiprocessing as mp

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

FAMILY = "wan2.2-i2v-a14b"
SIZE = {"height": 32, "width": 32, "num_frames": 9}  # 12 tokens, 6 per rank (the default 16x16 has 3)
RECIPE = """\
version: 1
family: wan2.2-i2v-a14b
num_inference_steps: 4
dtype: fp8_e4m3_per_block
numerics: {{hadamard_rotation: true, rotation_seed: 425500}}
fallback: error
attention_kinds: [self, cross]
components: [transformer, transformer_2]
default: {default}
"""


def _plans() -> dict:
    from qcompiler import compile_recipe_text

    return {name: compile_recipe_text(RECIPE.format(default=default), name=f"{name}.yaml", variant="tiny").to_dict()
            for name, default in (("native", "native"), ("fp8", "fp8"))}


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def _rank(rank: int, world: int, init_file: str, out_file: str, plans: dict, repeats: int) -> None:
    import torch.distributed as dist

    torch.set_num_threads(1)
    torch.accelerator.device_count = lambda: 1  # CPU: diffusers computes rank % device_count (0 on CPU)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    from diffusers import ContextParallelConfig

    import runtime
    from runtime.tiny import build_tiny_pipeline, run_tiny

    pipe = build_tiny_pipeline(FAMILY)
    for model in (pipe.transformer, pipe.transformer_2):
        model.enable_parallelism(config=ContextParallelConfig(ulysses_degree=world))
    run_tiny(pipe, **SIZE)  # warm-up
    stock, native_plan, fp8 = [], [], []
    for _ in range(repeats):  # interleaved, so drift in machine load hits both alike
        dist.barrier()
        stock.append(_timed(lambda: run_tiny(pipe, **SIZE)))
        with runtime.load(pipe, plans["native"]):
            dist.barrier()
            native_plan.append(_timed(lambda: run_tiny(pipe, **SIZE)))
    with runtime.load(pipe, plans["fp8"], backend="fp8-reference"):
        run_tiny(pipe, **SIZE)
        for _ in range(repeats):
            dist.barrier()
            fp8.append(_timed(lambda: run_tiny(pipe, **SIZE)))
    if rank == 0:
        torch.save({"stock": stock, "native_plan": native_plan, "fp8": fp8}, out_file)
    dist.destroy_process_group()


def one_process_fp8(plans: dict, repeats: int) -> list[float]:
    import runtime
    from runtime.tiny import build_tiny_pipeline, run_tiny

    pipe = build_tiny_pipeline(FAMILY)
    with runtime.load(pipe, plans["fp8"], backend="fp8-reference"):
        run_tiny(pipe, **SIZE)
        return [_timed(lambda: run_tiny(pipe, **SIZE)) for _ in range(repeats)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=10)
    args = parser.parse_args()
    torch.set_num_threads(1)
    plans = _plans()
    single = one_process_fp8(plans, args.repeats)
    with tempfile.TemporaryDirectory() as folder:
        out = os.path.join(folder, "times.pt")
        mp.start_processes(_rank, args=(2, os.path.join(folder, "init"), out, plans, args.repeats), nprocs=2,
                           start_method="spawn")
        times = torch.load(out)
    import diffusers

    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
          f"diffusers {diffusers.__version__}; gloo, 2 ranks x 1 thread; tiny {FAMILY}, 4 steps, CFG, "
          f"{SIZE['height']}x{SIZE['width']}x{SIZE['num_frames']} (12 tokens); {args.repeats} runs each, rank 0 times")
    s, n, f = times["stock"], times["native_plan"], times["fp8"]
    print(f"Ulysses-2 all-native plan / stock Ulysses-2 (interleaved): minimums {min(n) * 1e3:.1f} / "
          f"{min(s) * 1e3:.1f} ms = {min(n) / min(s):.4f}x; medians {statistics.median(n) * 1e3:.1f} / "
          f"{statistics.median(s) * 1e3:.1f} ms = {statistics.median(n) / statistics.median(s):.4f}x (goal <= 1.02x)")
    print(f"Ulysses-2 FP8 plan (fp8-reference) / one process, same plan: minimums {min(f) * 1e3:.1f} / "
          f"{min(single) * 1e3:.1f} ms = {min(f) / min(single):.3f}x; medians {statistics.median(f) * 1e3:.1f} / "
          f"{statistics.median(single) * 1e3:.1f} ms = {statistics.median(f) / statistics.median(single):.3f}x")


if __name__ == "__main__":
    main()
