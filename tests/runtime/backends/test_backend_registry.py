"""A backend is one module that registers itself: selection, `auto`'s order, its reasons (dtype, head dim,
environment) and the names `backend=` takes all come from the `@register_backend` declarations."""

from __future__ import annotations

import importlib
import logging
import sys
import textwrap

import pytest

import runtime
from runtime.backends import (
    BackendRegistrationError,
    ReferenceBackend,
    backend_names,
    backends,
    canonical_name,
    register_backend,
    resolve_quantized_backend,
)
from runtime.backends.base import AttentionBackend, QuantizedBackend
from runtime.backends.registry import component_refusal, import_backend_modules
from runtime.numerics import Numerics
from runtime.tiny import run_tiny
from tests.runtime.conftest import T2V, recipe


def test_the_registry_finds_every_backend_module_of_the_package():
    assert list(backends()) == ["native", "reference", "npu-quant-attention", "npu-mindiesd-fia", "npu-torch-fia",
                              "fp8-triton", "int8-npu", "sage-v1", "sage-sm90"]
    assert backend_names()[-2:] == ("fp8-reference", "fp8-npu")
    assert [s.name for s in backends().values() if s.auto_order is not None] == [
        "npu-quant-attention", "npu-mindiesd-fia", "npu-torch-fia", "fp8-triton", "int8-npu", "sage-v1", "sage-sm90"]
    assert {s.module for s in backends().values()} == {
        f"runtime.backends.{m}" for m in ("native", "reference", "npu_quant_attention", "npu_mindiesd_fia",
                                          "npu_torch_fia", "fp8_triton", "int8_npu", "sage_cuda")}


def test_a_package_of_backend_modules_is_imported_whole(tmp_path, monkeypatch):
    package = tmp_path / "more_backends"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "other_backend.py").write_text(textwrap.dedent('''
        from runtime.backends.base import AttentionBackend
        from runtime.backends.registry import register_backend

        @register_backend("other-native", devices=("cpu",), masks=("any",), summary="another native")
        class OtherNative(AttentionBackend):
            pass
        '''))
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        assert import_backend_modules("more_backends") == ["more_backends.other_backend"]
        assert "other-native" in backends() and "other-native" in backend_names()
        assert resolve_quantized_backend("other-native") == (None, "backend 'other-native' is not a quantized backend")
    finally:
        runtime.backends.unregister_backend("other-native")
        for name in ("more_backends", "more_backends.other_backend"):
            sys.modules.pop(name, None)
    assert "other-native" not in backends()


def test_a_made_up_backend_module_joins_auto_first_with_its_reasons(made_up, caplog):
    assert list(backends()).index("made-up") == list(backends()).index("npu-quant-attention") - 1  # auto_order 5 < 10
    assert canonical_name("made-up-alias") == "made-up" and "made-up-alias" in backend_names()
    assert made_up.MadeUpBackend.name == "made-up"
    assert made_up.MadeUpBackend.dtypes == ("fp8_e4m3_per_block", "mxfp8_e4m3")

    backend, reason = resolve_quantized_backend("auto", Numerics())
    assert backend is None
    assert reason.startswith("backend='auto' found no kernel for fp8_e4m3_per_block (made-up: made-up's library is "
                             "not installed; npu-quant-attention: ")
    # The dtype is the reason when it cannot run the plan's: said before the environment.
    _, reason = resolve_quantized_backend("auto", Numerics.int8())
    assert "(made-up: backend 'made-up' cannot run int8_per_tensor (it runs fp8_e4m3_per_block, mxfp8_e4m3); " in reason
    _, reason = resolve_quantized_backend("made-up", Numerics(dtype="mxfp4_e2m1"))
    assert reason == "backend 'made-up' cannot run mxfp4_e2m1 (it runs fp8_e4m3_per_block, mxfp8_e4m3)"
    _, reason = resolve_quantized_backend("made-up", Numerics(pv_precision="fp16"))
    assert reason == "backend 'made-up' computes P @ V with e4m3 P; the plan asks pv_precision=fp16"

    made_up.MadeUpBackend.missing = None
    with caplog.at_level(logging.INFO, logger="runtime"):
        backend, reason = resolve_quantized_backend("auto", Numerics(dtype="mxfp8_e4m3"))
    assert isinstance(backend, made_up.MadeUpBackend) and reason == ""
    assert backend.numerics.dtype == "mxfp8_e4m3"
    assert "backend='auto' chose made-up for mxfp8_e4m3" in caplog.text
    assert resolve_quantized_backend("made-up-alias")[0].name == "made-up"


