"""`python -m runtime.demo PLAN`: run the tiny offline pipeline of the plan's family with the plan applied,
print the executed table against the plan, call counts per backend, and how far the output is from native.

The plan must be compiled for the tiny variant: `qcompile RECIPE --variant tiny -o plan.json`.
"""

from __future__ import annotations

import argparse
import sys

import torch

from qcompiler.errors import QcompileError
from qcompiler.plan import load_plan
from runtime.backends import BACKEND_NAMES
from runtime.load import load
from runtime.metrics import cosine_similarity, psnr
from runtime.tiny import build_tiny_pipeline, run_tiny


def _latents(pipe, steps: int, guidance_scale: float) -> torch.Tensor:
    # The denoised latents: what attention changes. The tiny VAE's random weights would only blur the comparison.
    return run_tiny(pipe, num_inference_steps=steps, guidance_scale=guidance_scale, output_type="latent")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m runtime.demo", description=__doc__.splitlines()[0])
    parser.add_argument("plan", help="plan.json compiled with --variant tiny")
    parser.add_argument("--backend", default="fp8-reference", choices=BACKEND_NAMES,
                        help="FP8 backend (default fp8-reference: the PyTorch emulation, runs on CPU)")
    parser.add_argument("--guidance-scale", type=float, default=5.0, help="CFG scale; 1 turns CFG off")
    args = parser.parse_args(argv)
    try:
        plan = load_plan(args.plan)
        pipe = build_tiny_pipeline(plan.family_name)
        steps = plan.num_inference_steps
        native = _latents(pipe, steps, args.guidance_scale)
        with load(pipe, plan, backend=args.backend) as handle:
            planned = _latents(pipe, steps, args.guidance_scale)
            report = handle.report()
    except QcompileError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"plan {args.plan}: {plan.family_name} ({plan.variant or 'real'} model), {steps} steps, "
          f"backend {args.backend} -> FP8 served by {report.fp8_backend or 'nothing (native)'}")
    print(report.format())
    print("calls per backend: " + ", ".join(f"{k}: {v}" for k, v in sorted(report.call_counts.items())))
    diff = (planned - native).abs().max().item()
    peak = (native.max() - native.min()).item()  # PSNR over the latents' own range
    print(f"output vs native (denoised latents {tuple(native.shape)}): max |diff| {diff:.3g}, "
          f"cosine similarity {cosine_similarity(planned, native):.6f}, "
          f"PSNR {psnr(planned, native, data_range=peak):.2f} dB (peak-to-peak {peak:.3g})")
    return 0 if report.matches_plan() else 3


if __name__ == "__main__":
    sys.exit(main())
