"""The `qcompile` command line (the console script's entry point). `qcompile RECIPE -o plan.json` compiles;
subcommands do the rest.

Commands live one per module in qcompiler/cli/ and are registered from qcompiler.cli.COMMAND_MODULES, each
module exposing `command` (a click.Command), imported on first use. Errors are handled here, once: a
QcompileError (bad input: recipe, plan, family, sensitivity file) or an OSError (a file that cannot be read or
written) prints `error: ...` and exits 1, never a traceback. A closed stdout (`qcompile show plan.json | head`)
ends the command quietly with exit 1, as click and the Python docs do it (SIGPIPE, "Note on SIGPIPE").
Exit status: 0 success, 1 findings, bad input or a failed check, 2 usage errors (click).
"""

from __future__ import annotations

import difflib
import importlib
import os
import sys
from pathlib import Path

import click

from qcompiler import __version__
from qcompiler.cli import COMMAND_MODULES
from qcompiler.errors import QcompileError

DEFAULT_COMMAND = "compile"
RECIPE_SUFFIXES = (".yaml", ".yml")


def _os_error_message(exc: OSError) -> str:
    where = f"{exc.filename}: " if exc.filename else ""
    return f"{where}{exc.strerror or exc}"


class _QcompileGroup(click.Group):
    """Subcommands imported on first use; a first argument that is not a subcommand (a recipe path, or an
    option of the compile form) goes to the default `compile` command, so `qcompile RECIPE -o plan.json` works.
    A first word that is neither a command nor a recipe (`qcompile shwo plan.json`) is a usage error with the
    nearest command name, not a compile of a file called `shwo`."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMAND_MODULES)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name not in COMMAND_MODULES:
            return None
        return importlib.import_module(f"qcompiler.cli.{name}").command

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if args and args[0] not in COMMAND_MODULES and args[0] not in ("-h", "--help", "--version"):
            if not _is_recipe_argument(args[0]):
                close = difflib.get_close_matches(args[0], COMMAND_MODULES, n=1, cutoff=0.6)
                hint = (f"; did you mean {close[0]!r}?" if close
                        else f" (and no recipe file of that name); commands: {', '.join(sorted(COMMAND_MODULES))}")
                ctx.fail(f"no such command {args[0]!r}{hint}")
            args = [DEFAULT_COMMAND, *args]
        return super().parse_args(ctx, args)

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except QcompileError as exc:  # bad input, reported by the library with where and how to fix it
            click.echo(f"error: {exc}", err=True)
            ctx.exit(1)
        except BrokenPipeError:  # the reader of stdout went away: main() ends quietly
            raise
        except OSError as exc:  # a path we could not read or write
            click.echo(f"error: {_os_error_message(exc)}", err=True)
            ctx.exit(1)

    def format_usage(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        formatter.write_usage("qcompile", "RECIPE -o plan.json [--steps N] [--variant tiny]\n       qcompile COMMAND [ARGS]...")


@click.group(cls=_QcompileGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="qcompile")
def cli() -> None:
    """Compile quantized-attention recipes (FP8, MX, INT8) into verified per-(step, layer) plans.

    \b
      qcompile recipes/wan22_i2v.yaml -o plan.json   compile a recipe
      qcompile lint recipes/                          lint recipes (CI)
      qcompile show plan.json                         heatmap and quantized share
    """


def _is_recipe_argument(word: str) -> bool:
    """An option of the compile form, a recipe by its suffix, or a path that exists (a folder of recipes)."""
    return word.startswith("-") or Path(word).suffix.lower() in RECIPE_SUFFIXES or Path(word).exists()


def main() -> None:
    try:
        try:
            cli.main(prog_name="qcompile")
        finally:
            sys.stdout.flush()  # a pipe closed early fails here, after click has exited
    except BrokenPipeError:
        # Python docs, "Note on SIGPIPE": point stdout at devnull so the interpreter's last flush cannot fail again.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        sys.exit(1)


if __name__ == "__main__":
    main()
