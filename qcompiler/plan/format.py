"""The plan: a frozen, hashed per-(component, attention kind) steps x layers table of FP8/native decisions.

A plan is pure data. It is written as deterministic JSON (same recipe -> same bytes) with a sha256 over its
meaningful content, so a consumer can detect an edited file. See docs/plan-format.md.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from qcompiler.errors import PlanError
from qcompiler.families.model import Family
from qcompiler.fileio import InputRefused, read_json_file, sha256, write_text_atomically
from qcompiler.plan.validate import check_plan_consistency
from qcompiler.schemas import check_versioned_document

PLAN_FORMAT = 2
# Formats this qcompile reads, and the schema of each: format-1 plans load unchanged (their family converted in
# memory, their hash checked over their own data).
READABLE_PLAN_FORMATS = {1: "plan_v1", 2: "plan"}
FP8 = "1"
NATIVE = "0"

# Keys left out of the content hash: the hash itself, and the compiler version (provenance, not meaning:
# a newer compiler producing the same tables must not invalidate committed plans).
_UNHASHED_KEYS = ("content_sha256", "compiler")
# The largest shipped plan is about 40 KB; 64 MB is far above any real plan (1,000 steps x 10,000 layers is 40 MB).
MAX_PLAN_BYTES = 64 * 1024 * 1024

Table = tuple[tuple[bool, ...], ...]  # [step][layer] -> True for FP8


def canonical_json(data: Any) -> str:
    return json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=True)


def content_sha256(data: Mapping[str, Any]) -> str:
    meaningful = {k: v for k, v in data.items() if k not in _UNHASHED_KEYS}
    return sha256(canonical_json(meaningful).encode("ascii")).hexdigest()


_CELL_OF_CHAR = {FP8: True, NATIVE: False}
_CHAR_OF_CELL = {True: FP8, False: NATIVE}


def rows_to_table(rows: list[str] | tuple[str, ...]) -> Table:
    return tuple(tuple(map(_CELL_OF_CHAR.__getitem__, row)) for row in rows)


def table_to_rows(table: Table) -> list[str]:
    return ["".join(map(_CHAR_OF_CELL.__getitem__, row)) for row in table]


class FamilyDocument:
    """Accessors shared by the JSON documents that describe one family at one step count (plans, sensitivity
    files): subclasses keep the parsed document in `self.data`."""

    __slots__ = ()
    data: Mapping[str, Any]

    @property
    def family_name(self) -> str:
        return self.data["family"]["name"]

    @property
    def variant(self) -> str | None:
        return self.data["family"]["variant"]

    @property
    def num_inference_steps(self) -> int:
        return self.data["num_inference_steps"]

    @property
    def attention_kinds(self) -> tuple[str, ...]:
        """Kind names, sorted (the same as `family.kinds` of a plan)."""
        return tuple(sorted(self.data["family"]["attention_kinds"]))

    @property
    def numerics(self) -> Mapping[str, Any]:
        return self.data["numerics"]


class Plan(FamilyDocument):
    """A loaded, verified plan. `data` is the JSON document; tables are decoded once into tuples of bools.

    Immutable: `data` and `tables` are read-only mappings and the attributes cannot be rebound.
    """

    __slots__ = ("data", "tables", "family")

    def __init__(self, data: Mapping[str, Any], tables: Mapping[tuple[str, str], Table]) -> None:
        object.__setattr__(self, "data", data)
        object.__setattr__(self, "tables", tables)
        # The recorded family, typed (format-1 plans: converted in memory; the data stays as stored).
        object.__setattr__(self, "family", Family.from_structure(data["family"]))

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError("plans are immutable; compile a new plan instead")

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Plan) and self.data == other.data

    def __hash__(self) -> int:
        return hash(self.data.get("content_sha256"))

    def __repr__(self) -> str:
        return f"Plan({self.family_name}, {self.num_inference_steps} steps, sha256 {self.content_hash[:12]})"

    # -- construction -------------------------------------------------------------------------
    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, verify_hash: bool = True, trusted: bool = False) -> Plan:
        """Verify and freeze plan data. `trusted` skips verification for data the compiler has just built."""
        if not trusted:
            validate_plan_dict(data, verify_hash=verify_hash)
        tables = {
            (component, kind): rows_to_table(rows)
            for component, kinds in data["tables"].items()
            for kind, rows in kinds.items()
        }
        return cls(data=_freeze(data), tables=_FrozenDict(tables))

    # -- accessors --------------------------------------------------------------------------------

    @property
    def plan_format(self) -> int:
        return self.data["plan_format"]

    @property
    def dtype(self) -> str:
        return self.data["dtype"]

    @property
    def component_names(self) -> tuple[str, ...]:
        return tuple(c["name"] for c in self.data["family"]["components"])

    @property
    def fallback(self) -> str:
        return self.data["fallback"]

    @property
    def expert_schedule(self) -> tuple[str, ...]:
        return tuple(self.data["expert_schedule"])

    @property
    def content_hash(self) -> str:
        return self.data["content_sha256"]

    def table(self, component: str, kind: str) -> Table:
        return self.tables[(component, kind)]

    def is_quantized(self, component: str, kind: str, step: int, layer: int) -> bool:
        return self.tables[(component, kind)][step][layer]

    def uses_quantized(self) -> bool:
        return any(any(row) for table in self.tables.values() for row in table)

    def to_dict(self) -> dict[str, Any]:
        return thaw(self.data)

    def to_json(self) -> str:
        return plan_json(self.to_dict())


def plan_json(data: Mapping[str, Any]) -> str:
    """The one serialization of a plan: sorted keys, 2-space indent, trailing newline."""
    return json.dumps(data, sort_keys=True, indent=2, ensure_ascii=True) + "\n"


def validate_plan_dict(data: Any, *, verify_hash: bool = True) -> None:
    """Raise PlanError unless `data` is a well-formed plan of a known format whose hash matches."""
    found = data.get("plan_format") if isinstance(data, Mapping) else None
    version = found if type(found) is int and found in READABLE_PLAN_FORMATS else PLAN_FORMAT
    check_versioned_document(data, name=READABLE_PLAN_FORMATS[version], format_key="plan_format", version=version,
                             error=PlanError, what="a plan",
                             redo="recompile the recipe with this qcompile: qcompile RECIPE -o plan.json")
    check_plan_consistency(data)
    if verify_hash:
        expected = content_sha256(data)
        if data["content_sha256"] != expected:
            raise PlanError(
                "plan content does not match its content_sha256: the file was edited after compiling. "
                "Edit the recipe instead and recompile it (qcompile RECIPE -o plan.json)"
            )


def load_plan(source: str | os.PathLike[str] | Mapping[str, Any] | Plan) -> Plan:
    """Load and verify a plan from a path, a parsed JSON mapping or a Plan. Raises PlanError."""
    if isinstance(source, Plan):
        return source
    if isinstance(source, Mapping):
        return Plan.from_dict(source)
    path = Path(source)
    try:
        data = read_json_file(path, max_bytes=MAX_PLAN_BYTES)
    except FileNotFoundError:
        raise PlanError(f"{path}: no such plan file; compile one with: qcompile RECIPE -o {path}") from None
    except InputRefused as exc:
        raise PlanError(exc.located(str(path))) from None
    except OSError as exc:
        raise PlanError(f"{path}: cannot read plan: {exc.strerror or exc}") from None
    try:
        return Plan.from_dict(data)
    except PlanError as exc:
        raise PlanError(f"{path}: {exc}") from None


def write_plan(plan: Plan | Mapping[str, Any], path: str | os.PathLike[str]) -> None:
    text = plan.to_json() if isinstance(plan, Plan) else plan_json(plan)
    write_text_atomically(path, text)


# -- immutability helpers -----------------------------------------------------------------------------


class _FrozenDict(dict):
    """A dict that refuses mutation, so a loaded plan cannot drift from its hash in memory."""

    def _refuse(self, *args: Any, **kwargs: Any) -> None:
        raise TypeError("plans are immutable; compile a new plan instead")

    __setitem__ = __delitem__ = clear = pop = popitem = setdefault = update = _refuse  # type: ignore[assignment]

    def __hash__(self) -> int:  # type: ignore[override]
        return hash(canonical_json(thaw(self)))


def _freeze(value: Any) -> Any:
    kind = type(value)
    if kind is dict or kind is _FrozenDict:
        return _FrozenDict({k: _freeze(v) for k, v in value.items()})
    if kind is list or kind is tuple:
        return tuple(_freeze(v) for v in value)
    return value


def thaw(value: Any) -> Any:
    kind = type(value)
    if kind is dict or kind is _FrozenDict:
        return {k: thaw(v) for k, v in value.items()}
    if kind is tuple or kind is list:
        return [thaw(v) for v in value]
    return value
