"""Top-level hooks on each transformer component: once per forward, find the step, check the parallel layout and
the installed sites, and set every site's plain bool from the plan row, so nothing per attention call parses,
looks up or formats anything. After the forward, harvest the sites' call counters into the report's cells; a
site with no call in a forward that reached it was skipped by a cache.

They are torch module hooks (`register_forward_pre_hook` / `register_forward_hook`), not diffusers
HookRegistry hooks: accelerate's `enable_model_cpu_offload` swaps `module.forward` and would silently drop a
forward wrapper installed after it, but leaves torch's hook dicts alone, so offloading before or after load works.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from runtime.diffusers_private import (
    context_parallel_config,
    context_parallel_mesh,
    is_compiled,
    model_parallel_config,
    processor_backend,
)
from runtime.dispatch import SHADOW, ComponentState, Site, qcompile_backend
from runtime.errors import ParallelLayoutError, PlanMismatchError
from runtime.execution_report import FALLBACK, FP8, NATIVE, SKIPPED, CellCounts
from runtime.processor_entry import is_processor_site
from runtime.quant.rotation import get_rotation
from runtime.step_tracker import StepTracker


def _hidden_states(args: tuple, kwargs: dict) -> torch.Tensor:
    return kwargs["hidden_states"] if "hidden_states" in kwargs else args[0]


def parallel_layout(model: torch.nn.Module) -> str | None:
    """"ulysses=N", "ring=N", ... for a model with context parallelism enabled, None without."""
    cp = context_parallel_config(model_parallel_config(model))
    if cp is None:
        return None
    parts = [f"{name}={degree}" for name, degree in (("ulysses", cp.ulysses_degree), ("ring", cp.ring_degree))
             if degree and degree > 1]
    if getattr(cp, "ulysses_anything", False):
        parts.append("ulysses_anything")
    return ",".join(parts) or "degree 1"


def missing_cp_plan_reason(model: torch.nn.Module) -> str | None:
    """Why this model cannot run context-parallel at all: parallelism is set on it, but its class has no
    `_cp_plan` (diffusers' `enable_parallelism` raises for such a model after it has already set the config on
    the model and its processors, leaving attention that would all-to-all inputs nothing ever sharded)."""
    if context_parallel_config(model_parallel_config(model)) is None or getattr(type(model), "_cp_plan", None):
        return None
    import diffusers

    return (f"{type(model).__name__} has a context-parallel config, but diffusers {diffusers.__version__} has no "
            f"`_cp_plan` for {type(model).__name__} (it cannot shard its inputs; enable_parallelism refuses it): "
            "run this model on one process per pipeline, without enable_parallelism")


def check_context_parallel_plans(models: dict[str, torch.nn.Module]) -> None:
    """Refuse a component left with a context-parallel config its class has no `_cp_plan` for."""
    for name, model in models.items():
        why = missing_cp_plan_reason(model)
        if why:
            raise ParallelLayoutError(f"{name}: {why}")


def unsupported_layout_reason(model: torch.nn.Module) -> str | None:
    """Why FP8 attention cannot follow the plan under this model's context parallelism (None: it can)."""
    cp = context_parallel_config(model_parallel_config(model))
    if cp is None:
        return None
    if (cp.ring_degree or 1) > 1:
        return ("ring attention merges partial results by log-sum-exp across K/V shards, and each rank would "
                "quantize other K/V blocks than one process; FP8 attention runs under Ulysses only. Use "
                "ContextParallelConfig(ulysses_degree=N) instead of ring_degree")
    if getattr(cp, "ulysses_anything", False):
        return ("ulysses_anything pads uneven sequences with a mask the FP8 kernel does not take; use plain "
                "ContextParallelConfig(ulysses_degree=N) with a sequence and head count divisible by N")
    return None


def context_parallel_group(model: torch.nn.Module) -> Any:
    cp = context_parallel_config(model_parallel_config(model))
    if cp is None:
        return None
    mesh = context_parallel_mesh(cp)
    return mesh.get_group() if mesh is not None else None


