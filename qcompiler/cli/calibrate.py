"""`qcompile calibrate --pipeline tiny|PATH --family F --steps N -o sensitivity.json`: measure how much the
quantized format (--dtype: FP8, MX or INT8) changes every (component, kind, step, layer) in shadow mode. See docs/report-and-calibrate.md."""

from __future__ import annotations

from pathlib import Path

import click

from qcompiler.cli.common import needs_runtime_extra
from qcompiler.cli.run_options import check_frame_sizes, pipeline_options
from qcompiler.families import get_family
from qcompiler.fileio import write_text_atomically
from qcompiler.formats import DEFAULT_FORMAT, FORMATS, get_format
from qcompiler.formats._choice import FormatChoice
from qcompiler.formats.int8_per_tensor import SCALE_SCOPES
from qcompiler.numerics import DEFAULT_ROTATION_SEED, MAX_ROTATION_SEED
from qcompiler.recipe.schema import MAX_STEPS


def _parse_seeds(text: str) -> tuple[int, ...]:
    try:
        seeds = tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise click.BadParameter(f"{text!r}: write comma-separated integers, e.g. 0,1,2", param_hint="--seeds") from None
    if not seeds:
        raise click.BadParameter("give at least one seed, e.g. 0", param_hint="--seeds")
    return seeds


def _read_prompts(path: str | None) -> tuple[str, ...] | None:
    if path is None:
        return None
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise click.BadParameter(f"{path}: cannot read: {exc}", param_hint="--prompts") from None
    prompts = tuple(line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#"))
    if not prompts:
        raise click.BadParameter(f"{path}: no prompt in it (one per line; # starts a comment)", param_hint="--prompts")
    return prompts


@click.command(name="calibrate")
@click.option("--family", required=True, help="Model family of the pipeline (see `qcompile families`).")
@click.option("--steps", type=click.IntRange(1, MAX_STEPS), required=True, help="Denoising steps to measure.")
@click.option("--prompts", "prompts_file", type=click.Path(dir_okay=False),
              help="Text file, one prompt per line (# comments). Default: one built-in prompt.")
@click.option("--seeds", default="0", show_default=True, help="Comma-separated seeds; every prompt runs every seed.")
@click.option("--dtype", type=FormatChoice(), default=DEFAULT_FORMAT, show_default=True,
              help="Quantized format to measure (qcompiler/formats/ has one module per format).")
@click.option("--hadamard/--no-hadamard", default=None,
              help="Measure with the Q/K Hadamard rotation. Default: the recipe default of the dtype (on; off for the "
                   "SageAttention dtypes, which take no rotation).")
@click.option("--rotation-seed", type=click.IntRange(0, MAX_ROTATION_SEED), default=DEFAULT_ROTATION_SEED, show_default=True)
@click.option("--k-mean-subtraction/--no-k-mean-subtraction", default=None,
              help="Measure with K's token mean subtracted (exact for softmax). Default: the recipe default of the "
                   "dtype (off, on for int8_per_tensor).")
@click.option("--v-rotation/--no-v-rotation", default=None,
              help="int8_per_tensor only: rotate V by a second Hadamard and the output back. [default: on]")
@click.option("--scale-scope", type=click.Choice(SCALE_SCOPES), default=None,
              help="int8_per_tensor only: one scale per tensor per call, or per head. [default: call]")
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False), help="Sensitivity file to write.")
@pipeline_options
def command(family: str, steps: int, prompts_file: str | None, seeds: str, dtype: str, hadamard: bool | None,
            rotation_seed: int, k_mean_subtraction: bool | None, v_rotation: bool | None, scale_scope: str | None,
            output: str, pipeline: str, backend: str, height: int | None, width: int | None, num_frames: int | None,
            guidance_scale: float, no_progress: bool) -> None:
    """Measure per-(step, layer) error of the --dtype format in shadow mode and write a sensitivity file for `qcompile suggest`."""
    int8_only = {"v_rotation": v_rotation, "scale_scope": scale_scope}
    foreign = [key for key, value in int8_only.items() if value is not None and get_format(dtype).key(key) is None]
    if foreign:
        owners = " or ".join(name for name, spec in FORMATS.items() if all(spec.key(key) for key in foreign))
        raise click.UsageError(f"--v-rotation/--no-v-rotation and --scale-scope apply to --dtype {owners} only")
    given = {"hadamard_rotation": hadamard, "rotation_seed": rotation_seed, "k_mean_subtraction": k_mean_subtraction,
             **int8_only}
    rotation_key = get_format(dtype).key("hadamard_rotation")
    if hadamard and rotation_key is not None and rotation_key.allowed is not None and True not in rotation_key.allowed:
        raise click.UsageError(f"--dtype {dtype} takes no Q/K rotation (its kernel rotates nothing): drop --hadamard")
    seed_list = _parse_seeds(seeds)
    prompts = _read_prompts(prompts_file)
    get_family(family)
    check_frame_sizes(family, height, width, num_frames)
    with needs_runtime_extra("calibrate"):
        from runtime.quality.calibrate import CalibrateOptions, calibrate, sensitivity_json
        from runtime.quality.pipelines import DEFAULT_PROMPT, FrameSettings

        options = CalibrateOptions(
            family=family, steps=steps, pipeline=pipeline, seeds=seed_list, prompts=prompts or (DEFAULT_PROMPT,),
            backend=backend,
            numerics=get_format(dtype).record({key: value for key, value in given.items() if value is not None}),
            frames=FrameSettings(height=height, width=width, num_frames=num_frames, guidance_scale=guidance_scale),
            progress=not no_progress,
        )
        data = calibrate(options)
        unmeasured = _unmeasured_note(family, data["cells"])
    write_text_atomically(output, sensitivity_json(data))
    cells = data["cells"]
    worst = min(cells, key=lambda c: c["cos_sim"]["worst"]) if cells else None
    where = (f"; most sensitive: {worst['component']}/{worst['kind']} step {worst['step']} layer {worst['layer']} "
             f"(worst cos-sim {worst['cos_sim']['worst']:.6f})") if worst else ""
    click.echo(f"wrote {output}: {len(cells)} cells from {data['measured']['samples']} sample(s) in "
               f"{data['measured']['elapsed_s']:.1f} s{where}\n{unmeasured}"
               f"next: qcompile suggest {output} --min-cos 0.999 -o recipe.yaml")


def _unmeasured_note(family_name: str, cells: list[dict]) -> str:
    """A line per attention kind no call of which was measured: shadow mode measures only the calls the quantized
    kernels can take (runtime/dispatch.py), so a kind whose every call carries a mask that is not padding (or
    dropout, a causal flag) has no cell, runs native whatever a plan says, and is left out of a suggested recipe."""
    measured = {cell["kind"] for cell in cells}
    return "".join(
        f"not measured: {kind}: no call of it could run quantized (a mask that is not padding, dropout or a causal "
        "flag): those calls run native whatever a plan says, and a suggested recipe leaves the kind out of its scope\n"
        for kind in get_family(family_name).kinds if kind not in measured)
