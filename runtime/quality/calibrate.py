"""`qcompile calibrate`: measure per-(component, kind, step, layer) FP8 sensitivity in shadow mode.

Every sample (one seed x one prompt) runs the pipeline once under runtime.shadow: each attention call computes
native and FP8 attention on the same inputs, records the error, and continues with native, so errors never
compound and every cell is measured on the inputs the native model really produces. The denoised latents are
not decoded (no frame is compared), which keeps a calibration close to the cost of the runs themselves.
Calls the quantized kernel cannot take (a mask that is not padding) are not measured; the file counts them per
kind, with the calls that ran packed and the kinds the model can mask (`masks`), so `suggest` picks the fallback.
Output: a sensitivity file (schemas/sensitivity.schema.json) that `qcompile suggest` turns into a recipe.
"""

from __future__ import annotations

import json
import time
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from qcompiler.families import get_family
from qcompiler.formats import Numerics
from qcompiler.suggest.sensitivity import SENSITIVITY_FORMAT, sensitivity_family, sensitivity_from_dict
from runtime.backends import resolve_quantized_backend
from runtime.call_record import CallRecord
from runtime.models import support_for_family
from runtime.quality.pipelines import (
    DEFAULT_PROMPT,
    FlopCounter,
    FrameSettings,
    call_kwargs,
    detect_variant,
    load_pipeline,
    progress_bar,
    progress_kwargs,
)
from runtime.quality.report import versions
from runtime.shadowing import shadow


@dataclass(frozen=True)
class CalibrateOptions:
    """What to measure. `backend`: "auto" (an NPU or GPU kernel where present, else the CPU reference),
    or any name in runtime.backends.registry. `numerics`: the FP8 numerics measured (a suggested recipe carries the same)."""

    family: str
    steps: int
    pipeline: str = "tiny"
    seeds: tuple[int, ...] = (0,)
    prompts: tuple[str, ...] = (DEFAULT_PROMPT,)
    backend: str = "auto"
    numerics: Numerics = field(default_factory=Numerics)
    frames: FrameSettings = field(default_factory=FrameSettings)
    progress: bool = True


def _pick_backend(requested: str, numerics: Numerics) -> str:
    if requested != "auto":
        return requested
    backend, _ = resolve_quantized_backend("auto", numerics)
    return backend.name if backend is not None else "reference"


def _cells(records: list[CallRecord], samples: int, flops_per_call) -> list[dict[str, Any]]:
    grouped: dict[tuple[str, str, int, int], list[CallRecord]] = defaultdict(list)
    for record in records:
        grouped[(record.component, record.kind, record.step, record.layer)].append(record)
    cells = []
    for (component, kind, step, layer), members in sorted(grouped.items()):
        count = len(members)
        cells.append({
            "component": component, "kind": kind, "step": step, "layer": layer, "calls": count,
            # FLOPs of this cell in ONE pipeline run: calls per run x FLOPs per call.
            "flops": count / samples * flops_per_call(component, kind),
            "cos_sim": {"mean": sum(r.cos_sim for r in members) / count, "worst": min(r.cos_sim for r in members)},
            "rel_l1": {"mean": sum(r.rel_l1 for r in members) / count, "worst": max(r.rel_l1 for r in members)},
            "rmse": {"mean": sum(r.rmse for r in members) / count, "worst": max(r.rmse for r in members)},
        })
    return cells


def _masks(family: Any, recorder: Any) -> dict[str, Any]:
    """The file's `masks`: the kinds the model support says can carry a mask (runtime/models/*.py), and per kind
    how the shadowed calls were served. `qcompile suggest` chooses the recipe's fallback from it."""
    declared = set(support_for_family(family).masked_kinds)
    kinds = {}
    for kind in family.kinds:
        entry: dict[str, Any] = {"packed_calls": recorder.packed_calls.get(kind, 0),
                                 "unservable_calls": recorder.unservable_calls.get(kind, 0)}
        if kind in recorder.unservable_reasons:
            entry["unservable_reason"] = recorder.unservable_reasons[kind][:1000]  # the schema's bound
        kinds[kind] = entry
    return {"masked_kinds": [kind for kind in family.kinds if kind in declared], "kinds": kinds}


def calibrate(options: CalibrateOptions, pipe: Any = None) -> dict[str, Any]:
    """Run shadow mode over every (prompt, seed) and return the sensitivity file's data (validated)."""
    family = get_family(options.family)  # FamilyError for an unknown name, before any model is built
    if pipe is None:
        pipe = load_pipeline(options.pipeline, family.name)
    variant = detect_variant(pipe, family.name)
    family = get_family(family.name, variant)
    backend = _pick_backend(options.backend, options.numerics)
    samples = [(prompt, seed) for prompt in options.prompts for seed in options.seeds]
    frames = options.frames.resolved(pipe, family)

    start = time.perf_counter()
    with progress_bar(len(samples) * options.steps, options.progress, "qcompile calibrate") as bar, \
            FlopCounter(pipe, family) as counter, \
            shadow(pipe, num_inference_steps=options.steps, backend=backend, numerics=options.numerics,
                   kinds=family.kinds) as recorder:
        for prompt, seed in samples:
            kwargs = call_kwargs(pipe, spec=options.pipeline, seed=seed, prompt=prompt, steps=options.steps,
                                 frames=frames, output_type="latent")
            pipe(**kwargs, **progress_kwargs(pipe, bar, options.steps))
        records = list(recorder.records)
        backend_name = recorder.backend
        masks = _masks(family, recorder)
    elapsed = time.perf_counter() - start
    branches = {r.branch for r in records}
    data = {
        "sensitivity_format": SENSITIVITY_FORMAT,
        "producer": {"name": "qcompile", "version": versions()["qcompile"]},
        "family": sensitivity_family(family),
        "num_inference_steps": options.steps,
        "numerics": {"dtype": options.numerics.dtype, **options.numerics.to_mapping()},
        "measured": {
            "backend": backend_name, "device": str(pipe.device), "pipeline": options.pipeline,
            "seeds": list(options.seeds), "prompts": list(options.prompts), "samples": len(samples),
            "branches": sorted(branches), "guidance_scale": frames.guidance_scale,
            "height": frames.height, "width": frames.width, "num_frames": frames.recorded_frames,
            "versions": versions(), "elapsed_s": elapsed,
        },
        "masks": masks,
        "cells": _cells(records, len(samples), counter.flops),
    }
    sensitivity_from_dict(data)  # the file we write must be one suggest can read
    return data


def sensitivity_json(data: dict[str, Any]) -> str:
    return json.dumps(data, indent=2, sort_keys=True, allow_nan=False) + "\n"
