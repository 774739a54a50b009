"""Shared by the per-family runtime tests (test_<family>_runtime.py): compile a shipped recipe for the tiny
variant with the real CLI, and observe which attention calls ran quantized independently of the runtime's own
bookkeeping.

Independence: the calls come from tests/runtime/models/tiny_family_observer.py (hooks on the attention modules, a
wrapped `dispatch_attention_fn` and a wrapped `F.scaled_dot_product_attention`), the steps from counting
transformer forwards (forward f of a call is step f // forwards_per_step), and "quantized" means the reference
backend's `attend` ran inside that call: a wrapper on `ReferenceBackend.attend` marks the call the observer
recorded last (the dispatch or SDPA call being served).
Nothing here reads the runtime's counters, sites or report.
"""

from __future__ import annotations

import functools
import re
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NamedTuple

import pytest
import torch
import torch.nn.functional as F
from click.testing import CliRunner

import runtime
from qcompiler import compile_recipe_text
from qcompiler.cli.main import cli
from qcompiler.plan.format import Plan, load_plan
from runtime.backends.base import AttentionBackend
from runtime.backends.reference import ReferenceBackend
from runtime.errors import StepCountError
from tests.runtime.models.tiny_family_observer import Observation, observe

RECIPES = Path(__file__).resolve().parents[3] / "recipes"
STEPS = 4


def compile_shipped(recipe: str, out: Path, steps: int = STEPS) -> Plan:
    """`qcompile recipes/<recipe>.yaml --variant tiny --steps N -o out` through the real CLI."""
    result = CliRunner().invoke(cli, [str(RECIPES / f"{recipe}.yaml"), "--variant", "tiny", "--steps",
                                                str(steps), "-o", str(out)])
    assert result.exit_code == 0, result.output
    return load_plan(out)


def compile_variant(recipe: str, *, default: str, keep_rules: bool = True, kinds: str | None = None,
                    steps: int = STEPS) -> Plan:
    """The shipped recipe with another `default:` (unless keep_rules, no rules; with kinds, another
    `attention_kinds:` list, e.g. "[self, cross]"), compiled for tiny."""
    text = (RECIPES / f"{recipe}.yaml").read_text()
    text = re.sub(r"(?m)^default: \w+", f"default: {default}", text)
    if kinds is not None:
        text = re.sub(r"(?m)^attention_kinds: .*$", f"attention_kinds: {kinds}", text)
    if not keep_rules:
        text = re.sub(r"(?ms)^rules:\n.*", "", text)
    return compile_recipe_text(text, name=f"{recipe}-{default}.yaml", steps=steps, variant="tiny")


@contextmanager
def observe_quantized(transformer):
    """Yield (observation, quantized): `quantized` is the set of (forward, call index) whose dispatch call ran
    the reference backend's quantized attention."""
    quantized: set[tuple[int, int]] = set()
    stock = ReferenceBackend.attend

    with observe(transformer) as obs:

        @functools.wraps(stock)
        def attend(self, *args, **kwargs):
            quantized.add((len(obs.forwards) - 1, len(obs.forwards[-1]) - 1))
            return stock(self, *args, **kwargs)

        ReferenceBackend.attend = attend
        try:
            yield obs, quantized
        finally:
            ReferenceBackend.attend = stock


def planned_cells(plan: Plan, obs: Observation, forwards_per_step: int, component: str = "transformer"
                  ) -> tuple[set[tuple[int, int]], dict[tuple[int, int], tuple[str, int, int]]]:
    """(the observed calls the plan quantizes, every observed call -> (kind, step, layer)), from the observation
    and the family data alone."""
    family = plan.family
    comp = family.component(component)
    kind_at = {(comp.block_list(k.block_list).path, k.module): k.name for k in family.kind_specs}
    cells, planned = {}, set()
    for f, calls in enumerate(obs.forwards):
        step = f // forwards_per_step
        for i, call in enumerate(calls):
            kind = kind_at[(call.block_list, call.kind_module)]
            cells[(f, i)] = (kind, step, call.layer)
            if plan.table(component, kind)[step][call.layer]:
                planned.add((f, i))
    return planned, cells


def run(module, pipe, steps: int = STEPS, seed: int = 0, **extra) -> torch.Tensor:
    with torch.no_grad():
        return pipe(**module.tiny_inputs(pipe, num_inference_steps=steps, seed=seed, **extra))[0]


class ExactAttention(AttentionBackend):
    """A mask-less kernel without quantization error: SDPA over exactly the q/k/v it is given (BSND). In every
    cell of a plan it shows what packing computes: the masked attention itself, up to float rounding."""

    name = "exact-sdpa"
    is_quantized = True

    def attend(self, query, key, value, rotation):
        return F.scaled_dot_product_attention(query.transpose(1, 2), key.transpose(1, 2),
                                              value.transpose(1, 2)).transpose(1, 2)


def assert_all_native_is_stock(module, pipe, stock: torch.Tensor, plan: Plan):
    """An all-native `plan` loaded: the executed table is the plan, no call ran quantized, the output is stock bit
    for bit. Returns (the execution report, the observation)."""
    assert not plan.uses_quantized()
    with runtime.load(pipe, plan, backend="reference") as handle, \
            observe_quantized(pipe.transformer) as (obs, quantized):
        out = run(module, pipe)
        report = handle.report()
    assert report.matches_plan()
    assert not quantized
    assert torch.equal(out, stock)
    return report, obs


def assert_wrong_step_count_refused(module, pipe, stock: torch.Tensor, plan: Plan) -> None:
    """A call with another step count than `plan`'s raises StepCountError, and the pipeline is stock afterwards."""
    with runtime.load(pipe, plan, backend="reference"):
        with pytest.raises(StepCountError, match=f"called with 3 denoising steps, expected {STEPS}"):
            run(module, pipe, steps=3)
    assert torch.equal(run(module, pipe), stock)


class PlannedRun(NamedTuple):
    """One pipeline call with a plan loaded: its output, the runtime's report and observer records, and what the
    independent observer saw (`obs`, and `quantized`: the calls the reference kernel served)."""

    out: torch.Tensor
    report: Any
    records: list
    obs: Observation
    quantized: set


def planned_run(module, pipe, plan: Plan, backend: Any = "reference", **run_kwargs) -> PlannedRun:
    """`run(module, pipe)` with `plan` loaded and observed, unloaded afterwards whatever happens."""
    records: list = []
    with runtime.load(pipe, plan, backend=backend) as handle:
        handle.set_observer(records.append)
        with observe_quantized(pipe.transformer) as (obs, quantized):
            out = run(module, pipe, **run_kwargs)
        report = handle.report()
    return PlannedRun(out, report, records, obs, quantized)
