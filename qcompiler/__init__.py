"""qcompile: compile declarative FP8-attention recipes into verified per-(step, layer) plans.

This package never imports torch: linting and compiling recipes needs only PyYAML, jsonschema and click.
"""

from __future__ import annotations

import os

__version__ = "0.1.0"


def compile_recipe_text(text: str | bytes, *, name: str = "<string>", steps: int | None = None,
                        variant: str | None = None, strict: bool = False):
    """Compile recipe text to a Plan; raises qcompiler.errors.RecipeError with located diagnostics."""
    from qcompiler.compile.compiler import compile_source, raise_for_findings

    return raise_for_findings(compile_source(text, name=name, steps=steps, variant=variant), strict=strict)


def compile_recipe_file(path: str | os.PathLike[str], *, steps: int | None = None, variant: str | None = None,
                        strict: bool = False):
    """Compile a recipe file to a Plan; raises qcompiler.errors.RecipeError with located diagnostics."""
    from qcompiler.compile.compiler import compile_path, raise_for_findings

    return raise_for_findings(compile_path(path, steps=steps, variant=variant), strict=strict)


__all__ = ["__version__", "compile_recipe_file", "compile_recipe_text"]
