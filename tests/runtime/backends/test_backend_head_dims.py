"""Head dims no backend serves: the runtime says which backends take which head dims for the plan's dtype and never
sends the user to a backend already passed (or one that would refuse too); the runtime's backends and the
torch-free manifest `qcompile lint` reads (qcompiler/backends.json) are one record."""

from __future__ import annotations

import json

import pytest

import runtime
from qcompiler import compile_recipe_text
from qcompiler.backend_table import manifest, no_backend_reason, serving_backends
from qcompiler.families import BUILTIN_FAMILY_DIR
from qcompiler.formats import FORMATS as DTYPE_NAMES
from runtime.backends import BACKENDS, QuantizedBackend
from runtime.numerics import Numerics
from runtime.tiny import build_tiny_pipeline, tiny_family
from tests.runtime.conftest import recipe

FP8_KERNELS = "reference, npu-quant-attention, npu-mindiesd-fia, npu-torch-fia, fp8-triton take head dim 64 or 128"


def family_with_head_dim(tmp_path, monkeypatch, head_dim: int) -> str:
    """wan2.1-t2v-1.3b with every component of its tiny variant at `head_dim`, from $QCOMPILE_FAMILY_PATH."""
    data = json.loads(next(p for p in BUILTIN_FAMILY_DIR.glob("*.json") if "t2v_13b" in p.name).read_text())
    data["name"] = f"test-wan-hd{head_dim}"
    for component in data["variants"]["tiny"]["components"]:
        component["head_dim"] = head_dim
    (tmp_path / "family.json").write_text(json.dumps(data))
    monkeypatch.setenv("QCOMPILE_FAMILY_PATH", str(tmp_path))
    return data["name"]


@pytest.fixture
def head_dim_12(tmp_path, monkeypatch):
    name = family_with_head_dim(tmp_path, monkeypatch, 12)
    return name, build_tiny_pipeline(name, family=tiny_family(name))


@pytest.mark.parametrize("backend", ["reference", "auto", "npu-torch-fia"])
def test_head_dim_no_backend_takes_names_who_takes_what_and_never_the_backend_passed(head_dim_12, backend):
    name, pipe = head_dim_12
    plan = compile_recipe_text(recipe(name), name="hd12.yaml", variant="tiny")
    with pytest.raises(runtime.BackendUnavailableError) as caught:
        runtime.load(pipe, plan, backend=backend)
    message = str(caught.value)
    assert f"no attention backend runs fp8_e4m3_per_block at head dim 12 ({FP8_KERNELS})" in message
    assert "backend='reference'" not in message and "emulate" not in message
    assert "set `fallback: native` in the recipe and recompile" in message
    if backend == "reference":  # the backend's own words come first
        assert "reference: head dim 12 is not one the FP8 e4m3" in message


def test_int8_plan_at_head_dim_12_names_the_int8_rule(head_dim_12):
    name, pipe = head_dim_12
    plan = compile_recipe_text(recipe(name, dtype="int8_per_tensor"), name="hd12.yaml", variant="tiny")
    with pytest.raises(runtime.BackendUnavailableError,
                       match=r"no attention backend runs int8_per_tensor at head dim 12 \(reference, int8-npu take "
                             r"head dim powers of two from 32 \(32, 64, 128, 256, \.\.\.\)\)"):
        runtime.load(pipe, plan, backend="reference")


def test_servable_head_dim_suggests_the_reference_only_when_not_passed(i2v_pipe, compile_tiny):
    plan = compile_tiny(recipe("wan2.2-i2v-a14b"))  # head dim 64: every FP8 backend takes it
    with pytest.raises(runtime.BackendUnavailableError) as caught:
        runtime.load(i2v_pipe, plan, backend="npu-torch-fia")
    message = str(caught.value)
    assert ("Run where npu-quant-attention, npu-mindiesd-fia or fp8-triton can serve it" in message
            and "pass backend='reference' to emulate fp8_e4m3_per_block in PyTorch" in message)
    assert "where npu-torch-fia" not in message  # the one passed, which is why we are here


def test_runtime_backends_and_the_manifest_agree():
    quantized = {name for name, spec in BACKENDS.items() if isinstance(spec.make(Numerics()), QuantizedBackend)}
    recorded = {entry.name: entry for entry in manifest()}
    assert quantized == {name for name, entry in recorded.items() if entry.dtypes}
    for name in quantized:
        backend = BACKENDS[name].make(Numerics())
        assert backend.dtypes == recorded[name].dtypes
        for dtype in backend.dtypes:
            served = BACKENDS[name].make(Numerics.for_dtype(dtype))
            for head_dim in (12, 32, 64, 96, 128, 256):
                takes = name in serving_backends(dtype, head_dim, rotated=True)
                assert (served.unsupported_reason(head_dim) is None) == takes, (name, dtype, head_dim)


def test_every_dtype_has_a_backend_at_the_shipped_head_dims():
    for dtype in DTYPE_NAMES:
        assert no_backend_reason(dtype, 128, rotated=True) is None and no_backend_reason(dtype, 64, True) is None
    assert no_backend_reason("int8_per_tensor", 96, rotated=False) is None  # 32-aligned, no rotation to need 2^n
