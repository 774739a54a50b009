"""`qcompile show PLAN`: a terminal heatmap of each table and what share of attention runs quantized (FP8, or
the plan's MX / INT8 format)."""

from __future__ import annotations

import click

from qcompiler.cli.common import load_plan_or_recipe
from qcompiler.formats import FORMATS, dtype_label, quantized_name
from qcompiler.plan.format import Plan
from qcompiler.stats import plan_cost

QUANTIZED_CELL = "#"
NATIVE_CELL = "."
UNSERVED_MARK = " "  # step served by another expert (per expert_schedule)


def cell_word(plan: Plan) -> str:
    """What a row's count of '#' cells is called: fp8 for FP8 plans, quantized for MX and INT8 ones."""
    spec = FORMATS.get(plan.dtype)
    return spec.cell_word if spec else "quantized"


def render_table(plan: Plan, component: str, kind: str) -> list[str]:
    table = plan.table(component, kind)
    word = cell_word(plan)
    num_layers = len(table[0])
    tens = "".join(str(layer // 10) if layer % 10 == 0 else " " for layer in range(num_layers))
    ones = "".join(str(layer % 10) for layer in range(num_layers))
    lines = [f"  layer      {tens}", f"             {ones}"]
    for step, row in enumerate(table):
        serving = plan.expert_schedule[step] == component
        cells = "".join(QUANTIZED_CELL if cell else NATIVE_CELL for cell in row)
        note = "" if serving else "  (served by " + plan.expert_schedule[step] + ")"
        lines.append(f"  step {step:>4}  {cells}  {sum(row):>3}/{num_layers} {word}{note}")
    return lines


@click.command(name="show")
@click.argument("plan_path", metavar="PLAN")
@click.option("--component", help="Show only this component.")
@click.option("--kind", help="Show only this attention kind (the plan's family declares them, e.g. self, cross).")
def command(plan_path: str, component: str | None, kind: str | None) -> None:
    """Print PLAN's tables as heatmaps (# = quantized, . = native) and its quantized share of calls and FLOPs."""
    plan = load_plan_or_recipe(plan_path)
    if component is not None and component not in plan.component_names:
        raise click.BadParameter(f"{component!r} is not in this plan; components: {', '.join(plan.component_names)}",
                                 param_hint="--component")
    if kind is not None and kind not in plan.family.kinds:
        raise click.BadParameter(f"{kind!r} is not an attention kind of this plan; kinds: {', '.join(plan.family.kinds)}",
                                 param_hint="--kind")
    variant = f" ({plan.variant} variant)" if plan.variant else ""
    click.echo(f"plan for {plan.family_name}{variant}: {plan.num_inference_steps} steps, {dtype_label(plan.dtype)}, "
               f"fallback={plan.fallback}, rotation={'on' if plan.numerics['hadamard_rotation'] else 'off'}"
               f" (seed {plan.numerics['rotation_seed']}), sha256 {plan.content_hash[:12]}")
    spec = FORMATS.get(plan.dtype)
    summary = spec.describe_numerics(plan.numerics) if spec else None
    if summary:  # a format's own numerics and where it runs (qcompiler/formats/<dtype>.py numerics_summary)
        click.echo(summary)
    click.echo(f"expert schedule: {', '.join(f'{i}:{c}' for i, c in enumerate(plan.expert_schedule))}")
    family = plan.family
    for name in plan.component_names:
        if component and name != component:
            continue
        lists = family.component(name).block_list_names
        for block_list in lists:
            # a component with one block list reads as before: "transformer / self-attention"
            where = f"{name} / {block_list}" if len(lists) > 1 else name
            for attention_kind in family.kinds_in((block_list,)):
                if kind and attention_kind != kind:
                    continue
                click.echo(f"\n{where} / {attention_kind}-attention  ({QUANTIZED_CELL} {cell_word(plan)}, {NATIVE_CELL} native)")
                for line in render_table(plan, name, attention_kind):
                    click.echo(line)
    click.echo("\nrules (last matching rule wins):")
    click.echo(f"  default: {plan.data['recipe']['default']}")
    for rule in plan.data["rules"]:
        click.echo(f"  {rule['name']}: -> {rule['precision']}, changed {rule['cells_changed']} cell(s)")
    cost = plan_cost(plan)
    click.echo(
        f"\n{quantized_name(plan.data['dtype'])} share (cells of the serving expert per step, CFG counted): {cost.calls_fp8}/{cost.calls_total} "
        f"attention calls = {cost.call_share:.1%}; attention FLOPs (4*B*H*Sq*Skv*D at {cost.shapes_description}) "
        f"= {cost.flop_share:.1%} of {cost.flops_total / 1e15:.1f} PFLOP"
    )
