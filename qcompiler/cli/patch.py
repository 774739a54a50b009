"""`qcompile patch PIPELINE_DIR PLAN [--remove]`: embed a plan in (or take it out of) a saved diffusers pipeline."""

from __future__ import annotations

import click

from qcompiler.targets.pipeline_dir import CONFIG_NAME, PLAN_KEY, patch_pipeline_dir, remove_patch


@click.command(name="patch")
@click.argument("pipeline_dir", metavar="PIPELINE_DIR", type=click.Path(file_okay=False))
@click.argument("plan_path", metavar="PLAN", required=False)
@click.option("--remove", is_flag=True, help="Take the embedded plan out again (restores the original config.json).")
def command(pipeline_dir: str, plan_path: str | None, remove: bool) -> None:
    """Write PLAN into each transformer's config.json of the pipeline saved in PIPELINE_DIR.

    \b
    The plan goes under the private key _qcompile_plan; runtime.load(pipe) with no plan then uses it.
    The original config.json is kept as config.json.qcompile-backup; --remove restores it byte for byte.
    """
    if remove == (plan_path is not None):
        raise click.UsageError("give PLAN to patch, or --remove without PLAN to undo a patch")
    if remove:
        removed = remove_patch(pipeline_dir)
        for name in removed.restored:
            click.echo(f"{name}/{CONFIG_NAME}: restored the original from its backup")
        for name in removed.key_removed:
            click.echo(f"{name}/{CONFIG_NAME}: changed since patching (or re-saved); removed only {PLAN_KEY}")
        return
    result = patch_pipeline_dir(pipeline_dir, plan_path)
    for name in result.patched:
        click.echo(f"{name}/{CONFIG_NAME}: embedded plan {result.plan_sha256[:12]} "
                   f"(original kept as {CONFIG_NAME}.qcompile-backup)")
    for name in result.already:
        click.echo(f"{name}/{CONFIG_NAME}: already carries plan {result.plan_sha256[:12]}; unchanged")
    click.echo(f"runtime.load(pipe) with no plan now uses it; undo with: qcompile patch {pipeline_dir} --remove")
