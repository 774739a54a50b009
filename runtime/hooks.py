"""Top-level hooks on each transformer component: once per forward, find the step and set every attention
processor's plain bool from the plan row, so nothing per attention call parses, looks up or formats anything.

They are torch module hooks (`register_forward_pre_hook` / `register_forward_hook`), not diffusers
HookRegistry hooks: accelerate's `enable_model_cpu_offload` swaps `module.forward` and would silently drop a
forward wrapper installed after it, but leaves torch's hook dicts alone, so offloading before or after load works.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from runtime.processor import PlanAttnProcessor, ShadowAttnProcessor
from runtime.quant.rotation import get_rotation
from runtime.report import CellCounts
from runtime.step_tracker import StepTracker

Processor = PlanAttnProcessor | ShadowAttnProcessor


def _hidden_states(args: tuple, kwargs: dict) -> torch.Tensor:
    return kwargs["hidden_states"] if "hidden_states" in kwargs else args[0]


class ComponentHook:
    """Per-forward work for one transformer: step tracking, per-layer flags, rotation matrices, counting.

    `processors[kind]` lists the processors by layer; `rows[kind][step]` is the plan row (tuple of bools), or
    `rows` is None in shadow mode (no decisions, only step tracking and rotation).
    """

    def __init__(
        self,
        name: str,
        model: torch.nn.Module,
        processors: dict[str, list[Processor]],
        rows: dict[str, Sequence[Sequence[bool]]] | None,
        tracker: StepTracker,
        counts: dict[str, CellCounts] | None,
        rotation: tuple[int, int] | None,  # (head_dim, seed) when FP8 calls rotate Q and K
    ):
        self.name = name
        self.model = model
        self.tracker = tracker
        self.rows = rows
        self.counts = counts
        self.rotation = rotation
        self._by_kind = [(kind, procs) for kind, procs in processors.items()]
        self._all = [p for procs in processors.values() for p in procs]
        self._rotation_key: tuple[torch.device, torch.dtype] | None = None
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

    def _pre_forward(self, module: torch.nn.Module, args: tuple, kwargs: dict) -> None:
        self._step = -1
        step = self.tracker.begin_forward(self.name)
        if self.rotation is not None:
            hidden = _hidden_states(args, kwargs)
            key = (hidden.device, hidden.dtype)
            if key != self._rotation_key:  # first forward, or the model moved (offload, .to())
                matrix = get_rotation(hidden.device, hidden.dtype, *self.rotation)
                for proc in self._all:
                    proc.rotation = matrix
                self._rotation_key = key
        if self.rows is not None:
            for kind, procs in self._by_kind:
                for proc, flag in zip(procs, self.rows[kind][step], strict=True):
                    proc.fp8 = flag
        self._step = step

    def _post_forward(self, module: torch.nn.Module, args: tuple, kwargs: dict, output: Any) -> None:
        if self.counts is None or self._step < 0:
            return
        step, self._step = self._step, -1
        compiled = _blocks_compiled(self.model)
        if compiled:
            self.compiled_forwards += 1
        for kind, procs in self._by_kind:
            row = self.counts[kind].row(step)
            for layer, proc in enumerate(procs):
                native, fp8, fallback = proc.take_counts()
                if compiled and not (native or fp8 or fallback):
                    # Compiled blocks cannot count (a Python counter read in a graph recompiles it each call):
                    # record the decision this hook made for the forward instead.
                    if not proc.fp8:
                        native = 1
                    elif proc.backend is None:
                        fallback = 1
                    else:
                        fp8 = 1
                cell = row[layer]
                cell[0] += native
                cell[1] += fp8
                cell[2] += fallback


def _blocks_compiled(model: torch.nn.Module) -> bool:
    blocks = getattr(model, "blocks", None)
    return bool(blocks) and getattr(blocks[0], "_compiled_call_impl", None) is not None
