"""The record one observed or shadowed attention call produces: its FP8 output's error against native."""

from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class CallRecord:
    """Error of one attention call's FP8 output against its native output on the same inputs (the attention
    outputs, BSND, before the output projection), metrics as in runtime.metrics.

    `branch` is "cond" or "uncond" (classifier-free guidance pass); `used` says which output the pipeline
    continued with: "fp8" under a loaded plan with an observer, "native" in shadow mode.
    """

    component: str
    step: int
    layer: int
    kind: str
    branch: str
    backend: str
    cos_sim: float
    rel_l1: float
    rmse: float
    used: str

    def to_dict(self) -> dict:
        return asdict(self)
