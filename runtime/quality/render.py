"""Pictures and markdown of a report: step x layer heatmaps drawn with Pillow, and a summary page.

Both heatmaps share one layout (`heatmap_size`): one row per denoising step (step 0 on top), one column per
layer, a title above, step labels on the left, layer ticks every 5 layers below, a legend at the bottom.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw, ImageFont

from qcompiler.formats import DEFAULT_FORMAT, dtype_label, quantized_name

CELL = 14  # pixels per cell: 40 layers -> 560 px, readable in a markdown viewer without zooming
LEFT = 70  # room for "step 39" plus the expert name initial
TOP = 34
BOTTOM = 76  # layer ticks + two legend rows
RIGHT = 12

FP8_COLOR = (231, 111, 81)
NATIVE_COLOR = (42, 157, 143)
NOT_RUN_COLOR = (235, 235, 235)
TEXT_COLOR = (20, 20, 20)

# Error colour scale: log10(1 - cos_sim) from 1e-6 (lossless, pale) to 1 (cos-sim 0 or worse, near black), one
# colour stop per decade so every decade reads apart (MXFP4 cells reach 1e-1 and beyond on short sequences).
ERROR_LOG_RANGE = (-6.0, 0.0)
ERROR_STOPS = ((255, 247, 210), (254, 224, 139), (253, 174, 97), (244, 109, 67), (215, 48, 39), (140, 10, 40),
               (50, 0, 60))
ERROR_SWATCHES = ((1.0, "<=1e-6"), (1 - 1e-5, "1e-5"), (1 - 1e-4, "1e-4"), (1 - 1e-3, "1e-3"), (1 - 1e-2, "1e-2"),
                  (1 - 1e-1, "0.1"), (0.0, ">=1"))


def _pale(color: tuple[int, int, int]) -> tuple[int, int, int]:
    return tuple(int(c + (255 - c) * 0.7) for c in color)  # type: ignore[return-value]


def heatmap_size(num_steps: int, num_layers: int) -> tuple[int, int]:
    """(width, height) in pixels of every heatmap of a steps x layers table."""
    return LEFT + num_layers * CELL + RIGHT, TOP + num_steps * CELL + BOTTOM


def _font(size: int = 12) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1 has only the fixed bitmap font
        return ImageFont.load_default()


def _frame(title: str, num_steps: int, num_layers: int, schedule: Sequence[str] | None) -> tuple[Image.Image, ImageDraw.ImageDraw]:
    image = Image.new("RGB", heatmap_size(num_steps, num_layers), "white")
    draw = ImageDraw.Draw(image)
    font = _font()
    draw.text((6, 8), title, fill=TEXT_COLOR, font=_font(13))
    for step in range(num_steps):
        label = f"step {step}"
        draw.text((6, TOP + step * CELL), label, fill=TEXT_COLOR, font=_font(10))
    for layer in range(0, num_layers, 5):
        draw.text((LEFT + layer * CELL, TOP + num_steps * CELL + 2), str(layer), fill=TEXT_COLOR, font=_font(10))
    draw.text((LEFT + num_layers * CELL - 40, TOP + num_steps * CELL + 2), "layer", fill=TEXT_COLOR, font=font)
    return image, draw


def _cell_box(step: int, layer: int) -> tuple[int, int, int, int]:
    x0, y0 = LEFT + layer * CELL, TOP + step * CELL
    return x0, y0, x0 + CELL - 1, y0 + CELL - 1


def _legend(draw: ImageDraw.ImageDraw, num_steps: int, items: Sequence[tuple[tuple[int, int, int], str]],
            row: int = 0, caption: str = "") -> None:
    x = LEFT
    y = TOP + num_steps * CELL + 22 + 18 * row
    font = _font(11)
    if caption:
        draw.text((6, y - 1), caption, fill=TEXT_COLOR, font=font)
    for color, label in items:
        draw.rectangle((x, y, x + 11, y + 11), fill=color, outline=(120, 120, 120))
        draw.text((x + 16, y - 1), label, fill=TEXT_COLOR, font=font)
        x += 22 + int(draw.textlength(label, font=font))


def plan_legend(dtype: str) -> list[list[tuple[tuple[int, int, int], str]]]:
    """The plan heatmap's legend rows: (colour, words) per entry, naming the plan's own format."""
    quantized = quantized_name(dtype)
    return [[(FP8_COLOR, quantized), (NATIVE_COLOR, "native")],
            [(_pale(FP8_COLOR), f"{quantized}, other expert (not run)"),
             (_pale(NATIVE_COLOR), "native, other expert (not run)")]]


def draw_plan_heatmap(
    path: Path, title: str, table: Sequence[Sequence[bool]], served: Sequence[bool] | None = None,
    dtype: str = DEFAULT_FORMAT,
) -> None:
    """The plan's table: quantized (in `dtype`) or native per cell; steps this component did not run are pale."""
    num_steps, num_layers = len(table), len(table[0])
    image, draw = _frame(title, num_steps, num_layers, None)
    for step, row in enumerate(table):
        ran = served is None or served[step]
        for layer, fp8 in enumerate(row):
            color = FP8_COLOR if fp8 else NATIVE_COLOR
            if not ran:  # the table still holds a value there; pale so the eye reads what actually ran
                color = _pale(color)
            draw.rectangle(_cell_box(step, layer), fill=color)
    for row, entries in enumerate(plan_legend(dtype)):
        _legend(draw, num_steps, entries, row=row)
    image.save(path, format="PNG")


