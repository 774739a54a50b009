"""The JSON Schemas shipped in `schemas/` (also packaged as qcompiler/_schemas for installs), and their validators.

Every schema check in qcompile goes through `jsonschema`: one Draft 2020-12 validator per schema, built once.
Our one rule stricter than JSON Schema: `integer` means an integer value, never a float such as 4.0 (JSON
Schema accepts 4.0); booleans are never numbers (as in JSON Schema).
"""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
from jsonschema.exceptions import ValidationError

from qcompiler.formats import FORMATS, registry_generation

_CANDIDATE_DIRS = (
    Path(__file__).parent / "_schemas",  # installed wheel: schemas copied into the package
    Path(__file__).parent.parent / "schemas",  # source checkout
)


def _is_strict_integer(checker: Any, instance: Any) -> bool:
    return isinstance(instance, int) and not isinstance(instance, bool)


StrictValidator = jsonschema.validators.extend(
    jsonschema.Draft202012Validator,
    type_checker=jsonschema.Draft202012Validator.TYPE_CHECKER.redefine("integer", _is_strict_integer),
)


def schema_path(name: str) -> Path:
    for folder in _CANDIDATE_DIRS:
        path = folder / f"{name}.schema.json"
        if path.is_file():
            return path
    raise FileNotFoundError(f"schema {name!r} not found in {', '.join(str(d) for d in _CANDIDATE_DIRS)}")


@cache
def committed_schema(name: str) -> dict:
    """schemas/NAME.schema.json as the file says (a test checks it equals `load_schema(name)`)."""
    return json.loads(schema_path(name).read_text(encoding="utf-8"))


def load_schema(name: str) -> dict:
    """schemas/NAME.schema.json with its format parts taken from the registry (qcompiler/formats/): every `dtype`
    enum lists the registered formats, and the per-dtype numerics pairing (which keys each dtype records) comes
    from their specs. The committed files carry the same (so editors validate), checked by a test."""
    return _load_schema(name, registry_generation())


@cache
def _load_schema(name: str, generation: int) -> dict:
    return with_formats(committed_schema(name))


def _dtype_pairing(node: dict) -> bool:
    """Whether `node` pairs dtypes with numerics keys (an if/then per dtype, or today's if/then/else)."""
    def keyed(item: Any) -> bool:
        return isinstance(item, dict) and "const" in item.get("if", {}).get("properties", {}).get("dtype", {})
    if not isinstance(node.get("properties"), dict) or "dtype" not in node["properties"]:
        return False
    return keyed(node) or (isinstance(node.get("allOf"), list) and bool(node["allOf"])
                           and all(keyed(item) for item in node["allOf"]))


def _pairs(node: dict) -> list[dict]:
    """One if/then per format: a `dtype` of that format requires the numerics keys it records and forbids the
    keys it lacks. `node` holds `dtype` and either holds `numerics` (a plan) or is the numerics object."""
    numerics = node["properties"].get("numerics", node)
    known = [key for key in numerics["properties"] if key != "dtype"]
    always = set(numerics.get("required", ()))
    dtype_default = node["properties"]["dtype"].get("default")
    pairs = []
    for spec in FORMATS.values():
        then: dict[str, Any] = {
            "required": [key for key in spec.required_plan_keys if key in known and key not in always],
            "properties": {key: False for key in known if spec.key(key) is None},
        }
        condition: dict[str, Any] = {"properties": {"dtype": {"const": spec.name}}}
        if spec.name != dtype_default:  # an absent dtype means the default one
            condition["required"] = ["dtype"]
        pairs.append({"if": condition, "then": then if numerics is node else {"properties": {"numerics": then}}})
    return pairs


