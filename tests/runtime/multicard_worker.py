"""One rank of the 2-rank CPU tests (gloo, one thread per rank), spawned by tests/runtime/test_multicard.py
(Wan: `main`) and tests/runtime/test_multicard_families.py (the other families: `family_main`, table-driven by
FAMILIES).

Every scenario runs on both ranks in the same order (a rank that raised alone would leave the other waiting in
its next collective until the short process-group timeout); each one's outputs or error go into a dict that the
rank saves for the test to compare with the one-process run.
"""

from __future__ import annotations

import traceback
from contextlib import contextmanager
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

    for model in (pipe.transformer, getattr(pipe, "transformer_2", None)):
        if model is not None:
            config = ContextParallelConfig(ulysses_degree=degree) if ring == 1 else ContextParallelConfig(ring_degree=ring)
            model.enable_parallelism(config=config)


def _run(results: dict, key: str, fn) -> None:
    try:
        results[key] = fn()
    except Exception as exc:  # recorded for the test to show; both ranks take the same path
        results[key] = _error(exc)


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


# Per family: the tiny builder module (runtime/models/tiny_*.py) and the call arguments every run uses. Sizes are
# chosen so Ulysses 2 splits every sharded input evenly (2 heads; text and image/video tokens even): Flux 16 T5
# tokens + 4x4 image tokens; Qwen-Image 24 (cond) and 20 (uncond) text tokens + 16 image tokens (the default
# prompts give 23 and 19: odd, which diffusers' split refuses); LTX-Video 16 text + 192 video tokens.
# `parallel`: whether the pipeline runs under Ulysses with a plan loaded; `stock_parallel`: whether diffusers
# 0.42.1 runs the stock pipeline under Ulysses at all ("ltx-video": no, its cross-attention mask keeps all heads;
# see test_multicard_families.py); `cp_plan`: whether the transformer class has a `_cp_plan`.
FAMILY_STEPS = 3
FAMILIES: dict[str, dict[str, Any]] = {
    "flux.1-dev": {"builder": "tiny_flux", "call": {}, "parallel": True, "stock_parallel": True, "cp_plan": True},
    "qwen-image": {"builder": "tiny_qwenimage", "call": {"prompt": "a red cubes", "negative_prompt": "blurry!"},
                   "parallel": True, "stock_parallel": True, "cp_plan": True},
    "ltx-video": {"builder": "tiny_ltx", "call": {}, "parallel": True, "stock_parallel": False, "cp_plan": True},
    "cogvideox-2b": {"builder": "tiny_cogvideox", "call": {}, "parallel": False, "stock_parallel": False,
                     "cp_plan": False},
    "hunyuanvideo1.5-t2v-480p": {"builder": "tiny_hunyuanvideo15", "call": {}, "parallel": False,
                                 "stock_parallel": False, "cp_plan": False},
}


def has_joint_kinds(family: str) -> bool:
    """Whether the family has kinds attending over [text, image] with both streams sharded (Flux, Qwen-Image)."""
    from qcompiler.families import get_family
    from runtime.dispatch import joint_kinds

    return bool(joint_kinds(get_family(family, "tiny")))


def family_pipeline(family: str) -> Any:
    import importlib

    return importlib.import_module(f"runtime.models.{FAMILIES[family]['builder']}").build_tiny_pipeline(0)


def run_family(family: str, pipe: Any) -> torch.Tensor:
    import importlib

    module = importlib.import_module(f"runtime.models.{FAMILIES[family]['builder']}")
    with torch.no_grad():
        return pipe(**module.tiny_inputs(pipe, num_inference_steps=FAMILY_STEPS, **FAMILIES[family]["call"]))[0]


