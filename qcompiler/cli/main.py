"""The `qcompile` command line (the console script's entry point). `qcompile RECIPE -o plan.json` compiles;
subcommands do the rest.

Commands live one per module in qcompiler/cli/ and are registered from qcompiler.cli.COMMAND_MODULES, each
module exposing `command` (a click.Command), imported on first use. Errors are handled here, once: a
QcompileError (bad input: recipe, plan, family, sensitivity file) or an OSError (a file that cannot be read or
written) prints `error: ...` and exits 1, never a traceback.
Exit status: 0 success, 1 findings, bad input or a failed check, 2 usage errors (click).
"""

from __future__ import annotations

import importlib

import click

from qcompiler import __version__
from qcompiler.cli import COMMAND_MODULES
from qcompiler.errors import QcompileError

DEFAULT_COMMAND = "compile"


def _os_error_message(exc: OSError) -> str:
    where = f"{exc.filename}: " if exc.filename else ""
    return f"{where}{exc.strerror or exc}"


class _QcompileGroup(click.Group):
    """Subcommands imported on first use; a first argument that is not a subcommand (a recipe path, or an
    option of the compile form) goes to the default `compile` command, so `qcompile RECIPE -o plan.json` works."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMAND_MODULES)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name not in COMMAND_MODULES:
            return None
        return importlib.import_module(f"qcompiler.cli.{name}").command

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if args and args[0] not in COMMAND_MODULES and args[0] not in ("-h", "--help", "--version"):
            args = [DEFAULT_COMMAND, *args]
        return super().parse_args(ctx, args)

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except QcompileError as exc:  # bad input, reported by the library with where and how to fix it
            click.echo(f"error: {exc}", err=True)
            ctx.exit(1)
        except OSError as exc:  # a path we could not read or write
            click.echo(f"error: {_os_error_message(exc)}", err=True)
            ctx.exit(1)

    def format_usage(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        formatter.write_usage("qcompile", "RECIPE -o plan.json [--steps N] [--variant tiny]\n       qcompile COMMAND [ARGS]...")


@click.group(cls=_QcompileGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="qcompile")
def cli() -> None:
    """Compile FP8-attention recipes into verified per-(step, layer) plans.

    \b
      qcompile recipes/wan22_i2v.yaml -o plan.json   compile a recipe
      qcompile lint recipes/                          lint recipes (CI)
      qcompile show plan.json                         heatmap and FP8 share
    """


def main() -> None:
    cli.main(prog_name="qcompile")


if __name__ == "__main__":
    main()
