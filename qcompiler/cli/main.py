"""The `qcompile` command line. `qcompile RECIPE -o plan.json` compiles; subcommands do the rest.

Commands live one per module in qcompiler/cli/ and are registered from
qcompiler.cli.COMMAND_MODULES, each module exposing `command` (a click.Command). The console script
enters through qcompiler.cli.entry, which runs the plain compile form without importing click.
Exit status: 0 success, 1 findings or a failed check, 2 usage errors.
"""

from __future__ import annotations

import importlib
import sys

import click

from qcompiler import __version__
from qcompiler.cli import COMMAND_MODULES
from qcompiler.errors import QcompileError

DEFAULT_COMMAND = "compile"


class _DefaultCommandGroup(click.Group):
    """Subcommands imported on first use (startup stays fast); a first argument that is not a subcommand goes
    to the default `compile` command, so `qcompile RECIPE -o plan.json` works."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMAND_MODULES)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name not in COMMAND_MODULES:
            return None
        return importlib.import_module(f"qcompiler.cli.{name}").command

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if args and not args[0].startswith("-") and args[0] not in COMMAND_MODULES:
            args = [DEFAULT_COMMAND, *args]
        elif args and args[0] in ("-o", "--output", "--steps", "--variant", "--strict"):
            args = [DEFAULT_COMMAND, *args]
        return super().parse_args(ctx, args)

    def format_usage(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        formatter.write_usage("qcompile", "RECIPE -o plan.json [--steps N] [--variant tiny]\n       qcompile COMMAND [ARGS]...")


@click.group(cls=_DefaultCommandGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="qcompile")
def cli() -> None:
    """Compile FP8-attention recipes into verified per-(step, layer) plans.

    \b
      qcompile recipes/wan22_i2v.yaml -o plan.json   compile a recipe
      qcompile lint recipes/                          lint recipes (CI)
      qcompile show plan.json                         heatmap and FP8 share
    """


def main() -> None:
    try:
        cli.main(prog_name="qcompile", standalone_mode=True)
    except QcompileError as exc:  # commands raise these for bad input; never show a traceback for them
        click.echo(f"error: {exc}", err=True)
        sys.exit(1)


if __name__ == "__main__":
    main()
