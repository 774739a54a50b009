"""The plugin's state in one vllm-omni process: the verified plan, the tagged attention layers of each Wan expert,
the per-call gate that replaces vllm-omni's, and the per-request bookkeeping that becomes the executed table.

Flow: `activate(plan)` installs a module-registration hook. When vllm-omni's Wan pipeline assigns an expert
(`self.transformer = ...`, `self.transformer_2 = ...`), the hook checks its layer and head counts against the
plan and replaces `_should_apply_kv_cache_quant` on each of its attention layers by a `CellGate` that answers the
plan's cell for (component, kind, current step, layer). vllm-omni's own `_with_kv_cache_dtype` then passes
`kv_cache_dtype="fp8"` or `"float"` to its own kernels, exactly as with its skip lists. The pipeline's `forward`
is wrapped to check each request's step count and to write the executed table when it ends.
"""

from __future__ import annotations

import logging
import os
import weakref
from collections.abc import Callable
from typing import Any

import torch

from runtime.integrations.vllm_omni import PLAN_ENV, REPORT_DIR_ENV
from runtime.integrations.vllm_omni import vllm_omni_private as omni
from runtime.integrations.vllm_omni.executed import RequestLog
from runtime.integrations.vllm_omni.qcompile_api import (
    FamilyError,
    Plan,
    QcompileError,
    get_family,
    load_plan,
    vllm_omni_numerics_notes,
)

logger = logging.getLogger("qcompile.vllm_omni")

PLAN_DTYPE_KV_CACHE = {"fp8_e4m3_per_block": "fp8"}  # plan dtype -> the --diffusion-kv-cache-dtype that runs it


class PluginRefusal(QcompileError):
    """The plugin cannot make vllm-omni follow the plan; raised instead of serving something else."""


class CellGate:
    """Stands in for one Attention instance's `_should_apply_kv_cache_quant`: the plan's cell for this layer at
    the current step."""

    __slots__ = ("state", "component", "kind", "layer")

    def __init__(self, state: PluginState, component: str, kind: str, layer: int):
        self.state, self.component, self.kind, self.layer = state, component, kind, layer

    def __call__(self) -> bool:
        return self.state.decide(self.component, self.kind, self.layer)

    def __repr__(self) -> str:
        return f"CellGate({self.component}, {self.kind}, layer {self.layer})"


class _Tagged:
    """One attention layer the plugin took over, and what to restore on deactivate()."""

    __slots__ = ("module", "component", "kind", "layer", "path", "disable_kv_quant")

    def __init__(self, module: Any, component: str, kind: str, layer: int, path: str):
        self.module, self.component, self.kind, self.layer, self.path = module, component, kind, layer, path
        self.disable_kv_quant = getattr(module, omni.DISABLE_QUANT_ATTR)


