"""Fixtures for runtime tests: tiny offline pipelines (built once per session) and plans compiled for them.

Tests that install a plan must unload it (use `with runtime.load(...)`), so the shared pipelines stay stock.
"""

from __future__ import annotations

import textwrap
from collections.abc import Callable

import pytest
import torch

from qcompiler import compile_recipe_text
from qcompiler.plan.format import Plan
from runtime.tiny import build_tiny_pipeline, run_tiny

# Tiny tensors gain nothing from intra-op threads, and on a shared 2-core machine OpenMP's spinning threads
# slow every call down by an order of magnitude when another process holds a core.
torch.set_num_threads(1)

I2V = "wan2.2-i2v-a14b"
TI2V = "wan2.2-ti2v-5b"
T2V = "wan2.1-t2v-1.3b"

COMPONENTS = {I2V: "[transformer, transformer_2]", TI2V: "[transformer]", T2V: "[transformer]"}


def recipe(family: str = I2V, *, steps: int = 4, default: str = "fp8", kinds: str = "[self]",
           fallback: str = "error", rules: str = "", rotation: bool | None = None,
           dtype: str = "fp8_e4m3_per_block") -> str:
    """A recipe for `family` with the given knobs; `rules` is YAML for the rules list (already indented);
    `rotation` None: the dtype's default (on; off for the SageAttention dtypes, which take none)."""
    if rotation is None:
        from qcompiler.formats import get_format

        rotation = get_format(dtype).key("hadamard_rotation").default
    text = f"""\
        version: 1
        family: {family}
        num_inference_steps: {steps}
        dtype: {dtype}
        numerics: {{hadamard_rotation: {str(rotation).lower()}, rotation_seed: 425500}}
        fallback: {fallback}
        attention_kinds: {kinds}
        components: {COMPONENTS.get(family, "[transformer]")}
        default: {default}
        """
    text = textwrap.dedent(text)
    if rules:
        text += "rules:\n" + textwrap.dedent(rules)
    return text


# A plan whose tables differ per step, per layer and per expert, with both kinds: a wrong step, layer,
# kind or component shows up as a wrong cell.
MIXED_RULES = """\
  - name: edge-steps
    steps: "0, last 1"
    precision: native
  - name: odd-layers
    layers: "1-/2"
    precision: native
  - name: cross-native-but-step-1
    steps: "0, 2-"
    attention_kinds: [cross]
    precision: native
"""
# ... and for the two-expert family, a rule only the low-noise expert gets.
I2V_RULES = MIXED_RULES + """\
  - name: expert-2-first-layers
    components: [transformer_2]
    layers: "0-3"
    precision: native
"""


@pytest.fixture(scope="session")
def compile_tiny() -> Callable[..., Plan]:
    def compile_(text: str, *, name: str = "test.yaml", steps: int | None = None) -> Plan:
        return compile_recipe_text(text, name=name, steps=steps, variant="tiny")

    return compile_


@pytest.fixture(scope="session")
def i2v_pipe():
    return build_tiny_pipeline(I2V)


@pytest.fixture(scope="session")
def ti2v_pipe():
    return build_tiny_pipeline(TI2V)


@pytest.fixture(scope="session")
def t2v_pipe():
    return build_tiny_pipeline(T2V)


@pytest.fixture(scope="session")
def i2v_stock(i2v_pipe) -> dict[float, torch.Tensor]:
    """Stock outputs of the I2V pipeline (latents), by guidance scale, computed before anything is installed."""
    return {g: run_tiny(i2v_pipe, guidance_scale=g) for g in (5.0, 1.0)}


def expected_rows(plan: Plan, component: str, kind: str) -> list[str]:
    """The executed rows a correct run must show: the plan's row where the component served the step
    (per the plan's expert schedule, checked against the observed one separately), dots elsewhere."""
    rows = plan.data["tables"][component][kind]
    return [row if plan.expert_schedule[s] == component else "." * len(row) for s, row in enumerate(rows)]
