"""The `pv_precision` numerics option: recipe -> plan -> runtime Numerics, and who can honour it."""

from __future__ import annotations

import pytest
import torch

from qcompiler import compile_recipe_text
from qcompiler.errors import RecipeError
from qcompiler.targets.vllm_omni import export_vllm_omni
from runtime.backends import Fp8TritonBackend, NpuTorchFiaBackend, ReferenceBackend
from runtime.numerics import DEFAULT_PV_PRECISION, Numerics
from tests.runtime.conftest import T2V, recipe


def with_pv(text: str, value: str) -> str:
    return text.replace("rotation_seed: 425500}", f"rotation_seed: 425500, pv_precision: {value}}}")


def test_recipe_sets_it_and_the_runtime_reads_it():
    plan = compile_recipe_text(with_pv(recipe(T2V), "fp16"), variant="tiny")
    assert plan.numerics["pv_precision"] == "fp16"
    assert Numerics.from_plan(plan).pv_precision == "fp16"


def test_a_plan_without_it_means_the_npu_kernels_e4m3():
    plan = compile_recipe_text(recipe(T2V), variant="tiny")
    assert "pv_precision" not in plan.numerics  # plans of recipes that do not set it are unchanged
    assert DEFAULT_PV_PRECISION == "e4m3" == Numerics.from_plan(plan).pv_precision


def test_an_unknown_value_is_a_located_recipe_error():
    with pytest.raises(RecipeError) as err:
        compile_recipe_text(with_pv(recipe(T2V), "bf16"), variant="tiny")
    assert "pv_precision" in str(err.value) and "bf16" in str(err.value)


def test_fp16_p_is_refused_by_the_npu_kernel_and_served_by_the_others():
    numerics = Numerics(pv_precision="fp16")
    assert "pv_precision=fp16" in NpuTorchFiaBackend(numerics).unsupported_reason(128)
    assert Fp8TritonBackend(numerics).unsupported_reason(128) is None
    assert ReferenceBackend(numerics).unsupported_reason(128) is None
    with pytest.raises(ValueError, match="pv_precision 'fp32'"):
        ReferenceBackend(Numerics(pv_precision="fp32")).attend(*[torch.zeros(1, 4, 1, 64)] * 3, None)


def test_vllm_export_notes_that_fp16_p_is_not_what_the_npu_does():
    plan = compile_recipe_text(with_pv(recipe(T2V), "fp16"), variant="tiny")
    assert any("pv_precision=fp16" in note for note in export_vllm_omni(plan).notes)