def with_formats(schema: Any) -> Any:
    """`schema` with every `dtype` enum set to the registry's names and every dtype/numerics pairing rebuilt from
    the format specs."""
    if isinstance(schema, list):
        return [with_formats(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    out = {key: with_formats(value) for key, value in schema.items()}
    dtype = out.get("properties", {}).get("dtype") if isinstance(out.get("properties"), dict) else None
    if isinstance(dtype, dict) and "enum" in dtype:
        out["properties"]["dtype"] = {**dtype, "enum": list(FORMATS)}
    if not _dtype_pairing(schema):
        return out
    pairs = _pairs(out)
    rebuilt: dict[str, Any] = {}
    for key, value in out.items():  # the pairing where the file has it (if/then/else or allOf), for stable output
        if key in ("if", "allOf"):
            rebuilt["allOf"] = pairs
        elif key not in ("then", "else"):
            rebuilt[key] = value
    return rebuilt


def _inline_local_refs(node: Any, defs: dict, depth: int = 0) -> Any:
    """The schema with every `{"$ref": "#/$defs/NAME"}` replaced by that definition. Same meaning (our schemas
    are not recursive), and validation no longer resolves references: half the time per recipe, which is what
    keeps `qcompile lint` above 1,000 recipes/s."""
    if depth > 32:
        raise ValueError("recursive $ref in a qcompile schema; validate it without inlining")
    if isinstance(node, dict):
        ref = node.get("$ref")
        if isinstance(ref, str) and ref.startswith("#/$defs/"):
            rest = {k: v for k, v in node.items() if k != "$ref"}
            return {**_inline_local_refs(defs[ref.removeprefix("#/$defs/")], defs, depth + 1), **rest}
        return {k: _inline_local_refs(v, defs, depth + 1) for k, v in node.items() if k != "$defs"}
    if isinstance(node, list):
        return [_inline_local_refs(v, defs, depth + 1) for v in node]
    return node


def validator(name: str) -> jsonschema.protocols.Validator:
    """The validator of schemas/NAME.schema.json (as load_schema gives it), built once per process and registry
    state. (That the shipped schemas are valid Draft 2020-12 is checked by
    tests/compiler/test_families_and_schemas.py, not at every start.)"""
    return _validator(name, registry_generation())


@cache
def _validator(name: str, generation: int) -> jsonschema.protocols.Validator:
    schema = load_schema(name)
    return StrictValidator(_inline_local_refs(schema, schema.get("$defs", {})))


def schema_errors(name: str, document: Any) -> list[ValidationError]:
    """Every violation of schemas/NAME.schema.json, in path order."""
    return sorted(validator(name).iter_errors(document), key=lambda e: [str(p) for p in e.absolute_path])


def json_path(path: Any) -> str:
    """`$.tables.transformer.self[3]`: where a value sits in a JSON document, for messages."""
    text = "$"
    for part in path:
        text += f"[{part}]" if isinstance(part, int) else f".{part}"
    return text


def first_violation(name: str, document: Any) -> tuple[str, str] | None:
    """(where, message) of the first violation of schemas/NAME.schema.json in path order, or None if valid.

    `where` is the JSON path to the offending value (`$` for the document itself).
    """
    errors = schema_errors(name, document)
    if not errors:
        return None
    return json_path(errors[0].absolute_path), errors[0].message


def check_versioned_document(data: Any, *, name: str, format_key: str, version: int, error: type[Exception],
                             what: str, redo: str) -> None:
    """Raise `error` unless `data` is a JSON object of format `version` (under `format_key`) that matches
    schemas/NAME.schema.json. `what` names the document ("a plan"), `redo` says how to get a current one."""
    if not isinstance(data, dict) and not hasattr(data, "keys"):
        raise error(f"{what} is a JSON object, found {type(data).__name__}")
    found = data.get(format_key)
    if found != version:
        raise error(f"{format_key} {found!r} is not supported (this qcompile reads format {version}); {redo}")
    violation = first_violation(name, data)
    if violation:
        raise error(f"{what} does not match schemas/{name}.schema.json at {violation[0]}: {violation[1]}")