class PluginState:
    """The plan in force in this process. `step_source` returns the current denoising step (vllm-omni's forward
    context by default)."""

    def __init__(self, plan: Plan, *, plan_path: str, report_dir: str, vllm_omni_version: str | None,
                 step_source: Callable[[], int | None] = omni.denoise_step):
        self.plan = plan
        self.step_source = step_source
        self.kv_cache_dtype = PLAN_DTYPE_KV_CACHE[plan.data["dtype"]]
        self.tagged: dict[str, list[_Tagged]] = {}  # component -> its attention layers
        self.tagged_ids: set[int] = set()
        self.pipelines: weakref.WeakSet = weakref.WeakSet()
        self.log = RequestLog(plan, plan_path=plan_path, report_dir=report_dir, vllm_omni_version=vllm_omni_version,
                              kv_cache_dtype=self.kv_cache_dtype)
        for note in vllm_omni_numerics_notes(plan) if plan.uses_quantized() else ():
            self.log.notes.append(note)
            logger.warning("qcompile plan: %s", note)
        self._registration_hook: Any = None
        self._tripwire: Any = None
        # vllm-omni attention layer -> the tripwire on it, for every layer built while the plan is in force
        self._layer_tripwires: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
        self._requests_begun = 0

    # -- install -------------------------------------------------------------------------------------------
    def install_hooks(self) -> None:
        self._registration_hook = torch.nn.modules.module.register_module_module_registration_hook(self._on_register)
        # Fail closed: any vllm-omni attention call that the plugin did not tag (a model other than Wan, or a Wan
        # tree it did not recognise) refuses instead of running vllm-omni's own policy under a plan the user
        # believes in force. Each attention layer built from now on carries its own tripwire (_on_register), for
        # as long as the plan is in force: a model built after the first request is checked as the first was.
        # This process-wide hook covers layers built before activate(); it runs on every module call, so it is
        # removed once the first request has shown the layers it ran tagged.
        self._tripwire = torch.nn.modules.module.register_module_forward_pre_hook(self._check_tagged)

    def deactivate(self) -> None:
        """Remove every hook and restore vllm-omni's own gate on every tagged layer."""
        for handle in (self._registration_hook, self._tripwire, *self._layer_tripwires.values()):
            if handle is not None:
                handle.remove()
        self._registration_hook = self._tripwire = None
        self._layer_tripwires.clear()
        for layers in self.tagged.values():
            for tagged in layers:
                tagged.module.__dict__.pop(omni.GATE_METHOD, None)
                setattr(tagged.module, omni.DISABLE_QUANT_ATTR, tagged.disable_kv_quant)
        for pipe in list(self.pipelines):
            pipe.__dict__.pop("forward", None)
        self.tagged.clear()
        self.tagged_ids.clear()

    def _on_register(self, parent: torch.nn.Module, name: str, submodule: Any) -> None:
        if (isinstance(submodule, torch.nn.Module) and hasattr(submodule, omni.PER_CALL_DTYPE_METHOD)
                and submodule not in self._layer_tripwires):
            self._layer_tripwires[submodule] = submodule.register_forward_pre_hook(self._check_tagged)
        if (isinstance(submodule, torch.nn.Module) and name in self.plan.component_names
                and name in getattr(parent, omni.DIT_MODULES_ATTR, ())):
            self.tag_component(parent, name, submodule)

    def _check_tagged(self, module: torch.nn.Module, args: Any) -> None:
        if hasattr(module, omni.PER_CALL_DTYPE_METHOD) and id(module) not in self.tagged_ids:
            prefix = getattr(module, omni.PREFIX_ATTR, "") or type(module).__name__
            raise PluginRefusal(
                f"{PLAN_ENV} names a plan for {self.plan.family_name}, but vllm-omni attention layer {prefix!r} "
                f"runs untagged (tagged: {self._tagged_summary()}): the plugin only follows plans in vllm-omni's "
                "Wan pipelines (Wan22Pipeline and its I2V/TI2V variants). Unset the variable for this model, or "
                "serve the Wan model the plan was compiled for"
            )

    def _tagged_summary(self) -> str:
        return ", ".join(f"{c}: {len(v)} layers" for c, v in self.tagged.items()) or "nothing"

    # -- tagging -------------------------------------------------------------------------------------------
    def tag_component(self, pipe: torch.nn.Module, name: str, model: torch.nn.Module) -> None:
        """Check one expert against the plan and put a CellGate on each of its attention layers."""
        family = self.plan.family
        component = family.component(name)
        where = f"{type(pipe).__name__}.{name}"
        lists = [_submodule(model, b.path) for b in component.block_lists]
        if any(blocks is None for blocks in lists):
            missing = next(b.path for b, blocks in zip(component.block_lists, lists, strict=True) if blocks is None)
            raise PluginRefusal(f"{where} has no `{missing}`: not a vllm-omni Wan transformer; unset {PLAN_ENV}")
        if any(type(b).__name__ == omni.MISSING_LAYER_CLASS for blocks in lists for b in blocks):
            raise PluginRefusal(
                f"{where}: pipeline parallelism puts some blocks on other stages; the plugin supports Ulysses "
                "sequence parallelism, tensor and CFG parallelism, not pipeline parallelism: drop the "
                "pipeline-parallel setting or unset " + PLAN_ENV
            )
        config = getattr(model, "config", None)
        counts = [len(blocks) for blocks in lists]
        found = (counts[0] if len(counts) == 1 else tuple(counts), getattr(config, "num_attention_heads", None),
                 getattr(config, "attention_head_dim", None))
        lengths = [b.length for b in component.block_lists]
        wanted = (lengths[0] if len(lengths) == 1 else tuple(lengths), component.num_heads, component.head_dim)
        if found != wanted:
            raise PluginRefusal(
                f"{where} has {found[0]} layers, {found[1]} heads x head dim {found[2]}; the plan for "
                f"{self.plan.family_name} expects {wanted[0]} layers, {wanted[1]} heads x head dim {wanted[2]}: "
                "serve the model the plan was compiled for, or compile the recipe for this model's family"
            )
        layers: list[_Tagged] = []
        for kind in self.plan.attention_kinds:
            for layer in range(family.num_layers(name, kind)):
                path = f"{family.module_path(name, kind, layer)}.{omni.ATTENTION_CHILD}"
                layers.append(self._check_attention(where, model, path, name, kind, layer, family.heads(name, kind)))
        for old in self.tagged.pop(name, ()):
            self.tagged_ids.discard(id(old.module))
        for tagged in layers:
            module = tagged.module
            # The Wan model sets _disable_kv_quant on cross-attention, and vllm-omni evaluates it before the gate
            # (`disabled = self._disable_kv_quant or not gate()`): cleared, so the plan's gate sees every call.
            setattr(module, omni.DISABLE_QUANT_ATTR, False)
            module.__dict__[omni.GATE_METHOD] = CellGate(self, name, tagged.kind, tagged.layer)
            self.tagged_ids.add(id(module))
        self.tagged[name] = layers
        if pipe not in self.pipelines:
            self._wrap_forward(pipe)
        self._check_schedule_inputs(pipe)
        logger.info("qcompile plan %s: tagged %s (%d attention layers)", self.plan.content_hash[:12], where, len(layers))

    def _check_attention(self, where: str, model: torch.nn.Module, path: str, component_name: str, kind: str,
                         layer: int, wanted_heads: tuple[int, int]) -> _Tagged:
        try:
            module = model.get_submodule(path)
        except AttributeError:
            raise PluginRefusal(f"{where} has no attention layer {path} ({kind} attention, layer {layer}): not the "
                                f"Wan layout the plugin knows (vllm-omni {', '.join(omni.TESTED_VERSIONS)})") from None
        missing = [n for n in (omni.GATE_METHOD, omni.PER_CALL_DTYPE_METHOD, omni.DISABLE_QUANT_ATTR,
                               omni.KV_CACHE_DTYPE_ATTR) if not hasattr(module, n)]
        if missing:
            raise PluginRefusal(f"{where}.{path} lacks {', '.join(missing)}: this vllm-omni's attention layer is not "
                                f"the one the plugin was tested with ({', '.join(omni.TESTED_VERSIONS)})")
        label = f"{where}.{path}"
        role, index = getattr(module, omni.ROLE_ATTR, None), getattr(module, omni.LAYER_INDEX_ATTR, None)
        if role != omni.KIND_ROLES[kind] or index != layer:
            raise PluginRefusal(f"{label} has role {role!r} and layer index {index!r}; the plan's {kind} attention "
                                f"at layer {layer} needs role {omni.KIND_ROLES[kind]!r} and index {layer}")
        heads, head_size = getattr(module, "num_heads", None), getattr(module, "head_size", None)
        num_heads, head_dim = wanted_heads
        if head_size != head_dim or not heads or num_heads % heads:
            raise PluginRefusal(f"{label} runs {heads} heads of size {head_size}; the plan expects "
                                f"{num_heads} heads (or a tensor-parallel share) of {head_dim}")
        skips = {flag: getattr(module, attr) for flag, attr in (("--diffusion-kv-cache-skip-steps", omni.SKIP_STEPS_ATTR),
                                                               ("--diffusion-kv-cache-skip-layers", omni.SKIP_LAYERS_ATTR))
                 if getattr(module, attr, None)}
        if skips:
            raise PluginRefusal(
                f"skip lists given beside a plan ({', '.join(f'{k} {sorted(v)}' for k, v in skips.items())}): the plan "
                f"decides every cell, so remove {' and '.join(skips)} (or unset {PLAN_ENV} to use the skip lists)"
            )
        dtype = getattr(module, omni.KV_CACHE_DTYPE_ATTR)
        if self.plan.uses_quantized() and dtype != self.kv_cache_dtype:
            started = "without --diffusion-kv-cache-dtype" if dtype in (None, "float") else f"with kv_cache_dtype={dtype!r}"
            raise PluginRefusal(
                f"the plan ({self.plan.data['dtype']}) has FP8 cells but vllm-omni was started {started}: start it "
                f"with --diffusion-kv-cache-dtype {self.kv_cache_dtype}, so that vllm-omni's own backend, rotation "
                "and ring-attention checks run for the cells the plan puts in FP8"
            )
        return _Tagged(module, component_name, kind, layer, path)

    def _check_schedule_inputs(self, pipe: torch.nn.Module) -> None:
        family = self.plan.family
        if len(self.plan.component_names) < 2:
            return
        for attr, want, what in ((omni.BOUNDARY_RATIO_ATTR, family.boundary_ratio, "boundary_ratio"),
                                 (omni.FLOW_SHIFT_ATTR, family.flow_shift, "flow_shift")):
            have = getattr(pipe, attr, None)
            if have is not None and have != want:
                note = (f"vllm-omni's {what} is {have}, the plan's family has {want}: each expert still follows its "
                        "own rows, but the steps each expert serves differ from the plan's expert_schedule")
                if note not in self.log.notes:
                    self.log.notes.append(note)
                    logger.warning("qcompile plan: %s", note)

    def _wrap_forward(self, pipe: torch.nn.Module) -> None:
        stock = pipe.forward
        state = self

        def forward(batch: Any, *args: Any, **kwargs: Any) -> Any:
            state.begin_request(pipe, batch)
            finished = False
            try:
                result = stock(batch, *args, **kwargs)
                finished = True
                return result
            finally:
                state.end_request(finished)

        # vllm-omni's worker calls pipeline.forward(batch) directly, so nn.Module forward hooks would never fire.
        pipe.__dict__["forward"] = forward
        self.pipelines.add(pipe)

    # -- per request ---------------------------------------------------------------------------------------
    def begin_request(self, pipe: torch.nn.Module, batch: Any) -> None:
        missing = [c for c in self.plan.component_names if c not in self.tagged]
        if missing:
            raise PluginRefusal(
                f"the plan covers {', '.join(self.plan.component_names)} but vllm-omni built no "
                f"{', '.join(missing)} (tagged: {self._tagged_summary()}). A Wan2.2 A14B plan needs both experts: "
                "leave boundary_ratio unset (or strictly between 0 and 1), or compile a plan for the model you serve"
            )
        for component, layers in self.tagged.items():
            for tagged in layers:
                try:
                    current = pipe.get_submodule(f"{component}.{tagged.path}")
                except AttributeError:
                    current = None
                if current is not tagged.module:
                    raise PluginRefusal(f"{component}.{tagged.path} was replaced after the plugin tagged it; the "
                                        "plan cannot be followed. Report this with your vllm-omni version")
        warmup = omni.is_warmup(batch)
        if not warmup:
            if getattr(pipe, omni.DISTILLED_FLAG_ATTR, False):
                raise PluginRefusal("this Wan checkpoint is DMD-distilled: vllm-omni ignores the request's step count, "
                                    "so no plan's step table applies. Unset " + PLAN_ENV + " for it")
            steps = self.plan.num_inference_steps
            wrong = sorted({n for n in omni.requested_steps(batch) if n != steps})
            if wrong:
                raise PluginRefusal(
                    f"the request asks for {', '.join(map(str, wrong))} denoising steps; the plan was compiled for "
                    f"{steps}. Send num_inference_steps={steps}, or recompile the recipe with --steps "
                    f"{wrong[0]} and restart vllm-omni with {PLAN_ENV} naming the new plan"
                )
        self.log.begin(omni.request_id(batch), warmup=warmup)
        self._requests_begun += 1

    def end_request(self, finished: bool) -> None:
        self.log.end(finished)
        if self._tripwire is not None:
            self._tripwire.remove()  # layers built from now on carry their own tripwire (_on_register)
            self._tripwire = None

    def decide(self, component: str, kind: str, layer: int) -> bool:
        """The plan's cell for this call: True -> vllm-omni passes kv_cache_dtype="fp8", False -> "float"."""
        log = self.log
        if not log.in_request or log.warmup:
            log.count_outside(warmup=log.in_request)
            return False
        step = self.step_source()
        if step is None or not 0 <= step < self.plan.num_inference_steps:
            log.count_unknown_step(step)
            return False
        fp8 = self.plan.tables[(component, kind)][step][layer]
        log.count(component, kind, step, layer, fp8)
        return fp8


