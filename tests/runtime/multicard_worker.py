"""One rank of the 2-rank CPU tests (gloo, one thread per rank), spawned by tests/runtime/test_multicard.py.

Every scenario runs on both ranks in the same order (a rank that raised alone would leave the other waiting in
its next collective until the short process-group timeout); each one's outputs or error go into a dict that the
rank saves for the test to compare with the one-process run.
"""

from __future__ import annotations

import traceback
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

# 16 text tokens; 32x32 pixels and 9 frames give 3 latent frames x 2x2 patches = 12 tokens, 6 per rank at
# degree 2: NOT a multiple of the 128-token query block. 128x256 pixels and 5 frames give 2 x 8x16 = 256
# tokens, 128 per rank: exactly one query block per rank.
SMALL = {"height": 32, "width": 32, "num_frames": 9}
BLOCK_ALIGNED = {"height": 128, "width": 256, "num_frames": 5}
TIMEOUT = timedelta(seconds=90)


def cpu_device_count_shim() -> None:
    """diffusers' `_resolve_parallel_config` computes `rank % torch.accelerator.device_count()`, which is 0 with a
    CPU-only torch (ZeroDivisionError). On CPU every rank uses the one CPU device: report one."""
    torch.accelerator.device_count = lambda: 1


def enable_ulysses(pipe: Any, degree: int = 2, ring: int = 1) -> None:
    from diffusers import ContextParallelConfig

    for model in (pipe.transformer, pipe.transformer_2):
        if model is not None:
            config = ContextParallelConfig(ulysses_degree=degree) if ring == 1 else ContextParallelConfig(ring_degree=ring)
            model.enable_parallelism(config=config)


def _run(results: dict, key: str, fn) -> None:
    try:
        results[key] = fn()
    except Exception as exc:  # recorded for the test to show; both ranks take the same path
        results[key] = {"error": type(exc).__name__, "message": str(exc), "traceback": traceback.format_exc()}


def main(rank: int, world: int, init_file: str, out_dir: str, plans: dict[str, dict]) -> None:
    torch.set_num_threads(1)
    cpu_device_count_shim()
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world, timeout=TIMEOUT)
    import runtime
    from runtime.quality.calibrate import CalibrateOptions, calibrate
    from runtime.tiny import build_tiny_pipeline, run_tiny

    results: dict[str, Any] = {}
    try:
        # A: enable_parallelism first, then stock CP run, then load / unload.
        pipe = build_tiny_pipeline("wan2.2-i2v-a14b")
        enable_ulysses(pipe)
        results["stock_cp"] = run_tiny(pipe, **SMALL)

        def load_after():
            with runtime.load(pipe, plans["i2v_self"], backend="fp8-reference") as handle:
                out = run_tiny(pipe, **SMALL)
                report = handle.report()
            return {"latents": out, "report": report.to_dict(), "format": report.format(),
                    "gathered": runtime.gather_reports(report).to_dict()}

        _run(results, "self_after", load_after)
        results["unloaded"] = run_tiny(pipe, **SMALL)

        def mixed():
            with runtime.load(pipe, plans["i2v_mixed"], backend="fp8-reference") as handle:
                out = run_tiny(pipe, **SMALL)
                return {"latents": out, "report": handle.report().to_dict()}

        _run(results, "mixed", mixed)

        def shadow():
            with runtime.shadow(pipe, num_inference_steps=4, backend="fp8-reference") as recorder:
                out = run_tiny(pipe, **SMALL)
            return {"latents": out, "records": recorder.to_dicts()}

        _run(results, "shadow", shadow)

        def calibrate_cp():
            from runtime.quality.pipelines import FrameSettings

            frames = FrameSettings(height=SMALL["height"], width=SMALL["width"], num_frames=SMALL["num_frames"])
            options = CalibrateOptions(family="wan2.2-i2v-a14b", steps=2, backend="fp8-reference", progress=False,
                                       frames=frames)
            return calibrate(options, pipe=pipe)["cells"]

        _run(results, "calibrate", calibrate_cp)

        # B: load first, then enable_parallelism.
        pipe = build_tiny_pipeline("wan2.2-i2v-a14b")

        def load_before():
            handle = runtime.load(pipe, plans["i2v_self"], backend="fp8-reference")
            enable_ulysses(pipe)
            out = run_tiny(pipe, **SMALL)
            report = handle.report()
            handle.unload()
            return {"latents": out, "report": report.to_dict(), "unloaded": run_tiny(pipe, **SMALL)}

        _run(results, "self_before", load_before)

        # C: FP8 cross-attention with 128 query tokens per rank.
        pipe = build_tiny_pipeline("wan2.1-t2v-1.3b")
        enable_ulysses(pipe)

        def cross_aligned():
            with runtime.load(pipe, plans["t2v_all"], backend="fp8-reference") as handle:
                return {"latents": run_tiny(pipe, num_inference_steps=2, **BLOCK_ALIGNED),
                        "matches_plan": handle.report().matches_plan()}

        _run(results, "cross_aligned", cross_aligned)

        # D: ring, refused both ways round.
        pipe = build_tiny_pipeline("wan2.1-t2v-1.3b")

        def ring_after_load():
            with runtime.load(pipe, plans["t2v_all"], backend="fp8-reference"):
                enable_ulysses(pipe, ring=2)
                return run_tiny(pipe, num_inference_steps=2, **SMALL)

        _run(results, "ring_after_load", ring_after_load)
        pipe = build_tiny_pipeline("wan2.1-t2v-1.3b")
        enable_ulysses(pipe, ring=2)

        def ring_before_load():
            with runtime.load(pipe, plans["t2v_all"], backend="fp8-reference"):
                return "loaded"

        _run(results, "ring_before_load", ring_before_load)
    finally:
        torch.save(results, Path(out_dir) / f"rank{rank}.pt")
        dist.destroy_process_group()
