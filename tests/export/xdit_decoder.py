"""An independent decoder of xDiT (xfuser 0.7.0) hybrid attention schedules, written from xDiT's documented
semantics (../shared/reference/npu-entry-points.md; xfuser 0.7.0 attention_schedule.py, runtime_state.py,
runner_models/wan.py), NOT from qcompiler.targets.xdit:

- --use_hybrid_attn_schedule with --hybrid_attn_schedule "B0,B1,...": entry i is the backend of the i-th
  transformer forward (a counter shared by both experts); the schedule must have num_inference_steps x M
  entries, M = 2 with CFG (guidance_scale > 1) unless --use_cfg_parallel, else 1;
- one backend for every layer of the forward; cross-attention uses --cross_attention_backend when given, else
  the forward's backend; --attention_backend cannot be combined with the schedule;
- a backend is quantized iff it is one of xDiT's low-precision AttentionBackendType names.
- without --use_hybrid_attn_schedule every forward runs xDiT's default, full-precision attention.
"""

from __future__ import annotations

import shlex

from qcompiler.plan.format import Plan

from . import routings

Cell = tuple[str, str, int, int]
LOW_PRECISION = {"FLASH_3_FP8", "NVTE_FP8", "FLASH_4_FP4", "AITER_BF16FP8", "AITER_I8FP8", "AITER_FP8",
                 "AITER_MXFP8", "AITER_F8F6", "AITER_MXFP6", "AITER_F6F4", "AITER_MXFP4", "AITER_F4F4",
                 "AITER_FLYDSL_FP8", "AITER_MLA"}
FULL_PRECISION = {"SDPA", "SDPA_MATH", "SDPA_EFFICIENT", "SDPA_FLASH", "FLASH", "CUDNN", "FLASH_3", "FLASH_4",
                  "AITER", "AITER_BF16", "NPU"}


def parse(line: str) -> dict:
    words = shlex.split(line)
    args: dict = {}
    i = 0
    while i < len(words):
        key = words[i].removeprefix("--")
        if key in ("use_hybrid_attn_schedule", "use_cfg_parallel"):
            args[key] = True
            i += 1
        else:
            args[key] = words[i + 1]
            i += 2
    assert "attention_backend" not in args, "--attention_backend cannot be combined with the schedule"
    return args


def decode_forwards(plan: Plan, line: str, routing: tuple[str, ...], cfg: bool = True) -> list[set[Cell]]:
    """One set of quantized cells per transformer forward, as xDiT would run this command line."""
    args = parse(line) if line.strip() else {}
    if "num_inference_steps" in args:
        assert int(args["num_inference_steps"]) == plan.num_inference_steps
    if not args.get("use_hybrid_attn_schedule"):
        # Without the schedule xDiT runs its default full-precision attention on every forward.
        assert "hybrid_attn_schedule" not in args and "cross_attention_backend" not in args, (
            "the schedule and --cross_attention_backend are read only with --use_hybrid_attn_schedule")
        return [set() for _ in range(plan.num_inference_steps * (2 if cfg else 1))]
    steps = int(args["num_inference_steps"])
    per_step = 1 if args.get("use_cfg_parallel") or not cfg else 2
    backends = [token.strip().upper() for token in args["hybrid_attn_schedule"].split(",")]
    assert len(backends) == steps * per_step, "xDiT refuses a schedule of the wrong length"
    assert all(b in LOW_PRECISION | FULL_PRECISION for b in backends)
    cross = args.get("cross_attention_backend")
    forwards = []
    for index, backend in enumerate(backends):
        step = index // per_step
        component = routing[step]
        cells = set()
        for kind in plan.attention_kinds:
            used = (cross or backend) if kind == "cross" else backend
            if used.upper() in LOW_PRECISION:
                cells |= {(component, kind, step, layer) for layer in range(plan.family.num_layers(component, kind))}
        forwards.append(cells)
    return forwards


def possible_routings(plan: Plan, line: str, routing_mode: str) -> list[tuple[str, ...]]:
    family = plan.data["family"]
    args = parse(line) if line.strip() else {}
    if routing_mode == "pinned" and family["boundary_ratio"] is not None and "flow_shift" in args:
        # xDiT runs the diffusers pipeline: boundary_ratio from the checkpoint, flow_shift from --flow_shift.
        return [routings.diffusers_unipc(plan, float(args["flow_shift"]), family["boundary_ratio"])]
    # No --flow_shift written: the user's own flow_shift (or xDiT's runner default) decides, so any split.
    return routings.every_split(plan)