_ACTIVE: PluginState | None = None


def active_state() -> PluginState | None:
    return _ACTIVE


def activate(plan_source: str | os.PathLike[str], *, report_dir: str | None = None,
             vllm_omni_version: str | None = None,
             step_source: Callable[[], int | None] = omni.denoise_step) -> PluginState:
    """Verify the plan and install the hooks in this process (replacing an earlier activation)."""
    global _ACTIVE
    plan = verify_plan(plan_source)
    if _ACTIVE is not None:
        _ACTIVE.deactivate()
    state = PluginState(plan, plan_path=os.fspath(plan_source), report_dir=report_dir or default_report_dir(),
                        vllm_omni_version=vllm_omni_version, step_source=step_source)
    state.install_hooks()
    _ACTIVE = state
    return state


def deactivate() -> None:
    global _ACTIVE
    if _ACTIVE is not None:
        _ACTIVE.deactivate()
        _ACTIVE = None


DEFAULT_REPORT_DIR = "qcompile-vllm-omni-executed"


def default_report_dir() -> str:
    return os.environ.get(REPORT_DIR_ENV) or os.path.join(os.getcwd(), DEFAULT_REPORT_DIR)


def verify_plan(source: str | os.PathLike[str]) -> Plan:
    """load_plan (schema, table shapes, content hash), then the family: known to this qcompile and unchanged."""
    plan = load_plan(source)
    try:
        family = get_family(plan.family_name, plan.variant)
    except FamilyError as exc:
        raise PluginRefusal(f"{source}: {exc}") from None
    if family.structure() != plan.family.structure():
        raise PluginRefusal(
            f"{source}: the plan's family record differs from {family.display_name} as this qcompile knows it; "
            "recompile the recipe with this qcompile (qcompile RECIPE -o plan.json)"
        )
    if plan.data["dtype"] not in PLAN_DTYPE_KV_CACHE:
        raise PluginRefusal(f"{source}: vllm-omni has no kv_cache_dtype for plan dtype {plan.data['dtype']!r}")
    return plan


def _submodule(model: torch.nn.Module, path: str) -> torch.nn.Module | None:
    try:
        return model.get_submodule(path)
    except AttributeError:
        return None
