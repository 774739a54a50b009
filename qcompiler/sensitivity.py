"""The sensitivity file (`qcompile calibrate` writes it, `qcompile suggest` reads it), as pure data.

Schema: schemas/sensitivity.schema.json. One entry per (component, kind, step, layer) that ran, with the
mean and the worst per-call error over every sample and CFG branch. Never imports torch.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from qcompiler.errors import QcompileError
from qcompiler.plan import FamilyDocument, dtype_numerics_mismatch
from qcompiler.schema_check import first_violation

SENSITIVITY_FORMAT = 1

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
        """(name, num_layers) in denoising order."""
        return tuple((c["name"], c["num_layers"]) for c in self.data["family"]["components"])

    @property
    def measured(self) -> Mapping[str, Any]:
        return self.data["measured"]


def sensitivity_from_dict(data: Any) -> Sensitivity:
    """Validate `data` against the schema and index its cells. Raises SensitivityError."""
    if not isinstance(data, Mapping):
        raise SensitivityError(f"a sensitivity file is a JSON object, found {type(data).__name__}")
    version = data.get("sensitivity_format")
    if version != SENSITIVITY_FORMAT:
        raise SensitivityError(
            f"sensitivity_format {version!r} is not supported (this qcompile reads format {SENSITIVITY_FORMAT}); "
            "re-run qcompile calibrate with this qcompile"
        )
    violation = first_violation("sensitivity", data)
    if violation:
        raise SensitivityError(f"does not match schemas/sensitivity.schema.json at {violation[0]}: {violation[1]}")
    mismatch = dtype_numerics_mismatch(data.get("dtype", "fp8_e4m3_per_block"), data["numerics"])
    if mismatch:
        raise SensitivityError(f"numerics: {mismatch}; re-run qcompile calibrate")
    layers = {c["name"]: c["num_layers"] for c in data["family"]["components"]}
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
        if cell.component not in layers or cell.kind not in kinds:
            raise SensitivityError(f"cells/{index}: {cell.component}/{cell.kind} is not in the file's family structure")
        if cell.step >= steps or cell.layer >= layers[cell.component]:
            raise SensitivityError(
                f"cells/{index}: step {cell.step}, layer {cell.layer} is outside {steps} steps x "
                f"{layers[cell.component]} layers of {cell.component}"
            )
        if cell.key in cells:
            raise SensitivityError(f"cells/{index}: cell {cell.key} is listed twice")
        cells[cell.key] = cell
    return Sensitivity(data=data, cells=cells)


def load_sensitivity(source: str | os.PathLike[str] | Mapping[str, Any]) -> Sensitivity:
    """Load a sensitivity file from a path or a parsed mapping. Raises SensitivityError naming the file."""
    if isinstance(source, Mapping):
        return sensitivity_from_dict(source)
    path = Path(source)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise SensitivityError(
            f"{path}: no such sensitivity file; measure one with: qcompile calibrate --pipeline tiny "
            f"--family FAMILY --steps N -o {path}"
        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise SensitivityError(f"{path}: cannot read: {exc}") from None
    except json.JSONDecodeError as exc:
        raise SensitivityError(f"{path}:{exc.lineno}:{exc.colno}: not valid JSON: {exc.msg}") from None
    try:
        return sensitivity_from_dict(data)
    except SensitivityError as exc:
        raise SensitivityError(f"{path}: {exc}") from None
