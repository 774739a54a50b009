"""The int8-npu backend's call into torch_npu.npu_fused_infer_attention_score (FIA v1 full-quant INT8), checked
on CPU against a stand-in op that validates and records its arguments. The stand-in checks the call contract
(dtypes, layout, scale shapes and values, heads, softmax scale, no band limit); it says nothing about the kernel,
which only the `a2a3`-marked test below exercises, on a real Atlas A2/A3."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import runtime
from runtime.backends import BACKENDS, ReferenceBackend, resolve_quantized_backend
from runtime.backends.int8_npu import Int8NpuBackend, int8_npu_unavailable_reason, is_a2a3_soc
from runtime.errors import BackendUnavailableError
from runtime.numerics import Numerics
from runtime.quant.int8 import (
    QUANT_SCALE1_MODES,
    ROUNDINGS,
    ROW_SUM_SOURCES,
    Int8AttentionInputs,
    KernelSemantics,
    int8_kernel_reference,
    prepare_int8_inputs,
)
from runtime.quant.rotation import get_rotation
from runtime.tiny import run_tiny
from tests.runtime.conftest import T2V, recipe

INT32_MAX = 2**31 - 1


class StandInFia:
    """Keyword-only parameters named as in torch-npu 2.9's npu_fused_infer_attention_score (an unknown name raises
    TypeError). Validates the full-quant contract, records the call, and returns the CPU reference's kernel output
    for the arguments it got (so the backend's pre- and post-processing can be checked end to end)."""

    def __init__(self, compute: bool = True):
        self.calls: list[dict] = []
        self.compute = compute

    def __call__(self, query, key, value, *, pse_shift=None, atten_mask=None, actual_seq_lengths=None,
                 actual_seq_lengths_kv=None, dequant_scale1=None, quant_scale1=None, dequant_scale2=None,
                 quant_scale2=None, quant_offset2=None, num_heads=1, scale=1.0, pre_tokens=INT32_MAX,
                 next_tokens=INT32_MAX, input_layout="BSH", num_key_value_heads=0, sparse_mode=0,
                 inner_precise=0, block_size=0, softmax_lse_flag=False):
        assert query.dtype == key.dtype == value.dtype == torch.int8
        assert input_layout == "BNSD" and query.dim() == 4
        batch, heads, tokens, head_dim = query.shape
        assert num_heads == heads and key.shape[:2] == (batch, heads) and head_dim % 32 == 0
        for scale_tensor in (dequant_scale1, quant_scale1, dequant_scale2):
            assert isinstance(scale_tensor, torch.Tensor)  # device tensors: no host round trip
            assert scale_tensor.shape == (1,) and scale_tensor.dtype == torch.float32
            assert scale_tensor.device == query.device
        assert scale == pytest.approx(1 / math.sqrt(head_dim))
        assert pre_tokens == next_tokens == INT32_MAX and sparse_mode == 0 and atten_mask is None
        assert quant_scale2 is None and quant_offset2 is None  # fp16 out, not INT8 out
        self.calls.append({"shape": tuple(query.shape), "dequant_scale1": dequant_scale1, "quant_scale1": quant_scale1,
                           "dequant_scale2": dequant_scale2, "num_heads": num_heads})
        if not self.compute:
            return torch.empty(query.shape, dtype=torch.float16, device=query.device), None
        inputs = Int8AttentionInputs(query, key, value, dequant_scale1, torch.ones(1), torch.zeros(1), None)
        out = int8_kernel_reference(inputs, scale, float(quant_scale1), dequant_scale2)
        return out, torch.zeros(batch, heads, tokens, 1)


def inputs(batch=2, tokens=40, heads=3, head_dim=64, dtype=torch.bfloat16, seed=0):
    generator = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(batch, tokens, heads, head_dim, generator=generator) for _ in range(3))
    return q.to(dtype), (k + 2).to(dtype), v.to(dtype)


def test_call_contract_and_result_equal_the_reference_backend():
    q, k, v = inputs()
    rotation = get_rotation("cpu", torch.bfloat16, 64, 425500)
    op = StandInFia()
    numerics = Numerics.int8()
    out = Int8NpuBackend(numerics, op=op).attend(q, k, v, rotation)
    assert len(op.calls) == 1 and op.calls[0]["shape"] == (2, 3, 40, 64) and op.calls[0]["num_heads"] == 3
    prepared = prepare_int8_inputs(q, k, v, rotation, numerics)
    torch.testing.assert_close(op.calls[0]["dequant_scale1"], prepared.query_scale * prepared.key_scale)
    assert float(op.calls[0]["quant_scale1"]) == 127.0  # P~ in [0, 1] -> [0, 127], kernel multiplies (inferred)
    torch.testing.assert_close(op.calls[0]["dequant_scale2"], prepared.value_scale / 127)
    assert out.shape == q.shape and out.dtype == torch.bfloat16  # BSND, fp16 cast back to the input dtype
    # V's rotation undone: the same as the reference backend, and close to exact attention
    torch.testing.assert_close(out, ReferenceBackend(numerics).attend(q, k, v, rotation), rtol=0, atol=0)
    exact = F.scaled_dot_product_attention(*(t.float().transpose(1, 2) for t in (q, k, v))).transpose(1, 2)
    assert F.cosine_similarity(out.float().flatten(), exact.flatten(), dim=0) > 0.99


