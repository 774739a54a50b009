"""Cross-field consistency of plan data, beyond what its JSON Schema can say.

Every reader of a plan goes through `check_plan_consistency` (via qcompiler.plan.format.load_plan /
Plan.from_dict): `show`, `diff`, `check`, `export`, `patch`, `report` and `runtime.load`. A plan that was edited
and re-hashed is therefore refused with the JSON path of the first inconsistency, never a KeyError later.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from qcompiler.errors import PlanError
from qcompiler.families.model import structure_problems, structure_v1_to_v2
from qcompiler.schemas import json_path

ROW_ALPHABET = frozenset("01")


def _fail(path: tuple, message: str) -> PlanError:
    return PlanError(f"plan is inconsistent at {json_path(path)}: {message}")


def check_plan_consistency(data: Mapping[str, Any]) -> None:
    """Raise PlanError at the first inconsistency of schema-valid plan `data` (format 1 or 2)."""
    family = data["family"]
    steps = data["num_inference_steps"]
    if data["plan_format"] == 1:
        family = _v1_family_or_fail(family)
    else:
        problems = structure_problems(family)
        if problems:
            where, message = problems[0]
            raise _fail(("family", *where), message)
    components = {c["name"]: {b["name"]: b["length"] for b in c["block_lists"]} for c in family["components"]}
    kinds = {kind: spec["block_list"] for kind, spec in family["attention_kinds"].items()}

    def layers(component: str, kind: str) -> int:
        return components[component][kinds[kind]]

    if set(data["tables"]) != set(components):
        raise _fail(("tables",), f"tables cover components {sorted(data['tables'])}, the family has {sorted(components)}")
    for component, by_kind in data["tables"].items():
        if set(by_kind) != set(kinds):
            raise _fail(("tables", component), f"tables cover kinds {sorted(by_kind)}, the family has {sorted(kinds)}")
        for kind, rows in by_kind.items():
            _check_rows(("tables", component, kind), rows, steps, layers(component, kind))
    schedule = data["expert_schedule"]
    if len(schedule) != steps:
        raise _fail(("expert_schedule",), f"{len(schedule)} entries for {steps} steps")
    for step, name in enumerate(schedule):
        if name not in components:
            raise _fail(("expert_schedule", step), f"{name!r} is not a component of the family ({', '.join(components)})")
    for index, rule in enumerate(data["rules"]):
        for component, by_kind in rule["changed"].items():
            if component not in components:
                raise _fail(("rules", index, "changed", component), f"{component!r} is not a component of the family")
            for kind, cells in by_kind.items():
                if kind not in kinds:
                    raise _fail(("rules", index, "changed", component, kind), f"{kind!r} is not an attention kind of the family")
                if cells > steps * layers(component, kind):
                    raise _fail(("rules", index, "changed", component, kind),
                                f"{cells} cells changed; the plane has {steps * layers(component, kind)}")
        if rule["cells_changed"] != sum(c for by_kind in rule["changed"].values() for c in by_kind.values()):
            raise _fail(("rules", index, "cells_changed"), "is not the sum of the rule's `changed` counts")


def _v1_family_or_fail(family: Mapping[str, Any]) -> dict[str, Any]:
    seen: set[str] = set()
    for index, component in enumerate(family["components"]):
        if component["name"] in seen:
            raise _fail(("family", "components", index, "name"), f"component {component['name']!r} is listed twice")
        seen.add(component["name"])
    try:
        return structure_v1_to_v2(family)
    except ValueError as exc:
        raise _fail(("family", "attention_kinds"), str(exc)) from None


def _check_rows(path: tuple, rows: list, steps: int, layers: int) -> None:
    if len(rows) != steps:
        raise _fail(path, f"{len(rows)} rows for {steps} steps")
    for step, row in enumerate(rows):
        if len(row) != layers:
            raise _fail((*path, step), f"row has {len(row)} characters for {layers} layers")
        if not ROW_ALPHABET.issuperset(row):
            bad = next(c for c in row if c not in ROW_ALPHABET)
            raise _fail((*path, step), f"row contains {bad!r}; rows are made of '0' (native) and '1' (FP8) only")