@contextmanager
def native_in_one_process_order(pipe: Any):
    """Make diffusers' own Ulysses native attention attend joint [text, image] calls in one process's token order
    (as qcompile's quantized cells do), to show that what separates a mixed plan under Ulysses from one process
    is diffusers' stock native cells alone. The text length comes from the transformer's own input."""
    from diffusers.models import attention_dispatch

    stock = attention_dispatch._native_attention_forward_op
    text = {"tokens": 0}

    def remember(module, args, kwargs):
        text["tokens"] = kwargs["encoder_hidden_states"].shape[1]  # whole: before diffusers' split

    def forward_op(ctx, query, key, value, *args, _parallel_config=None, **kwargs):
        n = _parallel_config.context_parallel_config.ulysses_degree
        t = text["tokens"] // n
        if query.shape[1] != key.shape[1]:  # not joint self-attention over [text, image]
            return stock(ctx, query, key, value, *args, _parallel_config=_parallel_config, **kwargs)

        def order(x):
            shards = x.reshape(x.shape[0], n, x.shape[1] // n, *x.shape[2:])
            return torch.cat([shards[:, :, :t].flatten(1, 2), shards[:, :, t:].flatten(1, 2)], dim=1)

        out = stock(ctx, order(query), order(key), order(value), *args, _parallel_config=_parallel_config, **kwargs)
        b, length, h, d = out.shape
        return torch.cat([out[:, :n * t].reshape(b, n, t, h, d), out[:, n * t:].reshape(b, n, length // n - t, h, d)],
                         dim=2).flatten(1, 2)

    handle = pipe.transformer.register_forward_pre_hook(remember, with_kwargs=True)
    attention_dispatch._native_attention_forward_op = forward_op
    try:
        yield
    finally:
        attention_dispatch._native_attention_forward_op = stock
        handle.remove()


def _error(exc: Exception) -> dict:
    return {"error": type(exc).__name__, "message": str(exc), "traceback": traceback.format_exc()}


def family_main(rank: int, world: int, init_file: str, out_dir: str, plans: dict[str, dict[str, dict]]) -> None:
    """Every check of every family in `plans` (family -> plan key -> plan dict) on this rank, one family after
    the other (one spawn for all: starting ranks costs more than the checks); results saved after each family."""
    torch.set_num_threads(1)
    cpu_device_count_shim()
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world, timeout=TIMEOUT)
    results: dict[str, dict[str, Any]] = {}
    try:
        for family in FAMILIES:
            if family in plans:
                results[family] = {}
                family_checks(family, plans[family], results[family])
                torch.save(results, Path(out_dir) / f"rank{rank}.pt")
    finally:
        torch.save(results, Path(out_dir) / f"rank{rank}.pt")
        dist.destroy_process_group()


def family_checks(family: str, plans: dict[str, dict], results: dict[str, Any]) -> None:
    """plans["quantized"] (every cell quantized) and plans["shipped"] loaded after and before
    enable_parallelism, plans["masked_quantized"] (where given) after, unload, ring refused both ways round; for a family without a `_cp_plan`, what
    enable_parallelism and then runtime.load do."""
    import runtime

    def loaded(pipe, key, enable_after=False):
        handle = runtime.load(pipe, plans[key], backend="reference")
        try:
            if enable_after:
                enable_ulysses(pipe)
            out = run_family(family, pipe)
            return {"latents": out, "report": handle.report().to_dict()}
        finally:
            handle.unload()

    if not FAMILIES[family]["cp_plan"]:
        pipe = family_pipeline(family)
        _run(results, "enable", lambda: enable_ulysses(pipe))
        _run(results, "load", lambda: runtime.load(pipe, plans["shipped"], backend="reference"))
        return
    # A: enable_parallelism first, then load.
    pipe = family_pipeline(family)
    enable_ulysses(pipe)
    _run(results, "stock_cp", lambda: run_family(family, pipe))
    _run(results, "quantized_after", lambda: loaded(pipe, "quantized"))
    _run(results, "shipped_after", lambda: loaded(pipe, "shipped"))
    if "masked_quantized" in plans:  # planned-quantized masked calls: stock under CP, counted as fallback
        _run(results, "masked_quantized_after", lambda: loaded(pipe, "masked_quantized"))
    _run(results, "unloaded", lambda: run_family(family, pipe))
    if has_joint_kinds(family):  # only joint attention has a token order of its own under Ulysses
        with native_in_one_process_order(pipe):
            _run(results, "shipped_native_reordered", lambda: loaded(pipe, "shipped"))
    # B: load first, then enable_parallelism.
    pipe = family_pipeline(family)
    _run(results, "quantized_before", lambda: loaded(pipe, "quantized", enable_after=True))
    # C: ring, refused by the first forward (enabled after load), then at load (already on).
    pipe = family_pipeline(family)

    def ring_after_load():
        with runtime.load(pipe, plans["quantized"], backend="reference"):
            enable_ulysses(pipe, ring=2)
            return run_family(family, pipe)

    _run(results, "ring_after_load", ring_after_load)

    def ring_before_load():
        with runtime.load(pipe, plans["quantized"], backend="reference"):
            return "loaded"

    _run(results, "ring_before_load", ring_before_load)