def test_head_scope_makes_one_call_per_head_with_its_own_scales():
    q, k, v = inputs()
    op = StandInFia()
    numerics = Numerics.int8(scale_scope="head")
    out = Int8NpuBackend(numerics, op=op).attend(q, k, v, get_rotation("cpu", torch.bfloat16, 64, 425500))
    assert [c["num_heads"] for c in op.calls] == [1, 1, 1]
    scales = [float(c["dequant_scale1"]) for c in op.calls]
    assert len(set(scales)) == 3
    torch.testing.assert_close(out, ReferenceBackend(numerics).attend(
        q, k, v, get_rotation("cpu", torch.bfloat16, 64, 425500)), rtol=0, atol=0)


def test_divide_semantics_pass_the_reciprocal():
    q, k, v = inputs()
    op = StandInFia(compute=False)
    Int8NpuBackend(Numerics.int8(), op=op, semantics=KernelSemantics(quant_scale1="divide")).attend(q, k, v, None)
    assert float(op.calls[0]["quant_scale1"]) == pytest.approx(1 / 127)


def test_scales_are_computed_without_a_host_sync():
    # On the meta device any .item()/float()/bool() of a tensor raises: the pre-pass must stay on the device.
    q, k, v = (t.to("meta") for t in inputs(dtype=torch.float32))
    op = StandInFia(compute=False)
    out = Int8NpuBackend(Numerics.int8(), op=op).attend(q, k, v, get_rotation("meta", torch.float32, 64, 425500))
    assert out.device.type == "meta" and out.shape == q.shape and len(op.calls) == 1


@pytest.mark.parametrize(("name", "expected"), [
    ("Ascend910B1", True), ("Ascend910B4", True), ("Ascend910_9391", True), ("Ascend910_9362", True),
    ("Ascend950PR", False), ("Ascend910A", False), ("Ascend910ProB", False), ("Ascend310P3", False),
])
def test_a2a3_detection_goes_by_soc_name(name, expected):
    assert is_a2a3_soc(name) is expected


def test_unsupported_head_dims_are_named():
    backend = Int8NpuBackend(Numerics.int8(), op=StandInFia())
    assert backend.unsupported_reason(128) is None
    assert "multiple of 32" in backend.unsupported_reason(80)
    assert "power of two" in backend.unsupported_reason(96)
    no_rotation = Numerics.int8(hadamard_rotation=False, v_rotation=False)
    assert Int8NpuBackend(no_rotation, op=StandInFia()).unsupported_reason(96) is None


def test_registry_picks_int8_npu_only_for_the_int8_dtype():
    if int8_npu_unavailable_reason() is None:
        pytest.skip("an A2/A3 NPU is present: auto would pick int8-npu")
    assert "torch_npu" in int8_npu_unavailable_reason()
    assert BACKENDS["int8-npu"].auto_order is not None
    backend, reason = resolve_quantized_backend("auto", Numerics.int8())
    assert backend is None and "int8-npu: torch_npu" in reason and "backend='reference'" in reason
    # The FP8/MX entry points refuse the INT8 dtype by name, before their device checks.
    assert "npu-torch-fia: backend 'npu-torch-fia' cannot run int8_per_tensor" in reason
    # int8-npu never serves another dtype, whatever the device.
    backend, reason = resolve_quantized_backend("int8-npu", Numerics())
    assert backend is None and "cannot run fp8_e4m3_per_block" in reason
    backend, reason = resolve_quantized_backend(Int8NpuBackend(Numerics(dtype="mxfp8_e4m3"), op=StandInFia()))
    assert backend is None and "cannot run mxfp8_e4m3" in reason
    backend, reason = resolve_quantized_backend("auto", Numerics())
    assert backend is None and "int8-npu: backend 'int8-npu' cannot run fp8_e4m3_per_block" in reason
    # The reference backend runs INT8 too (its step-by-step CPU reference), when asked for by name.
    backend, reason = resolve_quantized_backend("reference", Numerics.int8())
    assert isinstance(backend, ReferenceBackend) and backend.numerics.is_int8 and reason == ""
    assert resolve_quantized_backend(Int8NpuBackend(Numerics.int8(), op=StandInFia()))[0].name == "int8-npu"


class RejectingStack(StandInFia):
    """The op exists and takes the arguments, but this CANN stack rejects the call, as a release without the
    full-quant INT8 path does (the error text follows CANN's "EZ..." form; any exception is a rejection)."""

    def __call__(self, *args, **kwargs):
        super().__call__(*args, **kwargs)  # the call itself is well formed
        raise RuntimeError("call aclnnFusedInferAttentionScore failed, EZ1001: full quant mode is not supported")


