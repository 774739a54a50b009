"""Fixtures for report / calibrate / suggest tests: one real tiny Wan2.2 I2V pipeline per session (random
weights, the real 2 x 40 layers), plans compiled for its tiny variant, and the runs they are measured with.

Runs are kept short (2 denoising steps, 16x16, 9 frames, one seed) so the whole quality suite stays well under
a minute and a half on a 2-core CPU.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from qcompiler import compile_recipe_text
from qcompiler.plan.format import Plan

FAMILY = "wan2.2-i2v-a14b"
STEPS = 2

MIXED_RECIPE = f"""\
version: 1
family: {FAMILY}
num_inference_steps: {STEPS}
dtype: fp8_e4m3_per_block
numerics: {{hadamard_rotation: true, rotation_seed: 425500}}
fallback: error
attention_kinds: [self, cross]
default: fp8
rules:
  - name: first-step-first-blocks
    why: "the first step changes attention most"
    steps: "0"
    layers: "0-2"
    precision: native
  - name: cross-native-late
    steps: "last 1"
    attention_kinds: [cross]
    precision: native
"""

NATIVE_RECIPE = f"""\
version: 1
family: {FAMILY}
num_inference_steps: {STEPS}
dtype: fp8_e4m3_per_block
fallback: error
attention_kinds: [self]
default: native
"""


def compile_tiny(text: str, name: str = "recipe.yaml") -> Plan:
    return compile_recipe_text(text, name=name, variant="tiny")


@pytest.fixture(scope="session")
def tiny_pipe():
    from runtime.tiny import build_tiny_pipeline

    return build_tiny_pipeline(FAMILY)


@pytest.fixture(scope="session")
def mixed_plan() -> Plan:
    return compile_tiny(MIXED_RECIPE, "mixed.yaml")


@pytest.fixture(scope="session")
def native_plan() -> Plan:
    return compile_tiny(NATIVE_RECIPE, "native.yaml")


@pytest.fixture(scope="session")
def mixed_report(tiny_pipe, mixed_plan, tmp_path_factory) -> tuple[dict, Path]:
    """The written report of the mixed plan, and its folder."""
    from runtime.quality.report import ReportOptions, build_report, write_report

    outdir = tmp_path_factory.mktemp("mixed_report")
    report = write_report(build_report(mixed_plan, ReportOptions(progress=False), pipe=tiny_pipe), mixed_plan, outdir)
    return report, outdir


@pytest.fixture(scope="session")
def native_report(tiny_pipe, native_plan) -> dict:
    from runtime.quality.report import ReportOptions, build_report

    return build_report(native_plan, ReportOptions(progress=False), pipe=tiny_pipe)


@pytest.fixture(scope="session")
def measured_sensitivity(tiny_pipe) -> dict:
    """A real calibration of the tiny pipeline: shadow mode, one seed, STEPS steps."""
    from runtime.quality.calibrate import CalibrateOptions, calibrate

    return calibrate(CalibrateOptions(family=FAMILY, steps=STEPS, progress=False), pipe=tiny_pipe)


@pytest.fixture(scope="session")
def tiny_plan_report(measured_sensitivity, tiny_pipe):
    """A recipe suggested from the real calibration (budget: the median cell's worst cos-sim), its plan, and
    that plan's report: (suggestion, budget, plan, report)."""
    from qcompiler.suggest.cover import Budget, suggest_recipe
    from qcompiler.suggest.sensitivity import sensitivity_from_dict
    from runtime.quality.report import ReportOptions, build_report

    sensitivity = sensitivity_from_dict(measured_sensitivity)
    values = sorted(c.cos_sim_worst for c in sensitivity.cells.values())
    budget = Budget("min_cos", values[len(values) // 2])
    suggestion = suggest_recipe(sensitivity, budget)
    plan = compile_tiny(suggestion.text, "suggested.yaml")
    return suggestion, budget, plan, build_report(plan, ReportOptions(progress=False), pipe=tiny_pipe)
