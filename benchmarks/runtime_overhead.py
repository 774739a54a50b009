"""What a loaded plan costs when it should cost nothing (CPU figures; FP8 speed needs an NPU).

1. Per-attention-call dispatch overhead (goal <= 5 us): the attention module's pre-hook that makes its site
   current plus the detour through the "qcompile" dispatch backend to the stock one with a native decision,
   plus the per-forward hook (step tracking, checks, flag setting, counting) amortized over the attention calls
   of one forward.
2. Tiny Wan2.2 I2V pipeline wall time with an all-native plan loaded / with no plan, interleaved in one run
   (goal <= 1.02x), and peak memory (max RSS) of each, measured in a fresh subprocess per case.

    .venv/bin/python benchmarks/runtime_overhead.py [--repeats 15]
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import runtime  # noqa: E402
from qcompiler import compile_recipe_text  # noqa: E402
from runtime.diffusers_private import dispatch_attention_fn  # noqa: E402
from runtime.dispatch import qcompile_backend  # noqa: E402
from runtime.tiny import build_tiny_pipeline, run_tiny  # noqa: E402

FAMILY = "wan2.2-i2v-a14b"
ALL_NATIVE = f"""\
version: 1
family: {FAMILY}
num_inference_steps: 4
dtype: fp8_e4m3_per_block
numerics: {{hadamard_rotation: true, rotation_seed: 425500}}
fallback: error
attention_kinds: [self, cross]
components: [transformer, transformer_2]
default: native
"""


def _per_call_seconds(fn, calls: int, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(calls):
            fn()
        best = min(best, (time.perf_counter() - start) / calls)
    return best


def dispatch_overhead(pipe, plan, repeats: int) -> dict[str, float]:
    """The dispatch detour's own cost on a 3-token attention (attention itself is the same call in both), plus
    the real per-forward hook of a loaded plan."""
    q = torch.randn(1, 3, 2, 64)
    with torch.no_grad(), runtime.load(pipe, plan) as handle:
        hook = handle._installation.hooks[0]
        site = hook._all[0]
        bare_s = _per_call_seconds(lambda: dispatch_attention_fn(q, q, q), 20000, repeats)

        def through_qcompile():
            site.make_current(site.module, ())
            return dispatch_attention_fn(q, q, q, backend=qcompile_backend())

        routed_s = _per_call_seconds(through_qcompile, 20000, repeats)
        pipe.scheduler.set_timesteps(4)
        pipe._current_timestep = pipe.scheduler.timesteps[0]
        kwargs = {"hidden_states": torch.randn(1, 36, 3, 2, 2)}

        def one_forward_of_hooks() -> None:
            hook._pre_forward(pipe.transformer, (), kwargs)
            hook._post_forward(pipe.transformer, (), kwargs, kwargs["hidden_states"])

        hook_s = _per_call_seconds(one_forward_of_hooks, 500, repeats)
        calls_per_forward = len(hook._all)
        pipe._current_timestep = None
        handle.reset_report()
    processor_us = (routed_s - bare_s) * 1e6
    hook_us = hook_s * 1e6 / calls_per_forward
    return {"processor_us": processor_us, "hook_per_forward_us": hook_s * 1e6, "hook_amortized_us": hook_us,
            "total_us": processor_us + hook_us, "calls_per_forward": calls_per_forward}


def wall_ratio(pipe, plan, repeats: int) -> tuple[float, float, float, float]:
    run_tiny(pipe)  # warm-up
    bare, loaded = [], []
    for _ in range(repeats):  # interleaved, so drift in machine load hits both alike
        start = time.perf_counter()
        run_tiny(pipe)
        bare.append(time.perf_counter() - start)
        with runtime.load(pipe, plan):
            start = time.perf_counter()
            run_tiny(pipe)
            loaded.append(time.perf_counter() - start)
    # Minimums: on a shared machine noise only ever adds time, so the minimum is the intrinsic cost.
    return min(bare), min(loaded), statistics.median(bare), statistics.median(loaded)


def memory_case(case: str) -> None:
    pipe = build_tiny_pipeline(FAMILY)
    if case == "plan":
        runtime.load(pipe, compile_recipe_text(ALL_NATIVE, name="all-native.yaml", variant="tiny"))
    run_tiny(pipe)
    print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)  # KiB on Linux


def peak_rss_mib(case: str) -> float:
    out = subprocess.run([sys.executable, __file__, "--memory-case", case], capture_output=True, text=True,
                         check=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    return int(out.stdout.strip().splitlines()[-1]) / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--memory-case", choices=["bare", "plan"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(1)  # tiny tensors; avoids OpenMP spinning on a shared machine
    if args.memory_case:
        memory_case(args.memory_case)
        return
    pipe = build_tiny_pipeline(FAMILY)
    plan = compile_recipe_text(ALL_NATIVE, name="all-native.yaml", variant="tiny")
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}")
    d = dispatch_overhead(pipe, plan, args.repeats)
    print(f"dispatch overhead per attention call: {d['total_us']:.2f} us (goal <= 5 us) = dispatch detour "
          f"{d['processor_us']:.2f} us + hook {d['hook_per_forward_us']:.1f} us per forward / "
          f"{d['calls_per_forward']} calls ({d['hook_amortized_us']:.2f} us)")
    bare, loaded, bare_median, loaded_median = wall_ratio(pipe, plan, args.repeats)
    print(f"tiny {FAMILY} pipeline (4 steps, CFG, 2 x 40 layers, {args.repeats} interleaved runs each): "
          f"no plan {bare * 1000:.1f} ms, all-native plan {loaded * 1000:.1f} ms (minimums), ratio "
          f"{loaded / bare:.4f}x (goal <= 1.02x); medians {bare_median * 1000:.1f} / {loaded_median * 1000:.1f} ms, "
          f"ratio {loaded_median / bare_median:.4f}x")
    print(f"peak memory (max RSS, fresh process each): no plan {peak_rss_mib('bare'):.1f} MiB, "
          f"all-native plan {peak_rss_mib('plan'):.1f} MiB")


if __name__ == "__main__":
    main()
