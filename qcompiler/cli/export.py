"""`qcompile export --to vllm-omni|mindiesd|xdit PLAN`: a plan as the settings another engine already reads."""

from __future__ import annotations

import click

from qcompiler.cli.common import fail, load_plan_or_recipe
from qcompiler.targets.cells import PINNED, ROUTINGS

TARGETS = ("vllm-omni", "mindiesd", "xdit")
FORMATS = {
    "vllm-omni": ("flags", "yaml", "both"),
    "mindiesd": ("python", "json", "both"),
    "xdit": ("flags",),
}


@click.command(name="export")
@click.argument("plan_path", metavar="PLAN")
@click.option("--to", "target", type=click.Choice(TARGETS), required=True, help="Export target.")
@click.option("--conservative", is_flag=True,
              help="If the plan is not expressible, emit the largest setting that never quantizes a cell the "
                   "plan keeps native, and report how many quantized cells it gives up.")
@click.option("--routing", type=click.Choice(ROUTINGS), default=PINNED, show_default=True,
              help="pinned: write/state the flow_shift and boundary_ratio the plan's expert schedule assumes "
                   "(xdit: --flow_shift only when the result depends on routing); any: assume nothing, every row "
                   "of every expert is reachable.")
@click.option("--format", "output_format", default=None,
              help="vllm-omni: flags|yaml|both (default both); mindiesd: python|json|both (default both); "
                   "xdit: flags.")
@click.option("--use-cfg-parallel", is_flag=True, help="xdit: the run uses --use_cfg_parallel (one entry per step).")
@click.option("--no-cfg", is_flag=True, help="xdit: the run uses no classifier-free guidance (guidance_scale <= 1).")
@click.option("--quantized-backend", default=None, help="xdit: the quantized backend name (default by dtype: "
                                                         "FLASH_3_FP8, AITER_MXFP8, AITER_MXFP4).")
@click.option("--native-backend", default="FLASH_3", show_default=True, help="xdit: the full-precision backend name.")
def command(plan_path: str, target: str, conservative: bool, routing: str, output_format: str | None,
            use_cfg_parallel: bool, no_cfg: bool, quantized_backend: str | None, native_backend: str) -> None:
    """Print PLAN (a plan.json, or a recipe compiled on the fly) as vllm-omni, MindIE-SD or xDiT settings.

    \b
    Plans the target cannot express exactly are refused with the cells named, unless --conservative.
    Settings go to stdout; summaries and notes go to stderr (or into YAML/Python comments and the JSON).
    """
    formats = FORMATS[target]
    chosen = output_format or formats[-1]
    if chosen not in formats:
        fail(f"--format {chosen} is not a format of --to {target}; choose one of {', '.join(formats)}", code=2)
    if target != "xdit" and (use_cfg_parallel or no_cfg or quantized_backend or native_backend != "FLASH_3"):
        fail("--use-cfg-parallel, --no-cfg, --quantized-backend and --native-backend are options of --to xdit",
             code=2)
    plan = load_plan_or_recipe(plan_path)
    try:
        if target == "vllm-omni":
            _vllm_omni(plan, conservative, routing, chosen)
        elif target == "mindiesd":
            _mindiesd(plan, conservative, routing, chosen)
        else:
            _xdit(plan, conservative, routing, use_cfg_parallel, not no_cfg, quantized_backend, native_backend)
    except ValueError as exc:  # QcompileError (not expressible, unsupported dtype) is handled by cli.main
        fail(str(exc))


def _vllm_omni(plan, conservative: bool, routing: str, output_format: str) -> None:
    from qcompiler.targets.vllm_omni import export_vllm_omni

    settings = export_vllm_omni(plan, conservative=conservative, routing=routing)
    if output_format in ("flags", "both"):
        if output_format == "both":
            click.echo("# vllm-omni 0.30 CLI flags")
        click.echo(settings.to_flags())
    if output_format in ("yaml", "both"):
        if output_format == "both":
            click.echo("\n# vllm-omni 0.30 stage config (merge into the diffusion stage's engine_args)")
        click.echo(settings.to_yaml(), nl=False)
    if output_format == "flags":
        # The YAML carries the summary as comments; the flags line cannot, so say it on stderr.
        for line in settings.summary_lines():
            click.echo(line, err=True)


def _mindiesd(plan, conservative: bool, routing: str, output_format: str) -> None:
    from qcompiler.targets.mindiesd import export_mindiesd

    settings = export_mindiesd(plan, conservative=conservative, routing=routing)
    if output_format in ("python", "both"):
        click.echo(settings.to_python(), nl=False)
    if output_format == "both":
        click.echo("\n# --- the same settings as JSON ---")
    if output_format in ("json", "both"):
        click.echo(settings.to_json(), nl=False)


def _xdit(plan, conservative: bool, routing: str, use_cfg_parallel: bool, cfg: bool, quantized_backend,
          native_backend: str) -> None:
    from qcompiler.targets.xdit import export_xdit

    settings = export_xdit(plan, conservative=conservative, routing=routing, cfg=cfg,
                           use_cfg_parallel=use_cfg_parallel, quantized_backend=quantized_backend,
                           native_backend=native_backend)
    click.echo(settings.to_flags())
    for line in settings.summary_lines():
        click.echo(line, err=True)
