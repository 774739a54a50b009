"""Options shared by the commands that run a pipeline (`report`, `calibrate`). Torch-free: the commands import
torch and the runtime inside their functions only."""

from __future__ import annotations

from collections.abc import Callable

import click

from qcompiler.backend_table import quantized_backend_names

# The registered backends that serve quantized cells (every one but `native`), from the torch-free manifest
# qcompiler/backends.json, so `--help` needs no torch import.
QUANTIZED_BACKEND_NAMES = quantized_backend_names()



def pipeline_options(function: Callable) -> Callable:
    """--pipeline, --backend, --height, --width, --num-frames, --guidance-scale, --no-progress."""
    decorators = [
        click.option("--pipeline", default="tiny", show_default=True,
                     help="`tiny` (the family's offline test pipeline, random weights) or a saved diffusers pipeline "
                          "folder, loaded with no download."),
        click.option("--backend", type=click.Choice(QUANTIZED_BACKEND_NAMES), default="auto", show_default=True,
                     help="Quantized attention: auto = the first NPU or GPU kernel that can serve the dtype; or a "
                          "backend by name (`reference`: the PyTorch emulation, any device)."),
        click.option("--height", type=click.IntRange(16, 4096), default=None,
                     help="Frame height in pixels. [default: the family's tiny size: 16 for Wan and Flux.1, 32 for "
                          "Qwen-Image and LTX-Video]"),
        click.option("--width", type=click.IntRange(16, 4096), default=None,
                     help="Frame width in pixels. [default: as --height]"),
        click.option("--num-frames", type=click.IntRange(1, 1000), default=None,
                     help="Frames to generate, video families only (a count the family's pipeline takes, e.g. 4k+1). "
                          "[default: 9]"),
        click.option("--guidance-scale", type=click.FloatRange(min=0.0), default=5.0, show_default=True,
                     help="Guidance scale, as the family's pipeline takes it: the CFG scale (> 1 runs cond and uncond "
                          "branches; Qwen-Image: true_cfg_scale), Flux.1: the distilled guidance (one forward)."),
        click.option("--no-progress", is_flag=True, help="No progress bar on stderr."),
    ]
    for decorator in reversed(decorators):
        function = decorator(function)
    return function


def check_frame_sizes(family_name: str, height: int | None, width: int | None, num_frames: int | None) -> None:
    """Refuse a size the family's pipeline cannot generate (its family file's `frames` / `pixels`), and a frame
    count for a family that generates images. None: the default, which fits."""
    from qcompiler.families import get_family

    family = get_family(family_name)
    if num_frames is not None and not generates_video(family):
        raise click.BadParameter(f"{num_frames}: {family_name} generates images, not video; drop --num-frames",
                                 param_hint="--num-frames")
    if height is None and width is None and num_frames is None:
        return
    sample = family.pixels_multiple_of or 16  # stands in for an unset height or width (the default fits)
    problem = family.frame_size_problem(sample if height is None else height, sample if width is None else width,
                                        num_frames if num_frames is not None else _fitting_frames(family))
    if problem is not None:
        option, message = problem
        hint = "--num-frames" if option == "num_frames" else "--height/--width"
        raise click.BadParameter(message, param_hint=hint)


def generates_video(family) -> bool:
    """Whether the family's pipeline generates video or images, as its family file says: a `frames` rule, or
    attention kinds that see `video` tokens. Only a video family takes a frame count."""
    return family.frames_rule is not None or any(
        "video" in (*kind.query_tokens, *kind.key_tokens) for kind in family.kind_specs)


def _fitting_frames(family) -> int:
    if family.frames_rule is None:
        return 1
    step, plus = family.frames_rule
    return step * 2 + plus