def error_color(cos_sim: float) -> tuple[int, int, int]:
    """Pale yellow (1 - cos_sim <= 1e-6) through orange and red to near black (>= 1), one stop per decade."""
    low, high = ERROR_LOG_RANGE
    value = math.log10(min(max(1.0 - cos_sim, 10**low), 10**high))
    t = (value - low) / (high - low) * (len(ERROR_STOPS) - 1)
    index = min(int(t), len(ERROR_STOPS) - 2)
    start, end, frac = ERROR_STOPS[index], ERROR_STOPS[index + 1], t - index
    return tuple(int(round(a + (b - a) * frac)) for a, b in zip(start, end, strict=True))  # type: ignore[return-value]


def draw_error_heatmap(
    path: Path, title: str, num_steps: int, num_layers: int, worst_cos: Mapping[tuple[int, int], float | None]
) -> None:
    """Worst per-call cos-sim error per cell: colour for FP8 cells, the native colour for native cells, grey for
    cells that never ran. `worst_cos[(step, layer)]` is None for a native cell."""
    image, draw = _frame(title, num_steps, num_layers, None)
    for step in range(num_steps):
        for layer in range(num_layers):
            if (step, layer) not in worst_cos:
                color = NOT_RUN_COLOR
            else:
                value = worst_cos[(step, layer)]
                color = NATIVE_COLOR if value is None else error_color(value)
            draw.rectangle(_cell_box(step, layer), fill=color)
    _legend(draw, num_steps, [(error_color(cos), label) for cos, label in ERROR_SWATCHES], caption="1 - cos")
    _legend(draw, num_steps, [(NATIVE_COLOR, "native"), (NOT_RUN_COLOR, "not run (other expert)")], row=1)
    image.save(path, format="PNG")


