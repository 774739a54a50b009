"""What a plan puts on FP8: share of attention calls and of attention FLOPs, from the family's reference shapes.

FLOPs per attention call = 4 * B * H * S_q * S_kv * D (two matmuls, QK^T and PV, of 2*S_q*S_kv*D each).
Each step runs one component (per the plan's expert_schedule), every layer of it, each attention kind, once
per CFG branch. Shares are ratios, so the CFG factor and batch cancel but are kept for the absolute figures.
"""

from __future__ import annotations

from collections import namedtuple

from qcompiler.plan.format import Plan


class PlanCost(namedtuple("PlanCost", ["calls_total", "calls_fp8", "flops_total", "flops_fp8", "shapes_description"])):

    # Fields:
    #   calls_total: int
    #   calls_fp8: int
    #   flops_total: float
    #   flops_fp8: float
    #   shapes_description: str
    __slots__ = ()

    @property
    def call_share(self) -> float:
        return self.calls_fp8 / self.calls_total if self.calls_total else 0.0

    @property
    def flop_share(self) -> float:
        return self.flops_fp8 / self.flops_total if self.flops_total else 0.0


def flops_per_call(plan: Plan, component: str, kind: str) -> float:
    shapes = plan.data["family"]["reference_shapes"]
    spec = next(c for c in plan.components if c["name"] == component)
    batch = shapes.get("batch", 1)
    query = shapes["self_tokens"]
    keys = query if kind == "self" else shapes.get("text_tokens", 0) + shapes.get("image_tokens", 0)
    return 4.0 * batch * spec["num_heads"] * query * keys * spec["head_dim"]


def plan_cost(plan: Plan) -> PlanCost:
    shapes = plan.data["family"]["reference_shapes"]
    branches = 2 if shapes.get("cfg", True) else 1
    calls_total = calls_fp8 = 0
    flops_total = flops_fp8 = 0.0
    for step, component in enumerate(plan.expert_schedule):
        for kind in plan.attention_kinds:
            row = plan.table(component, kind)[step]
            per_call = flops_per_call(plan, component, kind)
            fp8_layers = sum(row)
            calls_total += branches * len(row)
            calls_fp8 += branches * fp8_layers
            flops_total += branches * len(row) * per_call
            flops_fp8 += branches * fp8_layers * per_call
    return PlanCost(calls_total, calls_fp8, flops_total, flops_fp8, shapes.get("description", ""))
