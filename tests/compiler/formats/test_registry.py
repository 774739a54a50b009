"""qcompiler/formats/__init__.py: the registry is discovered from the package, and every consumer reads it: the
schemas' dtype enums and numerics pairing, `--dtype` choices, the compiler."""

from __future__ import annotations

import json
import textwrap

import pytest
from click.testing import CliRunner

import qcompiler
import qcompiler.formats
from qcompiler.cli.main import cli
from qcompiler.formats import FORMATS, discover_formats, get_format, unregister_format
from qcompiler.schemas import committed_schema, load_schema, schema_errors
from tests.conftest import VALID_RECIPE

SCHEMAS = ("recipe", "plan", "plan_v1", "report", "sensitivity", "family", "family_v1")

# A made-up format: one module, nothing else (no schema edit, no CLI edit, no compiler edit).
MADE_UP = textwrap.dedent('''
    from qcompiler.formats.base import HADAMARD_ROTATION, ROTATION_SEED, FormatSpec, NumericsKey, k_mean_subtraction_key

    FORMAT = FormatSpec(
        name="fp6_made_up",
        element="float6_e3m2",
        label="FP6 e3m2, made up for a test",
        description="a format that exists only in this test",
        order=10,
        numerics=(
            HADAMARD_ROTATION,
            ROTATION_SEED,
            NumericsKey("query_block_tokens", 128, (128,), settable=False),
            NumericsKey("kv_block_tokens", 256, (256,), settable=False),
            k_mean_subtraction_key(True),
        ),
        targets={"xdit": "MADE_UP_FP6"},
    )
''')


@pytest.fixture
def made_up_format(tmp_path, monkeypatch):
    (tmp_path / "fp6_made_up.py").write_text(MADE_UP, encoding="utf-8")
    monkeypatch.setattr(qcompiler.formats, "__path__", [*qcompiler.formats.__path__, str(tmp_path)])
    discover_formats()
    yield get_format("fp6_made_up")
    unregister_format("fp6_made_up")


def test_the_registry_is_the_packages_modules_in_listing_order():
    assert list(FORMATS) == ["fp8_e4m3_per_block", "mxfp8_e4m3", "mxfp4_e2m1", "int8_per_tensor",
                            "sage1_int8_fp16pv", "sage2_int8_fp8pv_sm90"]
    assert all(spec.name == name for name, spec in FORMATS.items())
    with pytest.raises(KeyError, match="unknown quantized attention dtype 'fp3'; known: fp8_e4m3_per_block"):
        get_format("fp3")


@pytest.mark.parametrize("name", SCHEMAS)
def test_committed_schemas_equal_what_qcompile_loads_from_the_registry(name):
    assert committed_schema(name) == load_schema(name), (
        f"schemas/{name}.schema.json disagrees with the format registry (qcompiler/formats/): write its `dtype` "
        f"enums and numerics allOf as `qcompile schema` shows them")


def test_every_dtype_enum_is_the_registry():
    enums = [load_schema("recipe")["properties"]["dtype"]["enum"], load_schema("plan")["properties"]["dtype"]["enum"],
             load_schema("report")["properties"]["plan"]["properties"]["dtype"]["enum"],
             load_schema("sensitivity")["properties"]["numerics"]["properties"]["dtype"]["enum"]]
    assert all(enum == list(FORMATS) for enum in enums)


def test_the_plan_schema_pairs_each_dtype_with_the_keys_its_spec_records():
    plan = qcompiler.compile_recipe_text(VALID_RECIPE.replace("dtype: fp8_e4m3_per_block", "dtype: mxfp8_e4m3"))
    data = json.loads(json.dumps(plan.data))
    assert schema_errors("plan", data) == []
    data["numerics"]["v_rotation"] = True  # an int8_per_tensor key in an MX plan
    assert [(e.json_path, e.message) for e in schema_errors("plan", data)] == [("$.numerics", "False schema does not allow True")]


def test_a_format_module_added_to_the_package_is_offered_and_compiles(made_up_format):
    for command in ("suggest", "calibrate"):
        result = CliRunner().invoke(cli, [command, "--help"])
        assert result.exit_code == 0 and "fp6_made_up" in result.output, result.output
    assert load_schema("recipe")["properties"]["dtype"]["enum"][-1] == "fp6_made_up"
    plan = qcompiler.compile_recipe_text(VALID_RECIPE.replace("dtype: fp8_e4m3_per_block", "dtype: fp6_made_up"))
    assert plan.data["dtype"] == "fp6_made_up"
    assert dict(plan.numerics) == {"hadamard_rotation": True, "rotation_seed": 425500, "query_block_tokens": 128,
                                   "kv_block_tokens": 256, "k_mean_subtraction": True}
    assert schema_errors("plan", json.loads(json.dumps(plan.data))) == []


def test_a_made_up_format_is_refused_by_the_schemas_once_removed(made_up_format):
    unregister_format("fp6_made_up")
    result = CliRunner().invoke(cli, ["suggest", "x.json", "-o", "r.yaml", "--dtype", "fp6_made_up"])
    assert result.exit_code == 2 and "fp6_made_up" in result.output and "fp8_e4m3_per_block" in result.output
    with pytest.raises(qcompiler.errors.RecipeError, match="dtype"):
        qcompiler.compile_recipe_text(VALID_RECIPE.replace("dtype: fp8_e4m3_per_block", "dtype: fp6_made_up"))
