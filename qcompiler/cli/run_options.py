"""Options shared by the commands that run a pipeline (`report`, `calibrate`). Torch-free: the commands import
torch and the runtime inside their functions only."""

from __future__ import annotations

from collections.abc import Callable

import click

from qcompiler.backend_table import quantized_backend_names

# The registered backends that serve quantized cells (every one but `native`), from the torch-free manifest
# qcompiler/backends.json, so `--help` needs no torch import.
QUANTIZED_BACKEND_NAMES = quantized_backend_names()

# Mirrors runtime.tiny's sizes (16x16, 9 frames); kept here so `--help` needs no torch import.
TINY_HEIGHT = TINY_WIDTH = 16
TINY_FRAMES = 9


def pipeline_options(function: Callable) -> Callable:
    """--pipeline, --backend, --height, --width, --num-frames, --guidance-scale, --no-progress."""
    decorators = [
        click.option("--pipeline", default="tiny", show_default=True,
                     help="`tiny` (the family's offline test pipeline, random weights) or a saved diffusers pipeline "
                          "folder, loaded with no download."),
        click.option("--backend", type=click.Choice(QUANTIZED_BACKEND_NAMES), default="auto", show_default=True,
                     help="Quantized attention: auto = the first NPU or GPU kernel that can serve the dtype; or a "
                          "backend by name (`reference`: the PyTorch emulation, any device)."),
        click.option("--height", type=click.IntRange(16, 4096), default=TINY_HEIGHT, show_default=True,
                     help="Frame height in pixels (multiple of 16)."),
        click.option("--width", type=click.IntRange(16, 4096), default=TINY_WIDTH, show_default=True,
                     help="Frame width in pixels (multiple of 16)."),
        click.option("--num-frames", type=click.IntRange(1, 1000), default=TINY_FRAMES, show_default=True,
                     help="Frames to generate (a count the family's pipeline takes, e.g. 4k+1)."),
        click.option("--guidance-scale", type=click.FloatRange(min=0.0), default=5.0, show_default=True,
                     help="Classifier-free guidance scale (> 1 runs cond and uncond branches)."),
        click.option("--no-progress", is_flag=True, help="No progress bar on stderr."),
    ]
    for decorator in reversed(decorators):
        function = decorator(function)
    return function


def check_frame_sizes(family_name: str, height: int, width: int, num_frames: int) -> None:
    """Refuse a video size the family's pipeline cannot generate (its family file's `frames` / `pixels`)."""
    from qcompiler.families import get_family

    problem = get_family(family_name).frame_size_problem(height, width, num_frames)
    if problem is not None:
        option, message = problem
        hint = "--num-frames" if option == "num_frames" else "--height/--width"
        raise click.BadParameter(message, param_hint=hint)