def test_a_made_up_backends_head_dims_decide_its_refusals_and_the_advice(made_up):
    backend = backends()["made-up"].make(Numerics())
    assert backend.unsupported_reason(96) is None and backend.unsupported_reason(64) is None
    assert backend.unsupported_reason(128) == ("head dim 128 is not one the FP8 e4m3, per-block fp32 scales attention kernel takes "
                                               "(64 or 96)")
    # At head dim 96 only the made-up backend runs FP8: the reference's refusal now sends the user to it.
    reference = ReferenceBackend(Numerics())
    why, remedy = component_refusal("reference", reference, "", Numerics(), 96)
    assert why == "head dim 96 is not one the FP8 e4m3, per-block fp32 scales attention kernel takes (64 or 128)"
    assert remedy.startswith("Run where made-up can serve it")
    # ... and where nobody does, the sentence names the made-up backend's head dims too.
    why, _ = component_refusal("auto", None, "nothing here", Numerics(), 32)
    assert why == ("no attention backend runs fp8_e4m3_per_block at head dim 32 (reference, npu-quant-attention, "
                   "npu-mindiesd-fia, npu-torch-fia, fp8-triton take head dim 64 or 128; made-up takes head dim "
                   "64 or 96)")


def test_auto_runs_a_tiny_pipeline_on_the_made_up_backend(made_up, compile_tiny):
    made_up.MadeUpBackend.missing = None
    pipe = runtime.tiny.build_tiny_pipeline(T2V)
    plan = compile_tiny(recipe(T2V, rotation=False), name="made-up.yaml")
    with runtime.load(pipe, plan, backend="auto") as handle:
        run_tiny(pipe)
        report = handle.report()
    assert handle.quantized_backend == "made-up"
    assert report.call_counts.get("made-up", 0) == made_up.MadeUpBackend.calls > 0
    assert report.matches_plan()


@pytest.mark.parametrize(("declaration", "words"), [
    ({"name": "reference"}, "already registered by ReferenceBackend (runtime.backends.reference)"),
    ({"aliases": ("fp8-npu",)}, "'fp8-npu' is already taken by 'npu-torch-fia'"),
    ({"name": "auto"}, "'auto' is already taken by 'the selection mode'"),
    ({"name": "Bad_Name"}, "a backend name is lowercase words joined by '-'"),
    ({"auto_order": 10}, "auto_order 10 is already 'npu-quant-attention''s"),
    ({"dtypes": ("fp9",)}, "unknown dtype(s) fp9"),
    ({"dtypes": ()}, "a QuantizedBackend declares the plan dtypes it runs"),
    ({"head_dims": {}}, "head_dims must give the head dims of every dtype it runs"),
    ({"pv_precisions": ()}, "pv_precisions must name the P @ V precisions it computes"),
    ({"devices": ("tpu",)}, "devices must be among cpu, cuda, npu"),
    ({"masks": ("causal",)}, "masks must be among none, any"),
    ({"summary": " "}, "a one-line summary is required"),
])
def test_an_inconsistent_declaration_is_refused_when_its_module_is_imported(declaration, words):
    from qcompiler.backend_table import HeadDims

    arguments = {"name": "test-backend", "devices": ("cpu",), "dtypes": ("fp8_e4m3_per_block",),
                 "head_dims": HeadDims(exactly=(64,)), "pv_precisions": ("e4m3",), "summary": "a test", **declaration}
    name = arguments.pop("name")
    with pytest.raises(BackendRegistrationError, match=rf"@register_backend\('{name}'\): .*") as caught:
        register_backend(name, **arguments)(type("TestBackend", (QuantizedBackend,), {}))
    assert words in str(caught.value)
    assert "test-backend" not in backends() and list(backends())[:2] == ["native", "reference"]


def test_only_a_quantized_backend_declares_dtypes_or_joins_auto():
    plain = type("Plain", (AttentionBackend,), {})
    with pytest.raises(BackendRegistrationError, match="any other backend none"):
        register_backend("plain", devices=("cpu",), dtypes=("fp8_e4m3_per_block",), summary="x")(plain)
    with pytest.raises(BackendRegistrationError, match="only a quantized backend can be tried by `auto`"):
        register_backend("plain", devices=("cpu",), auto_order=99, summary="x")(plain)
    assert "plain" not in backends()


def test_a_reloaded_backend_module_replaces_its_own_registration(made_up):
    old = made_up.MadeUpBackend
    reloaded = importlib.reload(made_up)
    assert backends()["made-up"].cls is reloaded.MadeUpBackend and reloaded.MadeUpBackend is not old
    assert list(backends()).count("made-up") == 1