def test_load_time_probe_turns_a_rejecting_stack_into_a_reason():
    op = RejectingStack(compute=False)
    backend = Int8NpuBackend(Numerics.int8(), op=op)
    reason = backend.unavailable_reason()
    assert reason is not None and reason.startswith("int8-npu: probe call failed on this stack: RuntimeError")
    assert "EZ1001" in reason and len(op.calls) == 1  # one probe call, and the answer is kept
    assert backend.unavailable_reason() == reason and len(op.calls) == 1
    assert resolve_quantized_backend(backend) == (None, reason)
    assert Int8NpuBackend(Numerics.int8(), op=StandInFia()).unavailable_reason() is None


@pytest.fixture(scope="module")
def t2v_int8_plans():
    from qcompiler import compile_recipe_text

    return {fallback: compile_recipe_text(recipe(T2V, dtype="int8_per_tensor", fallback=fallback),
                                          name="int8.yaml", variant="tiny")
            for fallback in ("error", "native")}


def test_rejecting_stack_with_fallback_error_is_refused_at_load(t2v_pipe, t2v_int8_plans):
    backend = Int8NpuBackend(Numerics.from_plan(t2v_int8_plans["error"]), op=RejectingStack(compute=False))
    with pytest.raises(BackendUnavailableError, match=r"transformer .*int8-npu: probe call failed on this stack: "
                                                      r"RuntimeError: .*EZ1001.* fallback policy is 'error'"):
        runtime.load(t2v_pipe, t2v_int8_plans["error"], backend=backend)


def test_rejecting_stack_with_fallback_native_runs_native_warned_and_counted(t2v_pipe, t2v_int8_plans):
    plan = t2v_int8_plans["native"]
    op = RejectingStack(compute=False)
    backend = Int8NpuBackend(Numerics.from_plan(plan), op=op)
    with pytest.warns(RuntimeWarning, match="int8-npu: probe call failed on this stack"):
        handle = runtime.load(t2v_pipe, plan, backend=backend)
    with handle:
        run_tiny(t2v_pipe)  # no error mid-pipeline: the planned INT8 cells run native
        report = handle.report()
    assert len(op.calls) == 1  # the probe; the pipeline never called the rejecting op
    planned = sum(row.count("1") for row in plan.data["tables"]["transformer"]["self"])
    assert report.fallback_calls == 2 * planned > 0 and "int8-npu" not in report.call_counts  # 2: CFG
    assert all("probe call failed" in why for why in report.fallback_reasons.values())
    assert not report.matches_plan()


def test_working_stand_in_serves_the_tiny_pipeline(t2v_pipe, t2v_int8_plans):
    plan = t2v_int8_plans["error"]
    op = StandInFia()
    with runtime.load(t2v_pipe, plan, backend=Int8NpuBackend(Numerics.from_plan(plan), op=op)) as handle:
        run_tiny(t2v_pipe)
        report = handle.report()
    assert report.matches_plan() and report.call_counts["int8-npu"] == len(op.calls) - 1 > 0  # - 1: the probe


def _semantics_variants():
    for mode in QUANT_SCALE1_MODES:
        for rounding in ROUNDINGS:
            for row_sum in ROW_SUM_SOURCES:
                yield KernelSemantics(quant_scale1=mode, p_rounding=rounding, row_sum=row_sum)


@pytest.mark.a2a3
@pytest.mark.skipif(int8_npu_unavailable_reason() is not None, reason="needs torch_npu and an Atlas A2/A3 NPU")
def test_int8_npu_matches_the_cpu_reference_on_an_a2a3():
    """Runs the real kernel once and compares its fp16 output with the reference under every inferred semantics;
    the default must be the closest match (else this names the one that is, to settle the inference)."""
    device = torch.device("npu")
    q, k, v = inputs(batch=1, tokens=1024, heads=2, head_dim=128)
    numerics = Numerics.int8()
    rotation = get_rotation(device, torch.bfloat16, 128, 425500)
    prepared = prepare_int8_inputs(*(t.to(device) for t in (q, k, v)), rotation, numerics)
    backend = Int8NpuBackend(numerics)
    kernel = backend._call(prepared.query, prepared.key, prepared.value, prepared.dequant_scale1.view(1),
                           prepared.dequant_scale2(127).view(1), torch.full((1,), 127.0, device=device)).float().cpu()
    cpu = Int8AttentionInputs(*(t.cpu() for t in (prepared.query, prepared.key, prepared.value,
                                                   prepared.query_scale, prepared.key_scale, prepared.value_scale)),
                              None)
    errors = {}
    for semantics in _semantics_variants():
        ref = int8_kernel_reference(cpu, 1 / math.sqrt(128), 127.0, cpu.dequant_scale2(127), semantics).float()
        errors[semantics] = float((ref - kernel).abs().max())
    best = min(errors, key=errors.get)
    print("max |kernel - reference| per semantics:", {str(s): e for s, e in errors.items()})
    assert best == KernelSemantics() or errors[KernelSemantics()] == errors[best], f"the kernel behaves as {best}"
    full = backend.attend(*(t.to(device) for t in (q, k, v)), rotation).float().cpu()
    reference = ReferenceBackend(numerics).attend(q, k, v, get_rotation("cpu", torch.bfloat16, 128, 425500))
    assert F.cosine_similarity(full.flatten(), reference.float().flatten(), dim=0) > 0.999
