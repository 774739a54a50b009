"""Access to the JSON Schemas shipped in `schemas/` (also packaged as qcompiler/_schemas for installs)."""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path

_CANDIDATE_DIRS = (
    Path(__file__).parent / "_schemas",  # installed wheel: schemas copied into the package
    Path(__file__).parent.parent / "schemas",  # source checkout
)


def schema_path(name: str) -> Path:
    for folder in _CANDIDATE_DIRS:
        path = folder / f"{name}.schema.json"
        if path.is_file():
            return path
    raise FileNotFoundError(f"schema {name!r} not found in {', '.join(str(d) for d in _CANDIDATE_DIRS)}")


@cache
def load_schema(name: str) -> dict:
    return json.loads(schema_path(name).read_text(encoding="utf-8"))
