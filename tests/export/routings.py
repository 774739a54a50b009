"""Which expert serves each step, computed the way each engine computes it (not from qcompiler):

- vllm-omni 0.30 (UniPC solver): its FlowUniPCMultistepScheduler, rebuilt here with numpy and torch exactly as
  the wheel's code does it, and its `t < boundary_ratio * T` test on an int64 tensor;
- a diffusers pipeline (xDiT, MindIE-SD users): diffusers' own UniPCMultistepScheduler with flow sigmas;
- any routing: every split of the steps into a prefix served by the first expert and the rest by the second
  (the timesteps fall monotonically, and flow_shift, boundary_ratio and the solver can move the split anywhere).
"""

from __future__ import annotations

import numpy as np
import torch

from qcompiler.plan.format import Plan


def vllm_omni_unipc(plan: Plan, flow_shift: float, boundary_ratio: float) -> tuple[str, ...]:
    names = plan.component_names
    train = plan.data["family"]["num_train_timesteps"]
    steps = plan.num_inference_steps
    alphas = np.linspace(1, 1 / train, train)[::-1].copy()
    training_sigmas = torch.from_numpy(1.0 - alphas).to(dtype=torch.float32)
    sigma_max, sigma_min = training_sigmas[0].item(), training_sigmas[-1].item()
    sigmas = np.linspace(sigma_max, sigma_min, steps + 1).copy()[:-1]
    sigmas = flow_shift * sigmas / (1 + (flow_shift - 1) * sigmas)
    timesteps = torch.from_numpy(sigmas * train).to(dtype=torch.int64)
    boundary = boundary_ratio * train
    return tuple(names[1] if bool(t < boundary) else names[0] for t in timesteps)


def diffusers_unipc(plan: Plan, flow_shift: float, boundary_ratio: float) -> tuple[str, ...]:
    from diffusers import UniPCMultistepScheduler

    names = plan.component_names
    train = plan.data["family"]["num_train_timesteps"]
    scheduler = UniPCMultistepScheduler(num_train_timesteps=train, prediction_type="flow_prediction",
                                        use_flow_sigmas=True, flow_shift=flow_shift)
    scheduler.set_timesteps(plan.num_inference_steps)
    boundary = boundary_ratio * train
    return tuple(names[0] if bool(t >= boundary) else names[1] for t in scheduler.timesteps)


def every_split(plan: Plan) -> list[tuple[str, ...]]:
    names = plan.component_names
    steps = plan.num_inference_steps
    if len(names) < 2:
        return [(names[0],) * steps]
    return [(names[0],) * split + (names[1],) * (steps - split) for split in range(steps + 1)]


def planned_cells(plan: Plan, routing: tuple[str, ...]) -> set[tuple[str, str, int, int]]:
    """The plan's quantized cells when the steps are served as `routing` says."""
    return {
        (component, kind, step, layer)
        for step, component in enumerate(routing)
        for kind in plan.attention_kinds
        for layer, fp8 in enumerate(plan.table(component, kind)[step])
        if fp8
    }
