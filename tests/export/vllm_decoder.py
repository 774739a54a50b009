"""An independent decoder of vllm-omni 0.30 diffusion settings, written from vllm-omni's documented semantics
(../shared/reference/npu-entry-points.md and the 0.30.0 wheel's data.py / attention/layer.py), NOT from
qcompiler.targets.vllm_omni:

- selectors are a string of comma-separated non-negative ints and inclusive "A-B" ranges (whitespace and empty
  tokens ignored), or a list of ints (stage config / Python);
- a self-attention call is quantized iff diffusion_kv_cache_dtype is set (not auto/float) and its step is not in
  skip_steps and its layer is not in skip_layers; one layer list for both experts; cross-attention never;
- the step is the global 0-based denoising index; each step is served by one expert, from vllm-omni's own
  scheduler with boundary_ratio/flow_shift (stage config) or its defaults 0.875 / 5.0 and whatever a request
  sends, so with nothing pinned any split of the steps between the experts can happen.
"""

from __future__ import annotations

import shlex
from collections.abc import Mapping

import yaml

from qcompiler.plan.format import Plan

from . import routings

Cell = tuple[str, str, int, int]
NOT_QUANTIZED = (None, "auto", "float")


def selector(value) -> set[int]:
    if isinstance(value, list):
        assert all(isinstance(v, int) and v >= 0 for v in value), value
        return set(value)
    indices: set[int] = set()
    for token in value.split(","):
        token = "".join(token.split())
        if not token:
            continue
        low, sep, high = token.partition("-")
        assert low.isdigit() and (not sep or high.isdigit()), f"not a vllm-omni selector token: {token!r}"
        indices.update(range(int(low), int(high) + 1) if sep else {int(low)})
    return indices


def flags(line: str) -> dict[str, str]:
    """--name VALUE pairs (shell-quoted) -> {name: VALUE}, in vllm-omni's dest spelling."""
    words = shlex.split(line)
    assert len(words) % 2 == 0, line
    return {words[i].removeprefix("--").replace("-", "_"): words[i + 1] for i in range(0, len(words), 2)}


def yaml_args(text: str) -> dict:
    args = yaml.safe_load(text)["engine_args"]
    for key in ("diffusion_kv_cache_skip_steps", "diffusion_kv_cache_skip_layers"):
        if key in args:
            assert isinstance(args[key], (str, list)), f"{key} must be a selector string or list: {args[key]!r}"
    return args


def possible_routings(plan: Plan, engine_args: Mapping) -> list[tuple[str, ...]]:
    """The expert schedules vllm-omni can run with these settings (requests sending no flow_shift/solver when
    both are pinned, as the export says it assumes)."""
    if "boundary_ratio" in engine_args and "flow_shift" in engine_args:
        return [routings.vllm_omni_unipc(plan, float(engine_args["flow_shift"]), float(engine_args["boundary_ratio"]))]
    return routings.every_split(plan)


def decode(plan: Plan, engine_args: Mapping, routing: tuple[str, ...] | None = None) -> set[Cell]:
    """The cells vllm-omni quantizes with these settings when the steps are served as `routing` says (default:
    the plan's own expert_schedule)."""
    routing = plan.expert_schedule if routing is None else routing
    if engine_args.get("diffusion_kv_cache_dtype") in NOT_QUANTIZED:
        return set()
    skip_steps = selector(engine_args.get("diffusion_kv_cache_skip_steps", ""))
    skip_layers = selector(engine_args.get("diffusion_kv_cache_skip_layers", ""))
    layers = {c: plan.family.num_layers(c, "self") for c in plan.component_names}
    return {
        (component, "self", step, layer)
        for step, component in enumerate(routing)
        if step not in skip_steps
        for layer in range(layers[component])
        if layer not in skip_layers
    }


def mismatches(plan: Plan, engine_args: Mapping) -> list[tuple[tuple[str, ...], set[Cell], set[Cell]]]:
    """(routing, decoded, planned) for every possible routing where the settings differ from the plan."""
    out = []
    for routing in possible_routings(plan, engine_args):
        decoded, planned = decode(plan, engine_args, routing), routings.planned_cells(plan, routing)
        if decoded != planned:
            out.append((routing, decoded, planned))
    return out


def is_safe(plan: Plan, engine_args: Mapping) -> bool:
    """No possible routing quantizes a cell the plan keeps native."""
    return all(decode(plan, engine_args, r) <= routings.planned_cells(plan, r)
               for r in possible_routings(plan, engine_args))


def planned(plan: Plan) -> set[Cell]:
    """The plan's quantized cells on the plan's own expert schedule."""
    return routings.planned_cells(plan, plan.expert_schedule)
