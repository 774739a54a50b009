"""The sensitivity file (`qcompile calibrate` writes it, `qcompile suggest` reads it), as pure data.

Schema: schemas/sensitivity.schema.json. One entry per (component, kind, step, layer) that ran, with the
mean and the worst per-call error over every sample and CFG branch, and (format 2) which kinds can carry an
attention mask in the model and how their calls were served. Format-1 files (schemas/sensitivity_v1.schema.json,
no `masks`) are still read: their masks are unknown. Never imports torch.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from qcompiler.errors import FamilyError, QcompileError
from qcompiler.families import get_family
from qcompiler.families.model import Family
from qcompiler.fileio import InputRefused, read_json_file
from qcompiler.formats import DEFAULT_FORMAT
from qcompiler.plan.format import FamilyDocument
from qcompiler.recipe.schema import MAX_STEPS
from qcompiler.schemas import check_versioned_document

# A sensitivity file holds one small record per measured cell; 64 MB is far above 1,000 steps x 100 layers.
MAX_SENSITIVITY_BYTES = 64 * 1024 * 1024

SENSITIVITY_FORMAT = 2
# Formats this qcompile reads, and the schema of each: format 1 has no `masks` (which kinds carry masks is unknown).
READABLE_SENSITIVITY_FORMATS = {1: "sensitivity_v1", 2: "sensitivity"}

CellKey = tuple[str, str, int, int]  # (component, kind, step, layer)


class SensitivityError(QcompileError):
    """A sensitivity file is unreadable, malformed, or from an unknown format version."""


@dataclass(frozen=True)
class CellSensitivity:
    component: str
    kind: str
    step: int
    layer: int
    calls: int
    flops: float
    cos_sim_mean: float
    cos_sim_worst: float
    rel_l1_mean: float
    rel_l1_worst: float
    rmse_mean: float
    rmse_worst: float

    @property
    def key(self) -> CellKey:
        return (self.component, self.kind, self.step, self.layer)


@dataclass(frozen=True)
class Sensitivity(FamilyDocument):
    data: Mapping[str, Any]
    cells: Mapping[CellKey, CellSensitivity]

    @property
    def components(self) -> tuple[tuple[str, int], ...]:
        """(name, num_layers) in denoising order (num_layers: the blocks of kinds without their own count)."""
        return tuple((c["name"], c["num_layers"]) for c in self.data["family"]["components"])

    def num_layers(self, component: str, kind: str) -> int:
        """Layers of `kind` in `component` (its row length)."""
        return _layer_counts(self.data)[(component, kind)]

    @property
    def measured(self) -> Mapping[str, Any]:
        return self.data["measured"]

    @property
    def masked_kinds(self) -> tuple[str, ...] | None:
        """Kinds whose calls can carry an attention mask in the measured model; None: unknown (a format-1 file)."""
        masks = self.data.get("masks")
        return None if masks is None else tuple(masks["masked_kinds"])

    def mask_calls(self, kind: str) -> Mapping[str, Any] | None:
        """How the calibration's calls of `kind` were served (`packed_calls`, `unservable_calls`, maybe
        `unservable_reason`); None in a format-1 file."""
        masks = self.data.get("masks")
        return None if masks is None else masks["kinds"][kind]

    @property
    def dtype(self) -> str:
        """The quantized format measured (files written before MX formats measured per-block FP8)."""
        return self.data["numerics"].get("dtype", DEFAULT_FORMAT)


def _layer_counts(data: Mapping[str, Any]) -> dict[tuple[str, str], int]:
    """(component, kind) -> layers: a component's `layers` per kind where given, else its num_layers."""
    return {(c["name"], kind): c.get("layers", {}).get(kind, c["num_layers"])
            for c in data["family"]["components"] for kind in data["family"]["attention_kinds"]}


def sensitivity_family(family: Family) -> dict[str, Any]:
    """The `family` a sensitivity file records: per component num_layers, plus `layers` per kind when the
    family's kinds live in block lists of different lengths."""
    components = []
    for component in family.components:
        counts = {kind: family.num_layers(component.name, kind) for kind in family.kinds}
        entry: dict[str, Any] = {"name": component.name, "num_layers": max(counts.values())}
        if len(set(counts.values())) > 1:
            entry["layers"] = counts
        components.append(entry)
    return {"name": family.name, "variant": family.variant, "components": components,
            "attention_kinds": list(family.kinds)}


