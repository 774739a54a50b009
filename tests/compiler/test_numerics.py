"""The format registry (qcompiler/formats/) is the one record of formats and defaults: schemas, compiler and runtime
agree with it."""

from __future__ import annotations

import qcompiler
from qcompiler.formats import DEFAULT_FORMAT as DEFAULT_DTYPE
from qcompiler.formats import FORMATS as DTYPES
from qcompiler.formats import get_format, plan_numerics
from qcompiler.formats.int8_per_tensor import NAME as INT8_DTYPE
from qcompiler.formats.int8_per_tensor import P_SCALE as INT8_P_SCALE
from qcompiler.numerics import DEFAULT_ROTATION_SEED, KV_BLOCK_TOKENS, MAX_ROTATION_SEED, QUERY_BLOCK_TOKENS
from qcompiler.schemas import load_schema
from tests.conftest import VALID_RECIPE

# int8_per_tensor's defaults: all three exact transforms on (docs/int8-a2a3.md).
DEFAULT_INT8_NUMERICS = {"hadamard_rotation": True, "rotation_seed": DEFAULT_ROTATION_SEED,
                         "k_mean_subtraction": True, "v_rotation": True, "p_scale": 127, "scale_scope": "call"}
INT8_ONLY_NUMERICS = ("v_rotation", "p_scale", "scale_scope")


def test_schemas_list_exactly_the_dtypes_of_the_table():
    assert set(load_schema("recipe")["properties"]["dtype"]["enum"]) == set(DTYPES)
    assert set(load_schema("plan")["properties"]["dtype"]["enum"]) == set(DTYPES)
    assert DEFAULT_DTYPE in DTYPES


def test_seed_bounds_agree_with_the_schemas():
    recipe_seed = load_schema("recipe")["properties"]["numerics"]["properties"]["rotation_seed"]
    plan_seed = load_schema("plan")["properties"]["numerics"]["properties"]["rotation_seed"]
    assert recipe_seed["maximum"] == plan_seed["maximum"] == MAX_ROTATION_SEED
    assert recipe_seed["default"] == plan_numerics(DEFAULT_DTYPE, None)["rotation_seed"] == DEFAULT_ROTATION_SEED


def test_compiled_plans_record_the_table_row_and_defaults():
    plan = qcompiler.compile_recipe_text(VALID_RECIPE)
    assert plan.data["dtype"] in DTYPES
    assert plan.numerics["query_block_tokens"] == QUERY_BLOCK_TOKENS == 128
    assert plan.numerics["kv_block_tokens"] == KV_BLOCK_TOKENS == 256
    assert plan_numerics(DEFAULT_DTYPE, None)["rotation_seed"] == 425500


def test_pv_precision_is_refused_with_a_dtype_it_does_not_describe():
    text = VALID_RECIPE.replace("dtype: fp8_e4m3_per_block", "dtype: mxfp8_e4m3").replace(
        "  rotation_seed: 425500\n", "  rotation_seed: 425500\n  pv_precision: fp16\n")
    from qcompiler.compile.compiler import compile_source

    result = compile_source(text, name="r.yaml")
    [error] = result.errors
    assert error.code == "QC152" and "pv_precision" in error.message and (error.line, error.column) == (8, 17)
    assert result.plan is None


def test_pv_precision_is_recorded_only_when_the_recipe_sets_it():
    assert "pv_precision" not in plan_numerics(DEFAULT_DTYPE, None)
    assert plan_numerics(DEFAULT_DTYPE, {"pv_precision": "fp16"})["pv_precision"] == "fp16"
def test_every_schema_dtype_enum_lists_the_table():
    assert set(load_schema("report")["properties"]["plan"]["properties"]["dtype"]["enum"]) == set(DTYPES)
    assert set(load_schema("sensitivity")["properties"]["numerics"]["properties"]["dtype"]["enum"]) == set(DTYPES)


def test_int8_numerics_come_from_the_table_not_the_fp8_defaults():
    assert get_format(INT8_DTYPE).target_name("mindiesd-precision") is None  # quant_attention has no INT8 mode
    assert plan_numerics(INT8_DTYPE, None) == DEFAULT_INT8_NUMERICS
    assert "query_block_tokens" not in plan_numerics(INT8_DTYPE, None)
    given = plan_numerics(INT8_DTYPE, {"k_mean_subtraction": False, "scale_scope": "head"})
    assert given["k_mean_subtraction"] is False and given["scale_scope"] == "head" and given["v_rotation"] is True
    recipe_props = load_schema("recipe")["properties"]["numerics"]["properties"]
    assert set(INT8_ONLY_NUMERICS) <= set(recipe_props)
    assert {k for k in get_format(INT8_DTYPE).key_names if all(s.key(k) is None for s in DTYPES.values()
                                                           if s.name != INT8_DTYPE)} == set(INT8_ONLY_NUMERICS)
    assert recipe_props["p_scale"]["const"] == INT8_P_SCALE
