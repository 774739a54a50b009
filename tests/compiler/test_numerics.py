"""qcompiler.numerics is the one record of formats and defaults: schemas, compiler and runtime agree with it."""

from __future__ import annotations

import qcompiler
from qcompiler.numerics import (
    DEFAULT_DTYPE,
    DEFAULT_NUMERICS,
    DTYPES,
    KV_BLOCK_TOKENS,
    MAX_ROTATION_SEED,
    QUERY_BLOCK_TOKENS,
    plan_numerics,
)
from qcompiler.schemas import load_schema
from tests.conftest import VALID_RECIPE


def test_schemas_list_exactly_the_dtypes_of_the_table():
    assert set(load_schema("recipe")["properties"]["dtype"]["enum"]) == set(DTYPES)
    assert set(load_schema("plan")["properties"]["dtype"]["enum"]) == set(DTYPES)
    assert DEFAULT_DTYPE in DTYPES


def test_seed_bounds_agree_with_the_schemas():
    recipe_seed = load_schema("recipe")["properties"]["numerics"]["properties"]["rotation_seed"]
    plan_seed = load_schema("plan")["properties"]["numerics"]["properties"]["rotation_seed"]
    assert recipe_seed["maximum"] == plan_seed["maximum"] == MAX_ROTATION_SEED
    assert recipe_seed["default"] == DEFAULT_NUMERICS["rotation_seed"]


def test_compiled_plans_record_the_table_row_and_defaults():
    plan = qcompiler.compile_recipe_text(VALID_RECIPE)
    assert plan.data["dtype"] in DTYPES
    assert plan.numerics["query_block_tokens"] == QUERY_BLOCK_TOKENS == 128
    assert plan.numerics["kv_block_tokens"] == KV_BLOCK_TOKENS == 256
    assert plan_numerics(DEFAULT_DTYPE, None)["rotation_seed"] == 425500
