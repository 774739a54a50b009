"""An independent decoder of vllm-omni diffusion settings, written from vllm-omni's documented semantics
(../shared/reference/ascend-fp8-attention.md), NOT from qcompiler.targets.vllm_omni:

- selectors are comma-separated non-negative ints and inclusive "A-B" ranges; whitespace and empty tokens
  are ignored;
- a self-attention call runs FP8 iff diffusion_kv_cache_dtype == "fp8" and its step is not in skip_steps and
  its layer is not in skip_layers; one layer list for both experts; cross-attention never runs FP8;
- the step is the global 0-based denoising index; each step is served by one expert.
"""

from __future__ import annotations

import shlex
from collections.abc import Mapping

import yaml

from qcompiler.plan.format import Plan

Cell = tuple[str, str, int, int]


def selector(text: str) -> set[int]:
    """vllm-omni's selector grammar: comma-separated non-negative ints and inclusive "A-B" ranges;
    whitespace and empty tokens ignored."""
    indices: set[int] = set()
    for token in text.split(","):
        token = "".join(token.split())
        if not token:
            continue
        low, sep, high = token.partition("-")
        assert low.isdigit() and (not sep or high.isdigit()), f"not a vllm-omni selector token: {token!r}"
        indices.update(range(int(low), int(high) + 1) if sep else {int(low)})
    return indices


def flags(line: str) -> dict[str, str]:
    """--diffusion-kv-cache-x VALUE pairs (shell-quoted) -> {diffusion_kv_cache_x: VALUE}."""
    words = shlex.split(line)
    assert len(words) % 2 == 0, line
    return {words[i].removeprefix("--").replace("-", "_"): words[i + 1] for i in range(0, len(words), 2)}


def yaml_args(text: str) -> dict[str, str]:
    args = yaml.safe_load(text)["engine_args"]
    assert all(isinstance(v, str) for v in args.values()), f"selectors must load as strings: {args}"
    return args


def decode(plan: Plan, engine_args: Mapping[str, str]) -> set[Cell]:
    """The (component, kind, step, layer) cells vllm-omni runs in FP8 with these settings, for the steps each
    expert serves: FP8 iff dtype == "fp8" and step not skipped and layer not skipped; self-attention only."""
    if engine_args.get("diffusion_kv_cache_dtype") != "fp8":
        return set()
    skip_steps = selector(engine_args.get("diffusion_kv_cache_skip_steps", ""))
    skip_layers = selector(engine_args.get("diffusion_kv_cache_skip_layers", ""))
    layers = {c["name"]: c["num_layers"] for c in plan.components}
    return {
        (component, "self", step, layer)
        for step, component in enumerate(plan.expert_schedule)
        if step not in skip_steps
        for layer in range(layers[component])
        if layer not in skip_layers
    }


def planned(plan: Plan) -> set[Cell]:
    """The plan's FP8 cells on the steps each expert serves (what vllm-omni can run at all)."""
    return {
        (component, kind, step, layer)
        for step, component in enumerate(plan.expert_schedule)
        for kind in plan.attention_kinds
        for layer, fp8 in enumerate(plan.table(component, kind)[step])
        if fp8
    }
