"""Helpers shared by commands: failing with a message, loading plans or recipes."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import NoReturn

import click

from qcompiler.cli.diagnostics_format import format_text
from qcompiler.compile.compiler import compile_path
from qcompiler.plan.format import Plan, load_plan


def fail(message: str, code: int = 1) -> NoReturn:
    click.echo(f"error: {message}", err=True)
    raise SystemExit(code)


# Top-level modules of the `runtime` extra (pyproject.toml); PIL is pillow's import name.
RUNTIME_EXTRA_MODULES = ("torch", "diffusers", "transformers", "sentencepiece", "PIL", "tqdm", "accelerate")


@contextmanager
def needs_runtime_extra(command: str) -> Iterator[None]:
    """Run a command body that imports torch and the runtime; without the `runtime` extra (`pip install .`
    alone) say what to install instead of a ModuleNotFoundError traceback."""
    try:
        yield
    except ModuleNotFoundError as exc:
        if (exc.name or "").split(".")[0] not in RUNTIME_EXTRA_MODULES:
            raise
        fail(f"`qcompile {command}` runs a diffusers pipeline and needs the runtime extra, which is not installed "
             f"(no module named {exc.name!r}). From the qcompile checkout: pip install torch==2.13.0 (or your "
             "accelerator's torch build) && pip install '.[runtime]' (docs/install.md)")


def load_plan_or_recipe(path: str, *, steps: int | None = None, variant: str | None = None) -> Plan:
    """A plan file as is, or a recipe compiled on the fly (recognised by its .yaml/.yml suffix)."""
    if Path(path).suffix.lower() in (".yaml", ".yml"):
        result = compile_path(path, steps=steps, variant=variant)
        if result.errors or result.plan is None:
            click.echo(format_text(result.diagnostics), err=True, nl=False)
            fail(f"{path}: the recipe has errors (see above)")
        return result.plan
    return load_plan(path)
