"""`python -m runtime.demo PLAN`: run the tiny offline pipeline of the plan's family with the plan applied,
print the executed table against the plan, call counts per backend, and how far the output is from native.

PLAN is a plan compiled for the tiny variant (`qcompile RECIPE --variant tiny -o plan.json`), or a recipe (.yaml),
compiled in memory for the tiny variant as `qcompile report` does.

Multi-card (diffusers context parallelism, Ulysses), on CPU with gloo or on GPUs with NCCL:

    torchrun --nproc-per-node 2 -m runtime.demo plan.json --ulysses 2

Each rank prints its own executed table against the plan; rank 0 then prints the ranks' combined report.
"""

from __future__ import annotations

import argparse
import os
import sys
from datetime import timedelta

import torch

from qcompiler.cli.common import load_plan_or_recipe
from qcompiler.cli.run_options import generates_video
from qcompiler.errors import QcompileError
from runtime.backends import BACKEND_NAMES
from runtime.execution_report import gather_reports
from runtime.loading import load
from runtime.metrics import cosine_similarity, psnr
from runtime.models import model_support
from runtime.tiny import TINY_VARIANT, build_tiny_pipeline

# Under Ulysses the sequence splits across ranks: 32x32 pixels, 9 frames = 12 tokens (the default 16x16 has 3).
PARALLEL_SIZE = {"height": 32, "width": 32}


def _latents(pipe, family, steps: int, guidance_scale: float, size: dict) -> torch.Tensor:
    # The denoised latents: what attention changes. The tiny VAE's random weights would only blur the comparison.
    # Called as the family's model module calls its pipeline (its tiny size; frames only for a video family).
    support = model_support(pipe)
    height, width = support.sample_size
    kwargs = support.call_kwargs(
        pipe, height=size.get("height", height), width=size.get("width", width),
        num_frames=support.sample_frames if generates_video(family) else None, steps=steps,
        guidance_scale=guidance_scale, seed=0, max_length=support.text_tokens(pipe, tiny=True), output_type="latent")
    with torch.no_grad():
        output = pipe(**kwargs)
    return output.frames if hasattr(output, "frames") else output.images


def _init_ulysses(degree: int) -> tuple[int, int]:
    """Join torchrun's process group and return (rank, world size)."""
    import torch.distributed as dist

    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world != degree:
        raise SystemExit(f"error: --ulysses {degree} needs {degree} processes, this run has {world}: "
                         f"torchrun --nproc-per-node {degree} -m runtime.demo PLAN --ulysses {degree}")
    on_gpu = torch.cuda.is_available()
    dist.init_process_group("nccl" if on_gpu else "gloo", timeout=timedelta(minutes=5))
    if on_gpu:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    elif torch.accelerator.device_count() == 0:
        # diffusers computes `rank % torch.accelerator.device_count()`, 0 with a CPU-only torch: one CPU device.
        torch.accelerator.device_count = lambda: 1
        torch.set_num_threads(1)  # ranks share the machine's cores
    return dist.get_rank(), world


def _enable_ulysses(pipe, degree: int) -> None:
    from diffusers import ContextParallelConfig

    for name in ("transformer", "transformer_2"):
        model = getattr(pipe, name, None)
        if model is not None:
            model.enable_parallelism(config=ContextParallelConfig(ulysses_degree=degree))


def _in_rank_order(rank: int, world: int, show) -> None:
    import torch.distributed as dist

    for turn in range(world):
        if world > 1:
            dist.barrier()
        if turn == rank:
            show()
            sys.stdout.flush()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m runtime.demo", description=__doc__.splitlines()[0])
    parser.add_argument("plan", help="plan.json compiled with --variant tiny, or a recipe (.yaml), compiled for tiny")
    parser.add_argument("--backend", default="reference", choices=BACKEND_NAMES,
                        help="FP8 backend (default reference: the PyTorch emulation, runs on CPU)")
    parser.add_argument("--guidance-scale", type=float, default=5.0, help="CFG scale; 1 turns CFG off")
    parser.add_argument("--ulysses", type=int, default=1, metavar="N",
                        help="run with diffusers' Ulysses context parallelism of degree N (launch with torchrun)")
    args = parser.parse_args(argv)
    rank, world = _init_ulysses(args.ulysses) if args.ulysses > 1 else (0, 1)
    size = PARALLEL_SIZE if world > 1 else {}
    try:
        plan = load_plan_or_recipe(args.plan, variant=TINY_VARIANT)
        pipe = build_tiny_pipeline(plan.family_name)
        if world > 1:
            _enable_ulysses(pipe, world)
        steps = plan.num_inference_steps
        native = _latents(pipe, plan.family, steps, args.guidance_scale, size)  # stock, with the same parallel config
        with load(pipe, plan, backend=args.backend) as handle:
            planned = _latents(pipe, plan.family, steps, args.guidance_scale, size)
            report = handle.report()
        combined = gather_reports(report) if world > 1 else report
    except QcompileError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1

    def show() -> None:
        prefix = f"[rank {rank}] " if world > 1 else ""
        print(f"{prefix}plan {args.plan}: {plan.family_name} ({plan.variant or 'real'} model), {steps} steps, "
              f"backend {args.backend} -> FP8 served by {report.quantized_backend or 'nothing (native)'}")
        print(report.format())
        print("calls per backend: " + ", ".join(f"{k}: {v}" for k, v in sorted(report.call_counts.items())))

    _in_rank_order(rank, world, show)
    if world > 1:
        import torch.distributed as dist

        dist.barrier()  # every rank's table is out before the combined one
    if rank == 0:
        if world > 1:
            print("all ranks combined:")
            print(combined.format())
        diff = (planned - native).abs().max().item()
        peak = (native.max() - native.min()).item()  # PSNR over the latents' own range
        print(f"output vs native (denoised latents {tuple(native.shape)}): max |diff| {diff:.3g}, "
              f"cosine similarity {cosine_similarity(planned, native):.6f}, "
              f"PSNR {psnr(planned, native, data_range=peak):.2f} dB (peak-to-peak {peak:.3g})")
    ok = report.matches_plan() and combined.matches_plan()
    if world > 1:
        import torch.distributed as dist

        dist.destroy_process_group()
    return 0 if ok else 3


if __name__ == "__main__":
    sys.exit(main())
