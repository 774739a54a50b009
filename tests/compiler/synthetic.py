"""Generated sensitivity data: per-cell errors shaped like real Wan measurements (edge steps and the first
layers most sensitive, plus noise), for testing the recipe generator over many inputs quickly."""

from __future__ import annotations

import random
from collections.abc import Callable

from qcompiler.compile.resolve import predict_expert_schedule
from qcompiler.families import get_family
from qcompiler.suggest.sensitivity import Sensitivity, sensitivity_family, sensitivity_from_dict

NUMERICS = {"hadamard_rotation": True, "rotation_seed": 425500, "query_block_tokens": 128, "kv_block_tokens": 256,
            "k_mean_subtraction": False}


def synthetic_sensitivity(
    *,
    steps: int,
    seed: int,
    noise: float = 0.004,
    single_expert: bool = False,
    worst_cos: Callable[[str, str, int, int], float] | None = None,
    family_name: str | None = None,
) -> Sensitivity:
    family = get_family(family_name or ("wan2.1-t2v-1.3b" if single_expert else "wan2.2-i2v-a14b"), "tiny")
    schedule = predict_expert_schedule(family, steps)
    rng = random.Random(seed)
    cells = []
    for step, component in enumerate(schedule):
        for kind in family.kinds:
            for layer in range(family.num_layers(component, kind)):
                if worst_cos is not None:
                    cos = worst_cos(component, kind, step, layer)
                else:
                    cos = 0.999 - (0.008 if step in (0, steps - 1) else 0.0) - (0.004 if layer < 3 else 0.0)
                    cos -= rng.random() * noise
                rel = (1.0 - cos) * 2.5
                cells.append({
                    "component": component, "kind": kind, "step": step, "layer": layer, "calls": 2,
                    "flops": 4.0 * 2 * 192 * (192 if kind == "self" else 16) * 64 * 2,
                    "cos_sim": {"mean": min(1.0, cos + 0.0004), "worst": cos},
                    "rel_l1": {"mean": rel * 0.8, "worst": rel},
                    "rmse": {"mean": rel * 0.1, "worst": rel * 0.12},
                })
    data = {
        "sensitivity_format": 1,
        "producer": {"name": "qcompile", "version": "0.1.0"},
        "family": sensitivity_family(family),
        "num_inference_steps": steps,
        "numerics": dict(NUMERICS),
        "measured": {"backend": "synthetic", "device": "none", "pipeline": "generated", "seeds": [seed],
                     "prompts": ["generated"], "samples": 1, "branches": ["cond", "uncond"], "guidance_scale": 5.0,
                     "height": 16, "width": 16, "num_frames": 9, "versions": {}, "elapsed_s": 0.0},
        "cells": cells,
    }
    return sensitivity_from_dict(data)