class ComponentHook:
    """Per-forward work for one transformer: step tracking, layout and site checks, flags, rotation, counting.

    `sites[kind]` lists the sites by layer; `rows[kind][step]` is the plan row (tuple of bools), or `rows` is
    None in shadow mode (no decisions, only step tracking and rotation).
    """

    def __init__(
        self,
        model: torch.nn.Module,
        state: ComponentState,
        sites: dict[str, list[Site]],
        rows: dict[str, Sequence[Sequence[bool]]] | None,
        tracker: StepTracker,
        counts: dict[str, CellCounts] | None,
        rotation: tuple[int, int] | None,  # (head_dim, seed) when FP8 calls rotate Q and K
        needs_quantized: bool,  # whether this component runs any quantized attention (the layout check applies)
    ):
        self.name = state.component
        self.model = model
        self.state = state
        self.tracker = tracker
        self.rows = rows
        self.counts = counts
        self.rotation = rotation
        self.needs_quantized = needs_quantized
        self._by_kind = list(sites.items())
        self._all = [s for kind_sites in sites.values() for s in kind_sites]
        # Kinds reached through the processor entry that may run quantized (shadow mode: all of them): their
        # processors call SDPA on whatever part of the sequence the rank holds, with no context-parallel handling.
        self._entries = [(s, is_processor_site(s)) for s in self._all]  # (site, reached by the processor entry)
        self._processor_kinds = sorted(
            {s.kind for s, via_processor in self._entries if via_processor
             and (rows is None or any(any(r) for r in rows[s.kind]))})
        self._first_blocks = _first_blocks(model, self._all)
        self._rotation_key: tuple[torch.device, torch.dtype] | None = None
        self._layout_seen: Any = None
        self._step = -1
        self._handles: list[Any] = []
        self.compiled_forwards = 0  # forwards whose blocks were compiled (counted by decisions, not calls)

    def install(self) -> None:
        self._handles = [
            self.model.register_forward_pre_hook(self._pre_forward, with_kwargs=True),
            # always_call: harvest counts even when the forward raised, so the next call starts clean.
            self.model.register_forward_hook(self._post_forward, with_kwargs=True, always_call=True),
        ]

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def check_layout(self) -> None:
        """Refuse a context-parallel layout FP8 cannot serve (before any collective runs, on every rank alike)."""
        parallel = model_parallel_config(self.model)
        if parallel is self._layout_seen:
            return
        check_context_parallel_plans({self.name: self.model})
        why = unsupported_layout_reason(self.model) if self.needs_quantized else None
        if (not why and self.needs_quantized and self._processor_kinds
                and context_parallel_config(parallel) is not None):
            processors = sorted({type(s.processor).__name__ for s in self._all if s.kind in self._processor_kinds})
            why = (f"its {', '.join(self._processor_kinds)} attention is called by processors that call "
                   f"F.scaled_dot_product_attention themselves ({', '.join(processors)}), which qcompile cannot run "
                   "quantized across ranks; run this model in one process, or plan those kinds native")
        if why:
            raise ParallelLayoutError(f"{self.name} runs with context parallelism ({parallel_layout(self.model)}) "
                                      f"and its plan has FP8 attention cells: {why}")
        self.state.error_group = context_parallel_group(self.model)
        self._layout_seen = parallel

    def _check_sites(self) -> None:
        ours = qcompile_backend()
        for site, via_processor in self._entries:
            processor = site.module.processor
            if processor is not site.processor or (not via_processor and processor_backend(processor) is not ours):
                raise PlanMismatchError(
                    f"{self.name}: the attention processor or backend of {site.kind} attention layer {site.layer} "
                    "changed after runtime.load/shadow (set_processor or set_attention_backend); unload, make the "
                    "change, then load again"
                )

    def _pre_forward(self, module: torch.nn.Module, args: tuple, kwargs: dict) -> None:
        self.tracker.check_thread()  # first: a refused thread must not touch this call's state
        self._step = -1
        step = self.tracker.begin_forward(self.name)
        self.check_layout()
        if self.state.joint_kinds:
            self.state.text_tokens = _text_shard(self.model, kwargs)
        self._check_sites()
        for site in self._all:
            site.take_counts()  # a forward that raised before our post hook leaves nothing behind
        if self.rotation is not None:
            hidden = _hidden_states(args, kwargs)
            key = (hidden.device, hidden.dtype)
            if key != self._rotation_key:  # first forward, or the model moved (offload, .to())
                self.state.rotation = get_rotation(hidden.device, hidden.dtype, *self.rotation)
                self._rotation_key = key
        if self.rows is not None:
            for kind, sites in self._by_kind:
                for site, flag in zip(sites, self.rows[kind][step], strict=True):
                    site.fp8 = flag
        self._step = step

    def _post_forward(self, module: torch.nn.Module, args: tuple, kwargs: dict, output: Any) -> None:
        if self.tracker.foreign_thread():  # a refused forward of another thread (always_call runs us anyway)
            return
        if self.counts is None or self._step < 0 or self.state.mode == SHADOW:
            return
        step, self._step = self._step, -1
        failed = output is None  # torch calls an always_call hook with no output when the forward raised
        compiled = any(is_compiled(block) for block in self._first_blocks)
        if compiled:
            self.compiled_forwards += 1
        for kind, sites in self._by_kind:
            row = self.counts[kind].row(step)
            for layer, site in enumerate(sites):
                native, fp8, fallback = site.take_counts()
                cell = row[layer]
                if compiled and not (native or fp8 or fallback):
                    # Compiled blocks cannot count (a Python counter read in a graph recompiles it each call):
                    # record the decision this hook made for the forward instead.
                    lane = NATIVE if not site.fp8 else FALLBACK if self.state.backend is None else FP8
                    cell[lane] += 1
                    continue
                cell[NATIVE] += native
                cell[FP8] += fp8
                cell[FALLBACK] += fallback
                if not (native or fp8 or fallback or failed):
                    cell[SKIPPED] += 1  # the forward reached this step but a cache replaced this attention


def _text_shard(model: torch.nn.Module, kwargs: dict) -> int:
    """Text tokens per rank in this forward under Ulysses (0 without it): the transformer's
    `encoder_hidden_states` (whole here: our pre-hook runs before diffusers' context-parallel split) / degree."""
    cp = context_parallel_config(model_parallel_config(model))
    text = kwargs.get("encoder_hidden_states")
    if cp is None or (cp.ulysses_degree or 1) <= 1 or not isinstance(text, torch.Tensor):
        return 0
    return text.shape[1] // cp.ulysses_degree


def _first_blocks(model: torch.nn.Module, sites: list[Site]) -> list[torch.nn.Module]:
    """The first block of each block list holding a site: the module whose `compile()` makes its attention calls
    uncountable. A block is the nearest ancestor of a site's module that is an element of a ModuleList."""
    names = {id(module): name for name, module in model.named_modules()}
    blocks: dict[int, torch.nn.Module] = {}
    for site in sites:
        parts = names.get(id(site.module), "").split(".")
        for end in range(len(parts) - 1, 0, -1):
            parent = model.get_submodule(".".join(parts[:end - 1])) if end > 1 else model
            if isinstance(parent, torch.nn.ModuleList) and parts[end - 1].isdigit():
                block = parent[0]
                blocks[id(block)] = block
                break
    return list(blocks.values())
