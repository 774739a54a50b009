"""Calibration cost relative to one plain pipeline run, on the tiny pipeline (goal: at most 3x).

    .venv/bin/python benchmarks/calibration_cost.py [--family F] [--steps N] [--size PX] [--repeats R]

A plain run is one ordinary pipeline call producing decoded frames, no qcompile code installed. A calibration
is `runtime.quality.calibrate.calibrate` with one seed and one prompt: the same denoising loop in shadow mode (native
and FP8-emulated attention on every call, errors recorded), no decode. Both use the same pipeline object,
after one warm-up call each; the median of R repeats is reported. Numbers are CPU wall time on this machine.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from runtime.quality.calibrate import CalibrateOptions, calibrate  # noqa: E402
from runtime.quality.pipelines import FrameSettings, call_kwargs, load_pipeline  # noqa: E402


def _median_seconds(action, repeats: int) -> float:
    action()  # warm-up: first-call allocations and lazy imports are not what we measure
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        action()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--family", default="wan2.2-i2v-a14b")
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--size", type=int, default=16, help="frame height and width in pixels (multiple of 16)")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    pipe = load_pipeline("tiny", args.family)
    frames = FrameSettings(height=args.size, width=args.size)

    def plain() -> None:
        with torch.no_grad():
            pipe(**call_kwargs(pipe, spec="tiny", seed=0, prompt="a red cube on a table", steps=args.steps,
                               frames=frames))

    def calibration() -> None:
        calibrate(CalibrateOptions(family=args.family, steps=args.steps, frames=frames, progress=False), pipe=pipe)

    plain_s = _median_seconds(plain, args.repeats)
    calibrate_s = _median_seconds(calibration, args.repeats)
    ratio = calibrate_s / plain_s
    print(f"machine: {platform.machine()}, {torch.get_num_threads()} torch threads, torch {torch.__version__}")
    print(f"tiny {args.family}: {args.steps} steps, {args.size}x{args.size}, 9 frames, CFG on, median of {args.repeats}")
    print(f"plain pipeline run     {plain_s:8.3f} s")
    print(f"calibration (1 sample) {calibrate_s:8.3f} s")
    print(f"calibration / plain    {ratio:8.2f}x   (goal <= 3x: {'met' if ratio <= 3 else 'NOT met'})")


if __name__ == "__main__":
    main()
