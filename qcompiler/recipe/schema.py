"""Validate a parsed recipe against schemas/recipe.schema.json and turn violations into located diagnostics."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

from jsonschema.exceptions import ValidationError

from qcompiler.errors import Diagnostic, close_matches
from qcompiler.recipe.source import SourceDocument
from qcompiler.schemas import load_schema, schema_errors

# The most denoising steps a recipe (and so a plan compiled from one, or a sensitivity file a recipe is suggested
# from) may have: the recipe schema's bound, read from it so the two cannot drift.
MAX_STEPS: int = load_schema("recipe")["properties"]["num_inference_steps"]["maximum"]

_RULE_NAME = re.compile(load_schema("recipe")["properties"]["rules"]["items"]["properties"]["name"]["pattern"])
SELECTOR_KEYS = ("steps", "layers")  # checked by qcompiler.recipe.selectors, which gives better messages

_TYPE_NAMES = {"string": "a string", "integer": "an integer", "number": "a number", "boolean": "true or false",
               "array": "a list", "object": "a mapping", "null": "null"}


def _describe(value: Any) -> str:
    if isinstance(value, bool):
        return f"the boolean {str(value).lower()}"
    if value is None:
        return "nothing (null)"
    if isinstance(value, (int, float)):
        return f"the number {value}"
    if isinstance(value, str):
        return f"the string {value!r}"
    if isinstance(value, list):
        return "a list"
    return "a mapping"


def _subschema_description(schema: dict) -> str:
    return schema.get("description", "")


def _under(path: tuple, prefixes: set) -> bool:
    return any(path[:len(prefix)] == prefix for prefix in prefixes)


def schema_findings(doc: SourceDocument) -> Iterator[tuple[tuple, Diagnostic]]:
    """(path of the value at fault, diagnostic) for each schema violation. Values the YAML reading already
    reported (doc.invalid_paths) are not reported again; selectors are left to qcompiler.recipe.selectors."""
    for error in schema_errors("recipe", doc.data):
        path = tuple(error.absolute_path)
        if path and path[-1] in SELECTOR_KEYS or (len(path) >= 2 and path[-2] in SELECTOR_KEYS):
            continue
        if _under(path, doc.invalid_paths):
            continue
        yield from _diagnose(doc, error, path)
    yield from _rule_name_line_breaks(doc)


def _rule_name_line_breaks(doc: SourceDocument) -> Iterator[tuple[tuple, Diagnostic]]:
    """jsonschema matches `pattern` with Python's re.search, whose `$` also matches before a final line break,
    so the schema alone lets `name: |` (a block scalar ending in a newline) through."""
    rules = doc.data.get("rules") if isinstance(doc.data, dict) else None
    for index, rule in enumerate(rules if isinstance(rules, list) else []):
        name = rule.get("name") if isinstance(rule, dict) else None
        if isinstance(name, str) and name.endswith("\n") and _RULE_NAME.search(name):
            path = ("rules", index, "name")
            mark = doc.mark_for(path)
            yield path, Diagnostic(doc.path, mark.line, mark.column, "error", "QC114",
                                   f"`rules[{index}].name` {name!r} ends in a line break",
                                   "write the name on the key's line (`name: my-rule`); a `|` block keeps the line break")


def _diagnose(doc: SourceDocument, error: ValidationError, path: tuple) -> Iterator[tuple[tuple, Diagnostic]]:
    where = _dotted(path)
    validator = error.validator
    if validator == "additionalProperties":
        allowed = sorted(error.schema.get("properties", {}))
        extras = [key for key in error.instance if key not in error.schema.get("properties", {})]
        for key in extras:
            if _under((*path, key), doc.invalid_paths):
                continue
            mark = doc.mark_for((*path, key), key=True)
            close = close_matches(str(key), allowed, n=1, cutoff=0.6)
            hint = f"did you mean `{close[0]}`?" if close else f"allowed keys{' in ' + where if where else ''}: {', '.join(allowed)}"
            yield (*path, key), Diagnostic(doc.path, mark.line, mark.column, "error", "QC110",
                                           f"unknown key `{key}`{' in ' + where if where else ''}", hint)
        return
    mark = doc.mark_for(path)
    if validator == "required":
        missing = error.message.split("'")[1] if "'" in error.message else error.message
        description = _subschema_description(error.schema.get("properties", {}).get(missing, {}))
        yield (*path, missing), Diagnostic(doc.path, mark.line, mark.column, "error", "QC113",
                                           f"missing required key `{missing}`{' in ' + where if where else ''}", description)
        return
    for diagnostic in _diagnose_value(doc, error, path, where, mark):
        yield path, diagnostic


def _diagnose_value(doc: SourceDocument, error: ValidationError, path: tuple, where: str, mark) -> Iterator[Diagnostic]:
    validator = error.validator
    if validator == "type":
        expected = error.validator_value if isinstance(error.validator_value, list) else [error.validator_value]
        wanted = " or ".join(_TYPE_NAMES.get(t, t) for t in expected)
        yield Diagnostic(doc.path, mark.line, mark.column, "error", "QC111",
                         f"`{where}` must be {wanted}, found {_describe(error.instance)}", _subschema_description(error.schema))
    elif validator in ("enum", "const"):
        allowed = error.validator_value if validator == "enum" else [error.validator_value]
        close = close_matches(str(error.instance), [str(a) for a in allowed], n=1, cutoff=0.6)
        hint = f"did you mean `{close[0]}`?" if close else f"valid values: {', '.join(str(a) for a in allowed)}"
        yield Diagnostic(doc.path, mark.line, mark.column, "error", "QC112",
                         f"`{where}` is {_describe(error.instance)}; valid: {', '.join(str(a) for a in allowed)}", hint)
    elif validator in ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"):
        low = error.schema.get("minimum", error.schema.get("exclusiveMinimum"))
        high = error.schema.get("maximum", error.schema.get("exclusiveMaximum"))
        bounds = f"{low}..{high}" if high is not None else f">= {low}"
        yield Diagnostic(doc.path, mark.line, mark.column, "error", "QC114",
                         f"`{where}` is {error.instance}, out of range ({bounds})", _subschema_description(error.schema))
    elif validator == "uniqueItems":
        yield Diagnostic(doc.path, mark.line, mark.column, "error", "QC114", f"`{where}` lists a value twice", "list each value once")
    elif validator in ("minItems", "minLength"):
        yield Diagnostic(doc.path, mark.line, mark.column, "error", "QC114", f"`{where}` is empty", _subschema_description(error.schema))
    elif validator == "pattern":
        yield Diagnostic(doc.path, mark.line, mark.column, "error", "QC114",
                         f"`{where}` value {error.instance!r} is not a valid name",
                         "use letters, digits, '-', '_' and '.', starting with a letter or digit")
    else:
        yield Diagnostic(doc.path, mark.line, mark.column, "error", "QC114", f"`{where}`: {error.message}", _subschema_description(error.schema))


def _dotted(path: tuple) -> str:
    text = ""
    for part in path:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text