def render_markdown(report: Mapping[str, Any]) -> str:
    """A human summary of a report dict (the JSON written beside it)."""
    summary = report["summary"]
    measured = report["measured"]
    plan = report["plan"]
    e2e = summary["end_to_end"]
    estimate = summary["estimate"]
    errors = summary["per_call_error"]
    if e2e["identical"]:
        psnr = f"{e2e['psnr_cap_db']:.0f} dB (the cap: frames are bit-identical)"
    elif e2e["psnr_db"] >= e2e["psnr_cap_db"]:
        psnr = f">= {e2e['psnr_cap_db']:.0f} dB (capped; largest pixel difference {e2e['max_abs_diff']:.1e})"
    else:
        psnr = f"{e2e['psnr_db']:.2f} dB"
    run_as = plan["run_as_variant"]
    quantized = quantized_name(plan.get("dtype", DEFAULT_FORMAT))
    lines = [
        f"# qcompile report: {plan['recipe']} on {plan['family']}{' (' + run_as + ' variant)' if run_as else ''}",
        "",
    ]
    if run_as != plan["variant"]:
        compiled_for = f"the `{plan['variant']}` variant" if plan["variant"] else "the real model"
        lines += [f"The plan was compiled for {compiled_for}; its tables ran on the `{run_as}` variant "
                  "(same components, layer counts and attention kinds).", ""]
    lines += [
        f"Pipeline `{measured['pipeline']}`, {plan['num_inference_steps']} steps, "
        f"{dtype_label(plan.get('dtype', DEFAULT_FORMAT))}, seed {measured['seed']}, "
        f"{measured['width']}x{measured['height']}, {_count(measured['num_frames'], 'frame')}, {quantized} backend "
        f"`{measured['backend']}` on `{measured['device']}`. Native run {measured['elapsed_s']['native']:.2f} s, "
        f"plan run {measured['elapsed_s']['plan']:.2f} s (CPU emulation: not a speed measurement).",
        "",
        _threads_line(measured),
        "",
        "## Coverage",
        "",
        f"| | {quantized} | total | share |",
        "|---|---:|---:|---:|",
        f"| attention calls | {summary['calls']['fp8']} | {summary['calls']['total']} | {summary['calls']['share']:.1%} |",
        f"| attention FLOPs (shapes seen) | {summary['flops']['fp8']:.3g} | {summary['flops']['total']:.3g} | "
        f"{summary['flops']['share']:.1%} |",
        f"| attention FLOPs (target shapes, estimate) | | | {estimate['target_flop_share']:.1%} |",
        "",
        f"## Error of {quantized} calls against native on the same inputs",
        "",
    ]
    if errors is None:
        lines.append(f"No call ran {'in FP8' if quantized == 'FP8' else quantized}.")
    else:
        lines += [
            "| metric | mean | worst |",
            "|---|---:|---:|",
            f"| cosine similarity | {errors['cos_sim']['mean']:.6f} | {errors['cos_sim']['worst']:.6f} |",
            f"| relative L1 | {errors['rel_l1']['mean']:.4g} | {errors['rel_l1']['worst']:.4g} |",
            f"| RMSE | {errors['rmse']['mean']:.4g} | {errors['rmse']['worst']:.4g} |",
            "",
            "Worst steps: " + ", ".join(f"step {w['step']} (cos-sim {w['cos_sim_worst']:.6f})" for w in summary["worst_steps"]),
            "",
            "Worst layers: " + ", ".join(
                f"{w['component']}/{w['kind']} layer {w['layer']} (cos-sim {w['cos_sim_worst']:.6f})"
                for w in summary["worst_layers"]
            ),
        ]
    for note in summary.get("notes", []):
        lines += ["", f"**Note.** {note}"]
    lines += [
        "",
        "## End to end (decoded frames, plan vs native, same seed)",
        "",
        f"PSNR {psnr}, SSIM {e2e['ssim']:.4f} over {_count(e2e['frames'], 'frame')}.",
        "",
        "## Attention time saved on the target: an estimate, not a measurement",
        "",
        (f"{estimate['attention_time_saved']:.1%} of attention time, assuming {quantized} attention takes "
         f"{estimate['throughput_ratio']:g}x the time of native attention per FLOP "
         f"({estimate['throughput_ratio_source']}) and attention time proportional to FLOPs at the family's "
         f"reference shapes ({estimate['target_shapes']}).") if estimate["attention_time_saved"] is not None else
        (f"No estimate: {estimate['throughput_ratio_source']} (qcompiler/formats/); pass --throughput-ratio R "
         f"from a measurement on the target. {estimate['target_flop_share']:.1%} of attention FLOPs run {quantized} "
         f"at the family's reference shapes ({estimate['target_shapes']})."),
        "",
        "## Pictures",
        "",
    ]
    for item in report["files"]["heatmaps"]:
        lines.append(f"![{item['component']} {item['kind']} {item['what']}]({item['file']})")
    omitted = report["files"].get("omitted", [])
    if omitted:
        lines.append("")
    for item in omitted:
        lines.append(f"- {item['component']} / {item['kind']}: no {' or '.join(item['what'])} picture, "
                     f"{item['reason']}.")
    lines.append("")
    return "\n".join(lines)


def _threads_line(measured: Mapping[str, Any]) -> str:
    versions = measured.get("versions", {})
    software = ", ".join(f"{name} {versions[name]}" for name in ("torch", "diffusers") if name in versions)
    threads = measured.get("threads")
    if threads is None:
        return f"Software: {software}; thread count not recorded (a report from before it was)."
    return (f"Software: {software}; torch threads: {threads['intra_op']} intra-op, {threads['inter_op']} inter-op. "
            "CPU results depend on the thread count (the reduction order changes), so compare reports made with "
            "the same count (`OMP_NUM_THREADS=1` gives the most reproducible runs).")


def _count(number: int, noun: str) -> str:
    """"9 frames", "1 frame" (an image model's report)."""
    return f"{number} {noun}{'' if number == 1 else 's'}"
