"""Model families as data: one JSON file per family under `qcompiler/families/data/` (or `$QCOMPILE_FAMILY_PATH`).

Adding a family is adding a file; nothing here knows any family by name. A family file may carry
`variants` (e.g. `tiny`): the same components, layer counts and attention kinds with other widths, so
tests and the offline demo compile plans for exactly the model they run.
"""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path

from qcompiler.errors import FamilyError, close_matches
from qcompiler.families.model import (
    AttentionKind,
    BlockList,
    Component,
    Family,
    build_family,
    family_v1_to_v2,
    structure_problems,
)
from qcompiler.fileio import InputRefused, read_json_file
from qcompiler.schemas import first_violation, json_path

MAX_FAMILY_BYTES = 1_000_000  # a family file is a page of JSON

FAMILY_FORMAT = 2
BUILTIN_FAMILY_DIR = Path(__file__).parent / "data"
FAMILY_PATH_ENV = "QCOMPILE_FAMILY_PATH"
# Schedulers whose timesteps qcompiler.compile.resolve.predict_expert_schedule mirrors.
EXPERT_SCHEDULERS = ("UniPCMultistepScheduler",)

__all__ = ["AttentionKind", "BlockList", "Component", "Family", "FamilyError", "family_names", "get_family",
           "list_families"]


def _family_dirs() -> list[Path]:
    extra = [Path(p) for p in os.environ.get(FAMILY_PATH_ENV, "").split(os.pathsep) if p]
    return [*extra, BUILTIN_FAMILY_DIR]


@lru_cache(maxsize=8)
def _load_family_files(dirs: tuple[Path, ...]) -> tuple[dict[str, tuple[Path, dict]], tuple[str, ...]]:
    """Family data by name (earlier folders win) and the messages of files that are not family files.

    Only the JSON is read here; a family is checked against the schema when it is used (one family per
    compile, all of them in `qcompile families`), which keeps `qcompile` start-up small.
    """
    found: dict[str, tuple[Path, dict]] = {}
    broken: list[str] = []
    for folder in dirs:
        if not folder.is_dir():
            continue
        for path in sorted(folder.glob("*.json")):
            try:
                data = read_json_file(path, max_bytes=MAX_FAMILY_BYTES)
            except InputRefused as exc:
                broken.append(f"{exc.located(str(path))} (not a readable JSON family file)")
                continue
            except OSError as exc:
                broken.append(f"{path}: not a readable JSON family file: {exc.strerror or exc}")
                continue
            if not isinstance(data, dict) or not isinstance(data.get("name"), str):
                broken.append(f"{path}: a family file is a JSON object with a string `name` (see schemas/family.schema.json)")
                continue
            # Earlier folders win, so a user's $QCOMPILE_FAMILY_PATH can override a built-in family.
            found.setdefault(data["name"], (path, data))
    return found, tuple(broken)


@lru_cache(maxsize=64)
def _checked(name: str, dirs: tuple[Path, ...]) -> dict:
    """The family's data as format 2: a format-1 file (no `family_format`) is checked against its own schema
    and converted in memory."""
    path, data = _load_family_files(dirs)[0][name]
    found = data.get("family_format", 1)
    schema = {1: "family_v1", FAMILY_FORMAT: "family"}.get(found) if type(found) is int else None
    if schema is None:
        raise FamilyError(f"{path}: family_format {found!r} is not supported (this qcompile reads formats 1 and "
                          f"{FAMILY_FORMAT}; see schemas/family.schema.json)")
    violation = first_violation(schema, data)
    if violation:
        raise FamilyError(f"{path}: {violation[0]}: {violation[1]} (see schemas/{schema}.schema.json)")
    if found == 1:
        try:
            data = family_v1_to_v2(data)
        except ValueError as exc:
            raise FamilyError(f"{path}: $.attention_kinds: {exc}") from None
    problems = structure_problems(data)
    if problems:
        where, message = problems[0]
        raise FamilyError(f"{path}: {json_path(where)}: {message}")
    if len(data["components"]) > 1 and data["boundary_ratio"] is not None:
        if data["scheduler"]["class"] not in EXPERT_SCHEDULERS:
            raise FamilyError(f"{path}: $.scheduler.class: the expert schedule of a two-component family is "
                              f"predicted for {', '.join(EXPERT_SCHEDULERS)} only, not {data['scheduler']['class']!r}")
        shifts = [("$.scheduler.flow_shift", data["scheduler"]["flow_shift"])] + [
            (f"$.variants.{name}.scheduler.flow_shift", variant["scheduler"]["flow_shift"])
            for name, variant in sorted((data.get("variants") or {}).items())
            if "flow_shift" in variant.get("scheduler", {})]
        for where, shift in shifts:
            if shift is None:
                raise FamilyError(f"{path}: {where}: a two-component family needs a number here (the expert "
                                  "schedule is predicted from it); null is for one-component families only")
    return data


def _all_family_data() -> dict[str, tuple[Path, dict]]:
    return _load_family_files(tuple(_family_dirs()))[0]


def family_names() -> list[str]:
    return sorted(_all_family_data())


def _build(data: dict, variant: str | None) -> Family:
    if variant is not None and variant not in (data.get("variants") or {}):
        known = ", ".join(sorted(data.get("variants") or {})) or "none"
        raise FamilyError(f"family {data['name']!r} has no variant {variant!r} (variants: {known})")
    return build_family(data, variant)


def get_family(name: str, variant: str | None = None) -> Family:
    """The family called `name`, optionally one of its variants. Raises FamilyError naming the known ones."""
    dirs = tuple(_family_dirs())
    found, broken = _load_family_files(dirs)
    if name not in found:
        known = sorted(found)
        close = close_matches(name, known, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        unreadable = f" (unreadable family files: {'; '.join(broken)})" if broken else ""
        raise FamilyError(f"unknown model family {name!r}.{hint} Known families: {', '.join(known)}{unreadable}")
    return _build(_checked(name, dirs), variant)


def list_families() -> list[Family]:
    """Every family, each checked against the schema; a file that is not a family file is an error here."""
    broken = _load_family_files(tuple(_family_dirs()))[1]
    if broken:
        raise FamilyError("; ".join(broken))
    return [get_family(name) for name in family_names()]
