"""Which denoising step (and CFG branch) each transformer forward belongs to, and which thread owns the call.

Source of truth: the pipeline's scheduler. Every diffusers pipeline call runs `scheduler.set_timesteps`, which
makes a new `scheduler.timesteps` tensor: a forward that sees a new tensor (or the first forward after the
pipeline's `__call__` was entered, see `enter_call`) starts a new pipeline call, and all per-call state is reset
right there (diffusers only resets hooks at the end of a call, and not at all if it raised). The step is
`scheduler.step_index` (i; shared by the cond and uncond passes, continuous across a two-expert switch),
cross-checked against the pipeline's current timestep so a loop that drifts from the scheduler fails loudly
instead of silently misaligning. What the current timestep is at a step is the model support's
`current_timesteps` of the scheduler's timesteps: the timestep itself, or Mochi's `1000 - t`. Which CFG branch a
forward serves is the model module's `branch` (runtime/models/).

A plan's step i is step i of the scheduler's full schedule (`num_inference_steps` steps). A call that starts
later in that schedule (video-to-video with strength < 1 runs only its last steps, without `set_begin_index`)
starts at the step whose timestep the pipeline runs first: `step_index` is None until the first
`scheduler.step`, and then the step is where that timestep sits in the schedule, as the scheduler itself
finds it.

Diffusion forcing (SkyReels-V2's SkyReelsV2DiffusionForcingPipeline; a model support with
`steps_are_loop_iterations`) gives every latent frame its own timestep and steps the frames with per-frame copies
of the scheduler, so neither `step_index` nor one timestep value can say the step. There a plan's step is the index
of the denoising loop's iteration: the pipeline's current timestep is the loop's row of per-frame timesteps, a new
tensor each iteration and the same one for every forward of it, and every frame computed in that iteration follows
that plan row. The loop's length is the pipeline's `num_timesteps` (the step matrix's rows: `num_inference_steps`
when synchronous, more with `ar_step > 0`), checked against the plan's step count; a long video runs one loop per
chunk, each starting again at step 0 and checked again.

A scheduler with no `step_index` (CogVideoX's DDIM and DPM schedulers) is followed by the pipeline's current
timestep instead: the denoising loop sets it to the loop's `t`, a new tensor each step and the same one for every
forward of a step, so a new `t` is the next step of the schedule holding its value.

Nothing here wraps or replaces `scheduler.step`: pipelines inspect its signature to decide whether to pass
`generator` and `eta` (CogVideoX's DPM scheduler draws its noise from `generator`), so a wrapper would have to
keep it exactly.

Per-call state belongs to one call in one thread: `enter_call`/`exit_call` (the pipeline's `__call__`, wrapped
by runtime/install.py) make the calling thread the owner for the whole call, and refuse another thread's
entry, or another thread's transformer forward, while it runs.
"""

from __future__ import annotations

import threading
from typing import Any

from runtime.diffusers_private import current_timestep
from runtime.errors import ConcurrentCallError, PlanMismatchError, StepCountError
from runtime.models import model_support
from runtime.models.base import COND


class CallContext:
    """The step and CFG branch of the transformer forward in progress (read by error records)."""

    def __init__(self) -> None:
        self.step = -1
        self.branch = COND


