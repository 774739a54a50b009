"""qcompiler/formats/base.py: each format's spec, its plan `numerics` and the typed record both sides use."""

from __future__ import annotations

import pytest

import qcompiler
from qcompiler.formats import FORMATS, FormatSpec, Numerics, NumericsKey, get_format, recipe_findings
from runtime.numerics import Numerics as RuntimeNumerics
from tests.conftest import VALID_RECIPE


@pytest.mark.parametrize("dtype", list(FORMATS))
def test_each_formats_numerics_record_round_trips(dtype):
    spec = get_format(dtype)
    record = spec.record(None)
    assert record.dtype == dtype
    assert Numerics.from_mapping(record.to_mapping(), dtype=dtype) == record
    # What the compiler records is what the record writes back (a when_set key is absent until set).
    assert record.to_mapping() == spec.plan_numerics(None)
    changed = spec.record({"hadamard_rotation": False, "rotation_seed": 7})
    assert (changed.hadamard_rotation, changed.rotation_seed) == (False, 7)
    assert Numerics.from_mapping(changed.to_mapping(), dtype=dtype) == changed


def test_the_runtime_runs_with_the_record_the_compiler_writes():
    assert RuntimeNumerics is Numerics
    plan = qcompiler.compile_recipe_text(VALID_RECIPE.replace("dtype: fp8_e4m3_per_block", "dtype: int8_per_tensor"))
    record = Numerics.from_plan(plan)
    assert record == get_format("int8_per_tensor").record({"hadamard_rotation": True, "rotation_seed": 425500})
    assert record.to_mapping() == dict(plan.numerics)
    assert record.is_int8 and record.rotated and record.v_rotation and record.k_mean_subtraction


def test_when_set_keys_are_recorded_only_when_set_and_read_back_with_their_default():
    spec = get_format("fp8_e4m3_per_block")
    assert "pv_precision" not in spec.plan_numerics({})
    fp16 = spec.record({"pv_precision": "fp16"})
    assert fp16.to_mapping()["pv_precision"] == "fp16"
    assert Numerics.from_mapping({k: v for k, v in fp16.to_mapping().items() if k != "pv_precision"},
                                 dtype=spec.name).pv_precision == "e4m3"


def test_the_record_refuses_values_a_format_does_not_allow():
    with pytest.raises(ValueError, match="scale_scope 'tile' is not one of call, head"):
        Numerics.for_dtype("int8_per_tensor", scale_scope="tile")
    with pytest.raises(ValueError, match="pv_precision 'bf16'"):
        Numerics(pv_precision="bf16")
    with pytest.raises(ValueError, match="unknown quantized attention dtype 'fp3'.*fp8_e4m3_per_block"):
        Numerics(dtype="fp3")
    # A key a format lacks is not checked against it (the record keeps the field's default).
    assert Numerics(dtype="mxfp8_e4m3").to_mapping().keys() == get_format("mxfp8_e4m3").plan_numerics(None).keys()


def test_a_spec_with_a_key_the_record_cannot_hold_is_refused():
    with pytest.raises(ValueError, match="numerics keys \\['block_rows'\\] are unknown"):
        FormatSpec("x", "int8", "x", "x", 9, (NumericsKey("block_rows", 4),))


def test_other_formats_keys_are_findings_of_the_owners_rule():
    [qc152] = recipe_findings("mxfp4_e2m1", {"pv_precision": "fp16"})
    assert (qc152.code, qc152.path, qc152.at_key) == ("QC152", ("numerics", "pv_precision"), False)
    assert qc152.message == "`numerics.pv_precision` applies to dtype fp8_e4m3_per_block, not `mxfp4_e2m1`"
    codes = [(f.code, f.severity) for f in recipe_findings("fp8_e4m3_per_block", {"v_rotation": True, "p_scale": 127})]
    assert codes == [("QC150", "error"), ("QC150", "error")]
    [qc151] = recipe_findings("int8_per_tensor", {"v_rotation": False})
    assert (qc151.code, qc151.severity, qc151.path) == ("QC151", "warning", ("dtype",))


def test_export_target_names_come_from_the_specs():
    assert {name: spec.target_name("vllm-omni") for name, spec in FORMATS.items()} == {
        "fp8_e4m3_per_block": "fp8", "mxfp8_e4m3": "mxfp8", "mxfp4_e2m1": "mxfp4", "int8_per_tensor": None,
        "sage1_int8_fp16pv": None, "sage2_int8_fp8pv_sm90": None}
    assert get_format("mxfp8_e4m3").target_name("mindiesd-strategy") is None
    assert "OnlineQuantConfig" in get_format("mxfp8_e4m3").target_refusal("mindiesd-strategy")
    assert "own runtime" in get_format("int8_per_tensor").target_refusal("xdit")
