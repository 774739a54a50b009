"""A small, fast validator for the subset of JSON Schema 2020-12 that qcompile's schemas use.

Why not `jsonschema` at run time: importing it costs ~70 ms, more than compiling a recipe, and `qcompile`
must start fast (its benchmark goal is 3x `python -c pass`). The schemas in schemas/ stay standard JSON
Schema: editors and `jsonschema` read them, and the tests check this validator agrees with `jsonschema`
on valid files and on random mutations. One deliberate difference: `integer` means an integer value,
never a float such as 4.0 (JSON Schema accepts 4.0). A keyword outside the subset raises at first use,
so a schema edit can never be silently half-checked.
"""

from __future__ import annotations

import re
from collections import namedtuple
from collections.abc import Iterator
from functools import cache, lru_cache

TYPE_CHECKING = False  # see docs/design.md "Start-up": no typing import at run time
if TYPE_CHECKING:
    from typing import Any

SUPPORTED_KEYWORDS = frozenset({
    "$schema", "$id", "$defs", "$ref", "title", "description", "default", "examples",
    "type", "enum", "const", "properties", "additionalProperties", "required", "propertyNames", "minProperties",
    "items", "minItems", "maxItems", "uniqueItems", "minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum",
    "pattern", "minLength", "maxLength", "oneOf",
})


class SchemaViolation(namedtuple("SchemaViolation", ["validator", "validator_value", "instance", "schema", "absolute_path", "message"], defaults=((), "",))):
    """One violation, shaped like jsonschema's ValidationError for the fields qcompile reads."""

    # Fields:
    #   validator: str
    #   validator_value: Any
    #   instance: Any
    #   schema: dict
    #   absolute_path: tuple = ()
    #   message: str = ""
    __slots__ = ()

def _is_type(value: Any, name: str) -> bool:
    if name == "integer":
        return isinstance(value, int) and not isinstance(value, bool)
    if name == "number":
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if name == "string":
        return isinstance(value, str)
    if name == "boolean":
        return isinstance(value, bool)
    if name == "array":
        return isinstance(value, list)
    if name == "object":
        return isinstance(value, dict)
    if name == "null":
        return value is None
    raise ValueError(f"unsupported JSON Schema type {name!r}")


def _equal(a: Any, b: Any) -> bool:
    # JSON Schema equality: true != 1, 1 == 1.0
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    return a == b


@lru_cache(maxsize=256)
def _pattern(text: str) -> re.Pattern:
    return re.compile(text)