def sensitivity_from_dict(data: Any) -> Sensitivity:
    """Validate `data` against the schema and index its cells. Raises SensitivityError."""
    found = data.get("sensitivity_format") if isinstance(data, Mapping) else None
    version = found if type(found) is int and found in READABLE_SENSITIVITY_FORMATS else SENSITIVITY_FORMAT
    check_versioned_document(data, name=READABLE_SENSITIVITY_FORMATS[version], format_key="sensitivity_format",
                             version=version, error=SensitivityError, what="a sensitivity file",
                             redo="re-run qcompile calibrate with this qcompile")
    _check_family(data)
    _check_masks(data)
    layers = _layer_counts(data)
    components = {c["name"] for c in data["family"]["components"]}
    kinds = set(data["family"]["attention_kinds"])
    steps = data["num_inference_steps"]
    cells: dict[CellKey, CellSensitivity] = {}
    for index, raw in enumerate(data["cells"]):
        cell = CellSensitivity(
            component=raw["component"], kind=raw["kind"], step=raw["step"], layer=raw["layer"], calls=raw["calls"],
            flops=float(raw["flops"]),
            cos_sim_mean=raw["cos_sim"]["mean"], cos_sim_worst=raw["cos_sim"]["worst"],
            rel_l1_mean=raw["rel_l1"]["mean"], rel_l1_worst=raw["rel_l1"]["worst"],
            rmse_mean=raw["rmse"]["mean"], rmse_worst=raw["rmse"]["worst"],
        )
        if cell.component not in components or cell.kind not in kinds:
            raise SensitivityError(f"cells/{index}: {cell.component}/{cell.kind} is not in the file's family structure")
        if cell.step >= steps or cell.layer >= layers[(cell.component, cell.kind)]:
            raise SensitivityError(
                f"cells/{index}: step {cell.step}, layer {cell.layer} is outside {steps} steps x "
                f"{layers[(cell.component, cell.kind)]} layers of {cell.component}/{cell.kind}"
            )
        if cell.key in cells:
            raise SensitivityError(f"cells/{index}: cell {cell.key} is listed twice")
        cells[cell.key] = cell
    return Sensitivity(data=data, cells=cells)


def _check_family(data: Mapping[str, Any]) -> None:
    """The step count within what a recipe can say (MAX_STEPS), and the family one qcompile knows, with the
    components, layer counts and attention kinds it has: a recipe is written from these numbers, so a file
    that breaks them is refused here, where the file can be named, not in the recipe compiled from it."""
    steps = data["num_inference_steps"]
    if steps > MAX_STEPS:
        raise SensitivityError(f"$.num_inference_steps is {steps}; a recipe has at most {MAX_STEPS} steps "
                               "(is this a file qcompile calibrate wrote?)")
    declared = data["family"]
    try:
        family = get_family(declared["name"], declared["variant"])
    except FamilyError as exc:
        raise SensitivityError(f"$.family: {exc}; the file must name a family `qcompile families` lists") from None
    expected = sensitivity_family(family)
    found = [(c["name"], c["num_layers"], c.get("layers")) for c in declared["components"]]
    wanted = [(c["name"], c["num_layers"], c.get("layers")) for c in expected["components"]]
    if found != wanted:
        raise SensitivityError(
            f"$.family.components is {_layout(found)}, but {family.display_name} has {_layout(wanted)}; "
            "re-run qcompile calibrate for this family")
    if sorted(declared["attention_kinds"]) != sorted(expected["attention_kinds"]):
        raise SensitivityError(
            f"$.family.attention_kinds is {', '.join(declared['attention_kinds'])}, but {family.display_name} has "
            f"{', '.join(expected['attention_kinds'])}; re-run qcompile calibrate for this family")


def _check_masks(data: Mapping[str, Any]) -> None:
    """`masks` (format 2) speaks of the family's kinds: masked kinds among them, and one entry per kind."""
    masks = data.get("masks")
    if masks is None:
        return
    kinds = data["family"]["attention_kinds"]
    unknown = [kind for kind in masks["masked_kinds"] if kind not in kinds]
    if unknown:
        raise SensitivityError(f"$.masks.masked_kinds names {', '.join(unknown)}, not a kind of the file's family "
                               f"({', '.join(kinds)}); re-run qcompile calibrate for this family")
    if sorted(masks["kinds"]) != sorted(kinds):
        raise SensitivityError(f"$.masks.kinds has entries for {', '.join(sorted(masks['kinds'])) or 'no kind'}, but "
                               f"the family's kinds are {', '.join(kinds)}; re-run qcompile calibrate for this family")


def _layout(components: list[tuple[str, int, Any]]) -> str:
    return ", ".join(f"{name} ({layers or count} layers)" for name, count, layers in components)


def load_sensitivity(source: str | os.PathLike[str] | Mapping[str, Any]) -> Sensitivity:
    """Load a sensitivity file from a path or a parsed mapping. Raises SensitivityError naming the file."""
    if isinstance(source, Mapping):
        return sensitivity_from_dict(source)
    path = Path(source)
    try:
        data = read_json_file(path, max_bytes=MAX_SENSITIVITY_BYTES)
    except FileNotFoundError:
        raise SensitivityError(
            f"{path}: no such sensitivity file; measure one with: qcompile calibrate --pipeline tiny "
            f"--family FAMILY --steps N -o {path}"
        ) from None
    except InputRefused as exc:
        raise SensitivityError(exc.located(str(path))) from None
    except OSError as exc:
        raise SensitivityError(f"{path}: cannot read: {exc.strerror or exc}") from None
    try:
        return sensitivity_from_dict(data)
    except SensitivityError as exc:
        raise SensitivityError(f"{path}: {exc}") from None
