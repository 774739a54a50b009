"""Model families as data: one JSON file per family under `qcompiler/families/data/` (or `$QCOMPILE_FAMILY_PATH`).

Adding a family is adding a file; nothing here knows any family by name. A family file may carry
`variants` (e.g. `tiny`): the same components, layer counts and attention kinds with other widths, so
tests and the offline demo compile plans for exactly the model they run.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from qcompiler.errors import FamilyError, close_matches
from qcompiler.fileio import InputRefused, read_json_file
from qcompiler.schemas import first_violation

MAX_FAMILY_BYTES = 1_000_000  # a family file is a page of JSON

BUILTIN_FAMILY_DIR = Path(__file__).parent / "data"
FAMILY_PATH_ENV = "QCOMPILE_FAMILY_PATH"


@dataclass(frozen=True)
class Component:
    name: str
    role: str
    diffusers_class: str
    num_layers: int
    num_heads: int
    head_dim: int

@dataclass(frozen=True)
class Family:
    name: str
    variant: str | None
    description: str
    pipeline_class: str
    components: tuple[Component, ...]
    attention_kinds: tuple[str, ...]
    attention_modules: tuple[tuple[str, str], ...]  # (kind, module pattern), e.g. ("self", "blocks.{layer}.attn1")
    boundary_ratio: float | None
    num_train_timesteps: int
    flow_shift: float
    reference_shapes: tuple[tuple[str, Any], ...]
    variants: tuple[str, ...]

    @property
    def display_name(self) -> str:
        return f"{self.name} ({self.variant} variant)" if self.variant else self.name

    def component(self, name: str) -> Component:
        for component in self.components:
            if component.name == name:
                return component
        raise KeyError(name)

    @property
    def component_names(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.components)

    def shapes(self) -> dict[str, Any]:
        return dict(self.reference_shapes)

    def structure(self) -> dict[str, Any]:
        """The part of the family a plan records and a runtime checks against the real pipeline."""
        return {
            "name": self.name,
            "variant": self.variant,
            "pipeline_class": self.pipeline_class,
            "boundary_ratio": self.boundary_ratio,
            "num_train_timesteps": self.num_train_timesteps,
            "flow_shift": self.flow_shift,
            "components": [
                {
                    "name": c.name,
                    "diffusers_class": c.diffusers_class,
                    "num_layers": c.num_layers,
                    "num_heads": c.num_heads,
                    "head_dim": c.head_dim,
                }
                for c in self.components
            ],
            "attention_kinds": {kind: {"module": module} for kind, module in self.attention_modules},
            "reference_shapes": self.shapes(),
        }


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
    path, data = _load_family_files(dirs)[0][name]
    violation = first_violation("family", data)
    if violation:
        raise FamilyError(f"{path}: {violation[0]}: {violation[1]} (see schemas/family.schema.json)")
    return data


def _all_family_data() -> dict[str, tuple[Path, dict]]:
    return _load_family_files(tuple(_family_dirs()))[0]


def family_names() -> list[str]:
    return sorted(_all_family_data())


def _build(data: dict, variant: str | None) -> Family:
    components = [dict(c) for c in data["components"]]
    scheduler = dict(data["scheduler"])
    shapes = dict(data["reference_shapes"])
    if variant is not None:
        override = data.get("variants", {}).get(variant)
        if override is None:
            known = ", ".join(sorted(data.get("variants", {}))) or "none"
            raise FamilyError(f"family {data['name']!r} has no variant {variant!r} (variants: {known})")
        by_name = {c["name"]: c for c in override.get("components", [])}
        for component in components:
            component.update({k: v for k, v in by_name.get(component["name"], {}).items() if k != "name"})
        scheduler.update(override.get("scheduler", {}))
        shapes.update(override.get("reference_shapes", {}))
    return Family(
        name=data["name"],
        variant=variant,
        description=data["description"],
        pipeline_class=data["pipeline_class"],
        components=tuple(
            Component(
                name=c["name"],
                role=c["role"],
                diffusers_class=c["diffusers_class"],
                num_layers=c["num_layers"],
                num_heads=c["num_heads"],
                head_dim=c["head_dim"],
            )
            for c in components
        ),
        attention_kinds=tuple(sorted(data["attention_kinds"])),
        attention_modules=tuple(sorted((k, v["module"]) for k, v in data["attention_kinds"].items())),
        boundary_ratio=data["boundary_ratio"],
        num_train_timesteps=data["num_train_timesteps"],
        flow_shift=scheduler["flow_shift"],
        reference_shapes=tuple(sorted(shapes.items())),
        variants=tuple(sorted(data.get("variants", {}))),
    )


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
