"""The body of `qcompile RECIPE -o plan.json`, free of click so the common call can skip importing it.

qcompiler.cli.main.main takes a fast path here when the arguments are exactly the simple compile form; anything
else (help, other commands, a malformed option) goes through click, which owns all usage errors.
"""

from __future__ import annotations

import sys

from qcompiler.cli.diagnostics_format import format_diagnostics
from qcompiler.compile.compiler import compile_path
from qcompiler.plan.format import write_plan
from qcompiler.stats import plan_cost

_VALUE_OPTIONS = {"-o": "output", "--output": "output", "--steps": "steps", "--variant": "variant", "--format": "fmt"}
_FLAG_OPTIONS = {"--strict": "strict"}
_FORMATS = ("text", "json", "github")
MAX_STEPS = 1000


def parse_simple_compile_args(args: list[str], subcommands: tuple[str, ...]) -> dict | None:
    """Options of `qcompile RECIPE [-o OUT] [--steps N] [--variant V] [--strict] [--format F]`, or None when
    the arguments are anything else (then click parses them and reports any mistake)."""
    options: dict = {"recipe": None, "output": "-", "steps": None, "variant": None, "strict": False, "fmt": "text"}
    index = 0
    while index < len(args):
        arg = args[index]
        if arg in _VALUE_OPTIONS and index + 1 < len(args) and not args[index + 1].startswith("-"):
            options[_VALUE_OPTIONS[arg]] = args[index + 1]
            index += 2
        elif arg in _FLAG_OPTIONS:
            options[_FLAG_OPTIONS[arg]] = True
            index += 1
        elif not arg.startswith("-") and options["recipe"] is None and (index > 0 or arg not in subcommands):
            options["recipe"] = arg
            index += 1
        else:
            return None
    if options["recipe"] is None or options["fmt"] not in _FORMATS:
        return None
    if options["steps"] is not None:
        if not options["steps"].isdigit() or not 1 <= int(options["steps"]) <= MAX_STEPS:
            return None
        options["steps"] = int(options["steps"])
    return options


def run_compile(recipe: str, output: str, steps: int | None, variant: str | None, strict: bool, fmt: str) -> int:
    """Compile `recipe`, print findings to stderr, write the plan (atomically) or print it. Returns the exit code."""
    result = compile_path(recipe, steps=steps, variant=variant)
    if result.diagnostics:
        sys.stderr.write(format_diagnostics(result.diagnostics, fmt))
    if result.errors or result.plan is None or (strict and result.warnings):
        sys.stderr.write(f"error: {recipe}: not compiled ({len(result.errors)} error(s), {len(result.warnings)} "
                         f"warning(s){', --strict' if strict else ''})\n")
        return 1
    plan = result.plan
    if output == "-":
        sys.stdout.write(plan.to_json())
        return 0
    try:
        write_plan(plan, output)
    except OSError as exc:
        sys.stderr.write(f"error: cannot write {output}: {exc.strerror}\n")
        return 1
    cost = plan_cost(plan)
    sys.stderr.write(
        f"wrote {output}: {plan.family_name}{' (' + plan.variant + ')' if plan.variant else ''}, "
        f"{plan.num_inference_steps} steps, {cost.call_share:.1%} of attention calls and {cost.flop_share:.1%} "
        f"of attention FLOPs on FP8; content sha256 {plan.content_hash[:12]}\n"
    )
    return 0