class StepTracker:
    def __init__(self, pipe: Any, num_steps: int | None, context: CallContext, fix_hint: str):
        self.pipe = pipe
        self.support = model_support(pipe)  # maps the forwards of a step to CFG branches
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
        self._owner_lock = threading.Lock()
        self._owner: threading.Thread | None = None  # the thread running a call of the pipeline (None: no call)
        self._depth = 0  # nested entries of the owner thread (a pipeline calling itself)
        self._fresh_call = False  # __call__ entered: the next forward starts a call, whatever its timesteps
        self._loop_timestep: Any = None  # schedulers without step_index: the loop's `t` of the current step
        # diffusion forcing: a plan step is a loop iteration (see the module docstring)
        self._loop_iterations = bool(getattr(self.support, "steps_are_loop_iterations", False))
        self._loop_length = 0  # diffusion forcing: iterations of the loop in progress (a long video's chunk)

    def enter_call(self) -> None:
        """The pipeline's `__call__` was entered in this thread: own the call, or refuse if another thread does."""
        me = threading.current_thread()
        with self._owner_lock:
            owner = self._owner
            if owner is not None and owner is not me:
                raise ConcurrentCallError(_concurrent_message(owner, "called the pipeline"))
            self._owner = me
            self._depth += 1
            if self._depth == 1:
                self._fresh_call = True

    def exit_call(self) -> None:
        with self._owner_lock:
            self._depth -= 1
            if self._depth == 0:
                self._owner = None

    def check_thread(self) -> None:
        """Refuse a transformer forward from another thread while a call of the pipeline runs (before the
        component hook changes anything)."""
        owner = self._owner
        if owner is not None and owner is not threading.current_thread():
            raise ConcurrentCallError(_concurrent_message(owner, "ran its transformer"))

    def check_unload(self) -> None:
        """Refuse to unload from another thread while a call runs (its remaining forwards would run stock)."""
        owner = self._owner
        if owner is not None and owner is not threading.current_thread():
            raise ConcurrentCallError(_concurrent_message(owner, "tried to unload the plan"))

    def foreign_thread(self) -> bool:
        """Whether a call of the pipeline runs in another thread than this one."""
        owner = self._owner
        return owner is not None and owner is not threading.current_thread()

    def begin_forward(self, component: str) -> int:
        """Called by a component hook before each transformer forward; returns the step. Raises on misalignment."""
        scheduler = self.pipe.scheduler
        timesteps = scheduler.timesteps
        if timesteps is not self._timesteps or self._fresh_call:
            self._begin_call(timesteps)
        step = getattr(scheduler, "step_index", _NO_STEP_INDEX)
        if self._loop_iterations:
            step = self._step_from_iteration()
        elif step is _NO_STEP_INDEX:
            step = self._step_from_loop()
        elif step is None:  # before the first scheduler.step of the call
            step = self._first_step(scheduler)
        if not self._loop_iterations:
            self._check_timestep(step)
        if step == self._last_step:
            self._forwards_in_step += 1
        else:
            self._last_step, self._forwards_in_step = step, 1
        self.context.step = step
        self.context.branch = self.support.branch(self._forwards_in_step)
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
        if self._loop_iterations:
            self._check_iterations()
        steps = len(timesteps)
        if self.num_steps is not None and steps != self.num_steps and not self._loop_iterations:
            raise StepCountError(
                f"the pipeline was called with {steps} denoising steps, expected {self.num_steps}: call it with "
                f"num_inference_steps={self.num_steps}, {self.fix_hint.format(steps=steps)}"
                + self._partial_schedule_note(timesteps)
            )
        self._timesteps = timesteps
        # what the pipeline's current timestep is at each step (the model's mapping: Mochi's loop sets 1000 - t);
        # one device sync per pipeline call
        self._values = [float(v) for v in self.support.current_timesteps(timesteps).tolist()]
        self._fresh_call = False
        self._loop_timestep = None
        self._last_step = -1
        self._forwards_in_step = 0
        self.pipeline_calls += 1

    def _check_iterations(self) -> None:
        """Diffusion forcing: refuse a denoising loop whose iteration count is not the plan's step count."""
        iterations = getattr(self.pipe, "num_timesteps", None)
        if not isinstance(iterations, int):
            raise PlanMismatchError(
                f"step tracking lost: {type(self.pipe).__name__} gives no num_timesteps (its denoising loop's "
                "length), so plan rows cannot be matched to loop iterations")
        self._loop_length = iterations
        if self.num_steps is not None and iterations != self.num_steps:
            raise StepCountError(
                f"the diffusion-forcing loop runs {iterations} iterations, expected {self.num_steps}: a plan's step is "
                "one iteration of the loop, which runs num_inference_steps iterations when synchronous (ar_step=0) "
                "and num_inference_steps + (frame blocks - 1) x ar_step when asynchronous; call it so that the loop "
                f"runs {self.num_steps} iterations, {self.fix_hint.format(steps=iterations)}")

    def _step_from_iteration(self) -> int:
        """Diffusion forcing: the step is the loop iteration, a new row of per-frame timesteps starting the next."""
        current = current_timestep(self.pipe)
        if current is None:
            raise PlanMismatchError(
                f"step tracking lost: {type(self.pipe).__name__} sets no current timestep, so plan rows cannot be "
                "matched to loop iterations")
        if current is self._loop_timestep:  # another forward (the uncond branch) of the same iteration
            return self._last_step
        step = self._last_step + 1
        if step >= self._loop_length:  # a long video's next chunk: a new loop, from the plan's step 0
            self._check_iterations()
            step = 0
        self._loop_timestep = current
        return step

    def _step_from_loop(self) -> int:
        """The step of a forward whose scheduler keeps no step index: from the loop's current timestep."""
        current = current_timestep(self.pipe)
        if current is None:
            raise PlanMismatchError(
                f"step tracking lost: the scheduler ({type(self.pipe.scheduler).__name__}) has no step_index and "
                f"the pipeline ({type(self.pipe).__name__}) sets no current timestep, so plan rows cannot be matched "
                "to steps")
        if current is self._loop_timestep:  # another forward of the same step
            return self._last_step
        value = float(current)
        start = self._last_step + 1
        found = next((i for i in range(start, len(self._values)) if self._values[i] == value), None)
        if found is None:
            raise PlanMismatchError(
                f"step tracking lost: the pipeline's current timestep {value:g} is not in the rest of its "
                f"scheduler's {len(self._values)}-step schedule after step {self._last_step}, so plan rows cannot "
                "be matched to steps")
        self._loop_timestep = current
        return found

    def _first_step(self, scheduler: Any) -> int:
        """The step of the call's first forward, before `scheduler.step` has set `step_index`."""
        begin = getattr(scheduler, "begin_index", None)
        if begin is not None:  # set_begin_index (e.g. 0)
            return begin
        current = current_timestep(self.pipe)
        if current is None:
            return 0
        value = float(current)
        found = [i for i, v in enumerate(self._values) if v == value]
        if not found:
            raise PlanMismatchError(
                f"step tracking lost: the pipeline's current timestep {value:g} is not in its scheduler's "
                f"{len(self._values)}-step schedule, so plan rows cannot be matched to steps"
            )
        # diffusers' schedulers (index_for_timestep) take the second of two equal timesteps, so that starting in
        # the middle of the schedule does not skip a sigma; follow them.
        return found[1] if len(found) > 1 else found[0]

    def _partial_schedule_note(self, timesteps: Any) -> str:
        """For a call that starts mid-schedule (strength < 1): how a plan's steps map, and what to pass."""
        current = current_timestep(self.pipe)
        if current is None:
            return ""
        values = [float(v) for v in self.support.current_timesteps(timesteps).tolist()]
        value = float(current)
        if value not in values or values.index(value) == 0:
            return ""
        start = values.index(value)
        return (
            f". This call starts at step {start} of its {len(values)}-step schedule (strength < 1 runs only the "
            f"last {len(values) - start} steps): a plan's steps are the scheduler's full schedule, not the steps "
            "run, so keep num_inference_steps equal to the plan's and let strength choose where the call starts "
            "(the steps it skips show as not run in the report)"
        )

    def _check_timestep(self, step: int) -> None:
        if not 0 <= step < len(self._values):
            raise PlanMismatchError(f"the scheduler is at step {step} of a {len(self._values)}-step call")
        current = current_timestep(self.pipe)
        if current is None:
            return
        value = float(current)
        if value != self._values[step]:
            raise PlanMismatchError(
                f"step tracking lost: the scheduler is at step {step} (current timestep {self._values[step]:g} "
                f"there) but the pipeline's current timestep is {value:g}; the denoising loop does not follow its scheduler, so "
                "plan rows cannot be matched to steps"
            )

    def observed_schedule(self) -> list[str | None]:
        """Per step, the component(s) that served it ("a+b" if both did), None for a step never run."""
        steps = self.num_steps if self.num_steps is not None else (max(self.observed, default=-1) + 1)
        return ["+".join(self.observed[s]) if s in self.observed else None for s in range(steps)]


_NO_STEP_INDEX = object()


def _concurrent_message(owner: threading.Thread, what: str) -> str:
    return (
        f"this pipeline is already running a call in thread {owner.name!r}; qcompile's plan state belongs to one "
        "call at a time: use one pipeline per thread (each with its own runtime.load), or wait for that call to "
        f"end (refused: thread {threading.current_thread().name!r} {what} while it runs)"
    )