class SchemaChecker:
    def __init__(self, schema: dict):
        self.root = schema
        self._check_keywords(schema)

    def _check_keywords(self, schema: Any) -> None:
        if not isinstance(schema, dict):
            return
        unknown = set(schema) - SUPPORTED_KEYWORDS
        if unknown and not all(isinstance(schema.get(k), dict) for k in unknown if k in ("properties", "$defs")):
            raise ValueError(f"schema keyword(s) {sorted(unknown)} are outside qcompile's validator subset")
        for key in ("properties", "$defs"):
            for sub in schema.get(key, {}).values():
                self._check_keywords(sub)
        for key in ("items", "additionalProperties", "propertyNames"):
            self._check_keywords(schema.get(key))
        for sub in schema.get("oneOf", []):
            self._check_keywords(sub)

    def _resolve(self, schema: dict) -> dict:
        while "$ref" in schema:
            ref = schema["$ref"]
            if not ref.startswith("#/"):
                raise ValueError(f"only local $ref is supported, found {ref!r}")
            target: Any = self.root
            for part in ref[2:].split("/"):
                target = target[part]
            merged = {k: v for k, v in schema.items() if k != "$ref"}
            schema = {**target, **{k: v for k, v in merged.items() if k not in ("description",)}}
        return schema

    def is_valid(self, instance: Any, schema: dict | None = None) -> bool:
        return next(self.iter_errors(instance, schema), None) is None

    def iter_errors(self, instance: Any, schema: dict | None = None, path: tuple = ()) -> Iterator[SchemaViolation]:
        schema = self._resolve(self.root if schema is None else schema)
        if "type" in schema:
            types = schema["type"] if isinstance(schema["type"], list) else [schema["type"]]
            if not any(_is_type(instance, t) for t in types):
                yield SchemaViolation("type", schema["type"], instance, schema, path, f"{instance!r} is not of type {schema['type']}")
                return
        if "const" in schema and not _equal(instance, schema["const"]):
            yield SchemaViolation("const", schema["const"], instance, schema, path, f"{schema['const']!r} was expected")
        if "enum" in schema and not any(_equal(instance, v) for v in schema["enum"]):
            yield SchemaViolation("enum", schema["enum"], instance, schema, path, f"{instance!r} is not one of {schema['enum']}")
        if "oneOf" in schema:
            matches = sum(self.is_valid(instance, sub) for sub in schema["oneOf"])
            if matches != 1:
                yield SchemaViolation("oneOf", schema["oneOf"], instance, schema, path, f"{instance!r} is not valid under exactly one of the given schemas")
        if _is_type(instance, "number"):
            yield from self._numbers(instance, schema, path)
        elif isinstance(instance, str):
            yield from self._strings(instance, schema, path)
        elif isinstance(instance, list):
            yield from self._arrays(instance, schema, path)
        elif isinstance(instance, dict):
            yield from self._objects(instance, schema, path)

    def _numbers(self, value: float, schema: dict, path: tuple) -> Iterator[SchemaViolation]:
        checks = (("minimum", lambda b: value >= b), ("maximum", lambda b: value <= b),
                  ("exclusiveMinimum", lambda b: value > b), ("exclusiveMaximum", lambda b: value < b))
        for keyword, ok in checks:
            if keyword in schema and not ok(schema[keyword]):
                yield SchemaViolation(keyword, schema[keyword], value, schema, path, f"{value} violates {keyword} {schema[keyword]}")

    def _strings(self, value: str, schema: dict, path: tuple) -> Iterator[SchemaViolation]:
        if "minLength" in schema and len(value) < schema["minLength"]:
            yield SchemaViolation("minLength", schema["minLength"], value, schema, path, f"{value!r} is too short")
        if "maxLength" in schema and len(value) > schema["maxLength"]:
            yield SchemaViolation("maxLength", schema["maxLength"], value, schema, path, f"{value!r} is too long")
        if "pattern" in schema and not _pattern(schema["pattern"]).search(value):
            yield SchemaViolation("pattern", schema["pattern"], value, schema, path, f"{value!r} does not match {schema['pattern']!r}")

    def _arrays(self, value: list, schema: dict, path: tuple) -> Iterator[SchemaViolation]:
        if "minItems" in schema and len(value) < schema["minItems"]:
            yield SchemaViolation("minItems", schema["minItems"], value, schema, path, f"{value!r} should be non-empty")
        if "maxItems" in schema and len(value) > schema["maxItems"]:
            yield SchemaViolation("maxItems", schema["maxItems"], value, schema, path, "too many items")
        if schema.get("uniqueItems"):
            seen: list = []
            for item in value:
                if any(_equal(item, other) and type(item) is type(other) for other in seen):
                    yield SchemaViolation("uniqueItems", True, value, schema, path, f"{value!r} has non-unique elements")
                    break
                seen.append(item)
        if "items" in schema:
            for index, item in enumerate(value):
                yield from self.iter_errors(item, schema["items"], (*path, index))

    def _objects(self, value: dict, schema: dict, path: tuple) -> Iterator[SchemaViolation]:
        if "minProperties" in schema and len(value) < schema["minProperties"]:
            yield SchemaViolation("minProperties", schema["minProperties"], value, schema, path, "should be non-empty")
        properties = schema.get("properties", {})
        additional = schema.get("additionalProperties", True)
        if additional is False:
            extras = [key for key in value if key not in properties]
            if extras:
                yield SchemaViolation("additionalProperties", False, value, schema, path,
                                      f"Additional properties are not allowed ({', '.join(map(repr, extras))} were unexpected)")
        # After unknown keys: a misspelt key explains the required one that is then missing.
        for name in schema.get("required", ()):
            if name not in value:
                yield SchemaViolation("required", schema["required"], value, schema, path, f"'{name}' is a required property")
        if "propertyNames" in schema:
            for key in value:
                for error in self.iter_errors(key, schema["propertyNames"], path):
                    yield SchemaViolation(error.validator, error.validator_value, key, error.schema, path, error.message)
        for key, item in value.items():
            if key in properties:
                yield from self.iter_errors(item, properties[key], (*path, key))
            elif isinstance(additional, dict):
                yield from self.iter_errors(item, additional, (*path, key))


@cache
def checker(name: str) -> SchemaChecker:
    from qcompiler.schemas import load_schema

    return SchemaChecker(load_schema(name))


def first_violation(name: str, document: Any) -> tuple[str, str] | None:
    """(where, message) of the first violation of schemas/NAME.schema.json in path order, or None if valid.

    `where` is the slash-separated path to the offending value, "(top level)" for the document itself.
    """
    errors = sorted(checker(name).iter_errors(document), key=lambda e: [str(p) for p in e.absolute_path])
    if not errors:
        return None
    return "/".join(str(p) for p in errors[0].absolute_path) or "(top level)", errors[0].message
