"""Which denoising step (and CFG branch) each transformer forward belongs to.

Source of truth: the pipeline's scheduler. Every diffusers pipeline call runs `scheduler.set_timesteps`, which
makes a new `scheduler.timesteps` tensor: a forward that sees a new tensor starts a new pipeline call, and all
per-call state is reset right there (diffusers only resets hooks at the end of a call, and not at all if it
raised). The step is `scheduler.step_index` (None during step 0, then i; shared by the cond and uncond passes,
continuous across Wan2.2's expert switch), cross-checked against `pipe._current_timestep` so a loop that drifts
from the scheduler fails loudly instead of silently misaligning.
"""

from __future__ import annotations

from typing import Any

from runtime.errors import PlanMismatchError, StepCountError

COND, UNCOND = "cond", "uncond"


class CallContext:
    """The step and CFG branch of the transformer forward in progress (read by error records)."""

    def __init__(self) -> None:
        self.step = -1
        self.branch = COND


class StepTracker:
    def __init__(self, pipe: Any, num_steps: int | None, context: CallContext, fix_hint: str):
        self.pipe = pipe
        self.num_steps = num_steps  # None: any step count
        self.context = context
        # How to fix a step-count mismatch, formatted with {steps} (the count the pipeline was called with),
        # e.g. "or recompile the plan for {steps} steps: qcompile recipe.yaml --steps {steps} -o plan.json".
        self.fix_hint = fix_hint
        self.pipeline_calls = 0
        self.observed: dict[int, list[str]] = {}  # step -> components seen serving it, in order
        self._timesteps: Any = None  # the scheduler's timesteps tensor of the current call (identity = call)
        self._values: list[float] = []
        self._last_step = -1
        self._forwards_in_step = 0

    def begin_forward(self, component: str) -> int:
        """Called by a component hook before each transformer forward; returns the step. Raises on misalignment."""
        scheduler = self.pipe.scheduler
        timesteps = scheduler.timesteps
        if timesteps is not self._timesteps:
            self._begin_call(timesteps)
        step = scheduler.step_index
        if step is None:  # before the first scheduler.step of the call
            step = getattr(scheduler, "begin_index", None) or 0
        self._check_timestep(step)
        if step == self._last_step:
            self._forwards_in_step += 1
        else:
            self._last_step, self._forwards_in_step = step, 1
        # The Wan pipelines run cond first, then uncond when CFG is on (guidance_scale > 1).
        self.context.step = step
        self.context.branch = COND if self._forwards_in_step == 1 else UNCOND
        seen = self.observed.setdefault(step, [])
        if component not in seen:
            seen.append(component)
        return step

    def _begin_call(self, timesteps: Any) -> None:
        if timesteps is None:
            raise PlanMismatchError(
                "a planned transformer ran outside a denoising loop (its pipeline's scheduler has no timesteps); "
                "call the pipeline itself, not the transformer"
            )
        steps = len(timesteps)
        if self.num_steps is not None and steps != self.num_steps:
            raise StepCountError(
                f"the pipeline was called with {steps} denoising steps, expected {self.num_steps}: call it with "
                f"num_inference_steps={self.num_steps}, {self.fix_hint.format(steps=steps)}"
            )
        self._timesteps = timesteps
        self._values = [float(v) for v in timesteps.tolist()]  # one device sync per pipeline call
        self._last_step = -1
        self._forwards_in_step = 0
        self.pipeline_calls += 1

    def _check_timestep(self, step: int) -> None:
        if not 0 <= step < len(self._values):
            raise PlanMismatchError(f"the scheduler is at step {step} of a {len(self._values)}-step call")
        current = getattr(self.pipe, "_current_timestep", None)
        if current is None:
            return
        value = float(current)
        if value != self._values[step]:
            raise PlanMismatchError(
                f"step tracking lost: the scheduler is at step {step} (timestep {self._values[step]:g}) but the "
                f"pipeline's current timestep is {value:g}; the denoising loop does not follow its scheduler, so "
                "plan rows cannot be matched to steps"
            )

    def observed_schedule(self) -> list[str | None]:
        """Per step, the component(s) that served it ("a+b" if both did), None for a step never run."""
        steps = self.num_steps if self.num_steps is not None else (max(self.observed, default=-1) + 1)
        return ["+".join(self.observed[s]) if s in self.observed else None for s in range(steps)]
