"""`qcompile report PLAN --pipeline tiny|PATH -o OUTDIR`: per-call error of the quantized (FP8, MX or INT8) calls,
end-to-end PSNR/SSIM, quantized share and an estimated attention-time saving, as JSON, markdown and PNG heatmaps. See docs/report-and-calibrate.md.
"""

from __future__ import annotations

from pathlib import Path

import click

from qcompiler.cli.common import load_plan_or_recipe, needs_runtime_extra
from qcompiler.cli.run_options import check_frame_sizes, pipeline_options
from qcompiler.formats import DEFAULT_FORMAT, quantized_name, speed_factor

# FP8's measured speed factor (qcompiler/formats/fp8_e4m3_per_block.py), the default for FP8 plans.
DEFAULT_THROUGHPUT_RATIO = speed_factor(DEFAULT_FORMAT)


@click.command(name="report")
@click.argument("plan_path", metavar="PLAN")
@click.option("-o", "--output", "outdir", required=True, type=click.Path(file_okay=False),
              help="Folder for report.json, report.md and the PNG heatmaps (created if missing).")
@click.option("--seed", type=int, default=0, show_default=True, help="Generator seed of both runs.")
@click.option("--prompt", default="a red cube on a table", show_default=True, help="Prompt of both runs.")
@click.option("--throughput-ratio", type=click.FloatRange(min=0.0, min_open=True), default=None,
              help="Quantized attention time / BF16 attention time on the target, for the ESTIMATED saving. Default: "
                   f"the plan dtype's measured factor in qcompiler/formats/ ({DEFAULT_THROUGHPUT_RATIO} for "
                   "fp8_e4m3_per_block, from the seed's NPU measurement 6.81 s -> 5.43 s); MX and INT8 have none "
                   "measured, so their reports give no estimate unless this is set.")
@pipeline_options
def command(plan_path: str, outdir: str, seed: int, prompt: str, throughput_ratio: float | None, pipeline: str, backend: str,
            height: int | None, width: int | None, num_frames: int | None, guidance_scale: float,
            no_progress: bool) -> None:
    """Run PLAN against native (same seed) and write what it costs in quality and what it should save.

    PLAN is a plan.json, or a recipe (.yaml), compiled on the fly (for --pipeline tiny: as its tiny variant).
    """
    plan = load_plan_or_recipe(plan_path, variant="tiny" if pipeline == "tiny" else None)
    check_frame_sizes(plan.family_name, height, width, num_frames)
    with needs_runtime_extra("report"):
        from runtime.quality.pipelines import FrameSettings
        from runtime.quality.report import ReportOptions, build_report, write_report

        options = ReportOptions(
            pipeline=pipeline, seed=seed, prompt=prompt, backend=backend, throughput_ratio=throughput_ratio,
            frames=FrameSettings(height=height, width=width, num_frames=num_frames, guidance_scale=guidance_scale),
            progress=not no_progress,
        )
        report = write_report(build_report(plan, options), plan, Path(outdir))
    summary = report["summary"]
    e2e = summary["end_to_end"]
    errors = summary["per_call_error"]
    quantized = quantized_name(plan.data["dtype"])
    worst = f"worst {quantized} call cos-sim {errors['cos_sim']['worst']:.6f}" if errors else f"no {quantized} call"
    estimate = summary["estimate"]
    saved = (f"estimated attention time saved on the target: {estimate['attention_time_saved']:.1%} (estimate)"
             if estimate["attention_time_saved"] is not None
             else f"no time-saved estimate: {estimate['throughput_ratio_source']} (give --throughput-ratio)")
    if e2e["identical"]:
        psnr = "frames bit-identical to native"
    elif e2e["psnr_db"] >= e2e["psnr_cap_db"]:
        psnr = f"PSNR >= {e2e['psnr_cap_db']:.0f} dB (capped; frames differ by at most {e2e['max_abs_diff']:.1e})"
    else:
        psnr = f"PSNR {e2e['psnr_db']:.2f} dB, SSIM {e2e['ssim']:.4f}"
    click.echo(
        f"wrote {Path(outdir) / 'report.json'}, report.md and {len(report['files']['heatmaps'])} PNGs: "
        f"{summary['calls']['share']:.1%} of attention calls on {quantized}; {worst}; {psnr}; {saved}"
    )
