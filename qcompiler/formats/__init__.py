"""The registry of quantized attention formats (plan `dtype`s): one module per format in this package, each with a
module-level `FORMAT = FormatSpec(...)` (qcompiler/formats/base.py). Adding a format = adding one module here
(and its quantizer under runtime/quant/, registered under the same name). Torch-free.

`FORMATS` (name -> spec, in listing order) is filled from the package when it is first imported;
`register_format` adds a spec from elsewhere (a plugin, a test) and `unregister_format` removes it.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Mapping
from typing import Any

from qcompiler.formats.base import (
    ForeignKeyRule,
    FormatSpec,
    Numerics,
    NumericsKey,
    RecipeFinding,
)

__all__ = [
    "DEFAULT_FORMAT", "FORMATS", "ForeignKeyRule", "FormatSpec", "Numerics", "NumericsKey", "RecipeFinding",
    "discover_formats", "dtype_label", "format_names", "get_format", "plan_numerics", "quantized_name", "recipe_findings",
    "register_format", "registry_generation", "speed_factor", "unregister_format",
]

DEFAULT_FORMAT = "fp8_e4m3_per_block"

FORMATS: dict[str, FormatSpec] = {}
_generation = 0


def _sort() -> None:
    ordered = sorted(FORMATS.values(), key=lambda spec: (spec.order, spec.name))
    FORMATS.clear()
    FORMATS.update((spec.name, spec) for spec in ordered)


def register_format(spec: FormatSpec) -> FormatSpec:
    """Add `spec` to the registry (schemas, --dtype choices and the compiler see it from now on)."""
    global _generation
    if not isinstance(spec, FormatSpec):
        raise TypeError(f"register_format takes a FormatSpec, got {type(spec).__name__}")
    if spec.name in FORMATS and FORMATS[spec.name] is not spec:
        raise ValueError(f"format {spec.name!r} is already registered")
    FORMATS[spec.name] = spec
    _sort()
    _generation += 1
    return spec


def unregister_format(name: str) -> None:
    global _generation
    FORMATS.pop(name, None)
    _generation += 1


def registry_generation() -> int:
    """Changes whenever the registry does, so caches built from it (the schemas) know to rebuild."""
    return _generation


def discover_formats() -> None:
    """Register the format of every module on this package's path (its `FORMAT`); already registered ones stay."""
    for module in pkgutil.iter_modules(__path__):
        if module.name == "base" or module.name.startswith("_"):
            continue
        spec = getattr(importlib.import_module(f"{__name__}.{module.name}"), "FORMAT", None)
        if not isinstance(spec, FormatSpec):
            raise RuntimeError(f"qcompiler/formats/{module.name}.py defines no `FORMAT = FormatSpec(...)`")
        if spec.name != module.name:
            raise RuntimeError(f"qcompiler/formats/{module.name}.py defines format {spec.name!r}; a format's module "
                               "is named after it")
        register_format(spec)


def get_format(name: str) -> FormatSpec:
    """The spec of dtype `name`; KeyError naming the known ones otherwise."""
    try:
        return FORMATS[name]
    except KeyError:
        raise KeyError(f"unknown quantized attention dtype {name!r}; known: {', '.join(FORMATS)}") from None


def format_names() -> tuple[str, ...]:
    return tuple(FORMATS)


def plan_numerics(dtype: str, recipe_numerics: Mapping[str, Any] | None) -> dict[str, Any]:
    """The `numerics` object a plan records for `dtype` and a recipe's (possibly partial) `numerics:`."""
    return get_format(dtype).plan_numerics(recipe_numerics)


def quantized_name(name: str) -> str:
    """How output names what a plan's quantized cells run: "FP8" for the per-block FP8 format, otherwise
    "quantized (<dtype>)", so an MXFP4 or INT8 plan is never called FP8."""
    spec = FORMATS.get(name)
    return spec.quantized_name if spec else f"quantized ({name})"


def speed_factor(name: str) -> float | None:
    """The dtype's measured quantized/native attention time ratio, or None where none is known."""
    spec = FORMATS.get(name)
    return spec.speed_factor if spec else None


def dtype_label(name: str) -> str:
    """`name (label)` for display; an unknown name is shown as is (a plan's schema check refuses it earlier)."""
    spec = FORMATS.get(name)
    return f"{name} ({spec.label})" if spec else name


def recipe_findings(dtype: str, recipe_numerics: Mapping[str, Any] | None) -> list[RecipeFinding]:
    """What the formats say about a recipe of `dtype` with `numerics: recipe_numerics` (its schema already
    checked): keys another format owns (QC150, QC152: each key's ForeignKeyRule), then the dtype's own
    warning (QC151). Located by the caller through each finding's path."""
    given = recipe_numerics or {}
    spec = get_format(dtype)
    findings = []
    for name in given:
        own = spec.key(name)
        if own is not None:
            fixed = (own.default,) if not own.settable else own.allowed
            if fixed is not None and given[name] not in fixed:
                findings.append(RecipeFinding(
                    ("numerics", name), False, "error", "QC154",
                    f"dtype {dtype} takes numerics.{name} = {', '.join(map(_yaml, fixed))} only, the recipe sets "
                    f"{_yaml(given[name])}", f"remove numerics.{name} (or set it to {_yaml(fixed[0])})"))
            continue
        for owner in FORMATS.values():
            key = owner.key(name)
            if key is not None and key.foreign is not None:
                rule = key.foreign
                values = {"key": name, "owner": owner.name, "dtype": dtype}
                findings.append(RecipeFinding(("numerics", name), rule.at_key, "error", rule.code,
                                              rule.message.format(**values), rule.hint.format(**values)))
                break
    if spec.recipe_warning:
        code, message, hint = spec.recipe_warning
        findings.append(RecipeFinding(("dtype",), False, "warning", code, message, hint))
    return findings


def _yaml(value: Any) -> str:
    return ("true" if value else "false") if isinstance(value, bool) else str(value)


discover_formats()
