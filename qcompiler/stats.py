"""What a plan puts on FP8: share of attention calls and of attention FLOPs, from reference shapes.

The one attention-FLOP formula lives here (`attention_flops`); the runtime's FLOP counter and the quality
report use it too. Each step runs one component (per the plan's expert_schedule), every layer of it, each
attention kind, once per CFG branch. Shares are ratios, so the CFG factor and batch cancel but are kept for
the absolute figures.
"""

from __future__ import annotations

from dataclasses import dataclass

from qcompiler.families.model import Family
from qcompiler.plan.format import Plan


def attention_flops(batch: int, heads: int, q_tokens: int, kv_tokens: int, head_dim: int) -> int:
    """FLOPs of one attention call: `4 * B * H * S_q * S_kv * D` (QK^T and PV, each 2 * S_q * S_kv * D)."""
    return 4 * batch * heads * q_tokens * kv_tokens * head_dim


@dataclass(frozen=True)
class PlanCost:
    calls_total: int
    calls_fp8: int
    flops_total: float
    flops_fp8: float
    shapes_description: str

    @property
    def call_share(self) -> float:
        return self.calls_fp8 / self.calls_total if self.calls_total else 0.0

    @property
    def flop_share(self) -> float:
        return self.flops_fp8 / self.flops_total if self.flops_total else 0.0


def plan_cost(plan: Plan, family: Family | None = None) -> PlanCost:
    """FP8 calls and FLOPs of `plan` at the reference shapes of `family` (by default the family the plan
    records, i.e. its variant's shapes)."""
    family = plan.family if family is None else family
    branches = 2 if family.cfg else 1
    calls_total = calls_fp8 = 0
    flops_total = flops_fp8 = 0.0
    for step, component in enumerate(plan.expert_schedule):
        for kind in plan.attention_kinds:
            row = plan.table(component, kind)[step]
            heads, head_dim = family.heads(component, kind)
            per_call = float(attention_flops(family.batch, heads, *family.call_tokens(kind), head_dim))
            fp8_layers = sum(row)
            calls_total += branches * len(row)
            calls_fp8 += branches * fp8_layers
            flops_total += branches * len(row) * per_call
            flops_fp8 += branches * fp8_layers * per_call
    return PlanCost(calls_total, calls_fp8, flops_total, flops_fp8, family.shapes_description)
