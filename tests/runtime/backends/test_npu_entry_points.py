"""The three NPU entry points' call contracts, checked on CPU with stand-in ops that record their arguments and
validate them against the documented signatures (shared reference npu-entry-points.md, ascend-fp8-attention.md).
A stand-in checks how we CALL each kernel; it says nothing about the kernel itself, which only the tests marked
`npu` exercise (they compare each entry point with the reference backend on a real Ascend 950)."""

from __future__ import annotations

import hashlib
import logging
import math

import pytest
import torch
import torch.nn.functional as F

import runtime
from qcompiler.cli.run_options import QUANTIZED_BACKEND_NAMES
from qcompiler.formats import FORMATS as DTYPES
from runtime.backends import (
    BACKEND_NAMES,
    NpuMindiesdFiaBackend,
    NpuQuantAttentionBackend,
    NpuTorchFiaBackend,
    ReferenceBackend,
    resolve_quantized_backend,
)
from runtime.backends.reference import attention_with_pv_precision
from runtime.errors import BackendUnavailableError
from runtime.numerics import Numerics
from runtime.quant import registered_quantizers
from runtime.quant.per_block import dequantize_per_block
from runtime.quant.rotation import get_rotation, randomized_hadamard
from runtime.tiny import run_tiny
from tests.runtime.conftest import I2V, I2V_RULES, recipe

INT32_MAX = 2147483647

# sha256 of the bytes of vllm-omni 0.30.0's get_quant_attention_rotation(cpu, dtype, D) (its seed 425500),
# computed by running that function from the vllm_omni-0.30.0 wheel (platforms/npu/quant/kv_quant_npu.py).
VLLM_OMNI_ROTATION_SHA256 = {
    (64, torch.float32): "32e4707215c953bb07512e2dfd22afe20f16f67857ef2a39682406c0560b686e",
    (64, torch.bfloat16): "cc383e0debd9b7ecc3262be457207b0755c2cef3258c3dde095d9550943f96e7",
    (64, torch.float16): "62d0d7457101a942f551600a95ea5ff394012b94e005c83e87d919cf1e020de4",
    (128, torch.float32): "52c9a807306904135acfb4959c5d06cba40f5a01094522c8541ea8627621d700",
    (128, torch.bfloat16): "ba9f4ebc0619237654e26c85d835a5c7806d16900559a911e3ff922e6cdfd6ce",
    (128, torch.float16): "80b71ef33e5b0a438d3b292217733df7ec8a7436d04203177efed3824a87c9ef",
}


def sha256(tensor: torch.Tensor) -> str:
    return hashlib.sha256(tensor.contiguous().view(torch.uint8).numpy().tobytes()).hexdigest()


@pytest.mark.parametrize("head_dim, dtype", sorted(VLLM_OMNI_ROTATION_SHA256, key=str))
def test_rotation_is_bit_identical_to_vllm_omni_0_30(head_dim, dtype):
    assert sha256(get_rotation("cpu", dtype, head_dim, 425500)) == VLLM_OMNI_ROTATION_SHA256[(head_dim, dtype)]


def test_rotation_leaves_the_global_rng_alone():
    with torch.random.fork_rng():  # leave the global RNG as other tests found it
        torch.manual_seed(7)
        expected = torch.rand(3)
        torch.manual_seed(7)
        randomized_hadamard(64, 1234)
        assert torch.equal(torch.rand(3), expected)


def bsnd(batch, tokens, heads, head_dim, dtype=torch.float32, seed=0, kv_tokens=None):
    g = torch.Generator().manual_seed(seed)
    kv = tokens if kv_tokens is None else kv_tokens
    return tuple(torch.randn(batch, s, heads, head_dim, generator=g).to(dtype) for s in (tokens, kv, kv))


def exact_bsnd(q, k, v):
    out = F.scaled_dot_product_attention(*(t.float().transpose(1, 2) for t in (q, k, v)))
    return out.transpose(1, 2)


# ---------------------------------------------------------------------------------------------------------------
# (a) mindiesd.quant_attention, as vllm-omni 0.30.0 calls it


class StandInQuantAttention:
    """Parameters named as vllm-omni 0.30.0 passes them (an unexpected name raises TypeError). Records the call
    and returns unquantized attention of the rotated inputs, so a layout or rotation mix-up shows."""

    def __init__(self) -> None:
        self.calls: list[dict] = []

    def __call__(self, query, key, value, *, precision, layout, scale, q_rot=None, k_rot=None):
        assert layout == "BSND" and query.dim() == 4
        self.calls.append({"query": query, "key": key, "value": value, "precision": precision, "scale": scale,
                           "q_rot": q_rot, "k_rot": k_rot})
        if q_rot is not None:
            query, key = query @ q_rot, key @ k_rot
        out = F.scaled_dot_product_attention(*(t.transpose(1, 2) for t in (query, key, value)), scale=scale)
        return out.transpose(1, 2).to(query.dtype)


@pytest.mark.parametrize("dtype", NpuQuantAttentionBackend.dtypes)
@pytest.mark.parametrize("head_dim", [64, 128])
def test_quant_attention_call_contract(dtype, head_dim):
    op = StandInQuantAttention()
    q, k, v = bsnd(2, 33, 3, head_dim, torch.bfloat16)
    rotation = get_rotation("cpu", torch.bfloat16, head_dim, 425500)
    out = NpuQuantAttentionBackend(Numerics(dtype=dtype), op=op).attend(q, k, v, rotation)
    (call,) = op.calls
    assert call["precision"] == {"fp8_e4m3_per_block": "fp8", "mxfp8_e4m3": "mxfp8", "mxfp4_e2m1": "mxfp4"}[dtype]
    assert call["scale"] == pytest.approx(1 / math.sqrt(head_dim))
    # q/k/v go in as the model produced them: BSND, unrotated, their own dtype; R is vllm-omni's, for both.
    assert call["query"] is q and call["key"] is k and call["value"] is v
    assert call["q_rot"] is call["k_rot"] is rotation
    assert sha256(call["q_rot"]) == VLLM_OMNI_ROTATION_SHA256[(head_dim, torch.bfloat16)]
    assert out.shape == q.shape and out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), exact_bsnd(q, k, v), atol=3e-2, rtol=3e-2)


def test_quant_attention_without_rotation_passes_no_matrices_and_centres_k():
    op = StandInQuantAttention()
    q, k, v = bsnd(1, 8, 2, 64)
    NpuQuantAttentionBackend(Numerics(hadamard_rotation=False, k_mean_subtraction=True), op=op).attend(q, k, v, None)
    (call,) = op.calls
    assert call["q_rot"] is None and call["k_rot"] is None
    torch.testing.assert_close(call["key"], k - k.mean(dim=1, keepdim=True))


# ---------------------------------------------------------------------------------------------------------------
# (b) torch.ops.mindiesd.fused_infer_attention_score_v2 and (c) torch_npu.npu_fused_infer_attention_score_v2,
# both per-block FP8 quant mode 7


class StandInFia:
    """Keyword-only parameters: those MindIE-SD 3.1.0's FP8RotateQuantFA passes to its op (`torch_style=False`),
    or those of the torch-npu 2.14.0 signature the seed called (`torch_style=True`). Validates the per-block FP8
    contract, then computes attention from the dequantized inputs; `pad_rows` pads the output to check the crop."""

    def __init__(self, torch_style: bool, pad_rows: int = 0) -> None:
        self.torch_style = torch_style
        self.pad_rows = pad_rows
        self.calls: list[dict] = []

    def __call__(self, query, key, value, *, input_layout, num_query_heads, softmax_scale, pre_tokens, next_tokens,
                 query_quant_mode, key_quant_mode, value_quant_mode, dequant_scale_query, dequant_scale_key,
                 dequant_scale_value, out_dtype, **torch_npu_only):
        if self.torch_style:
            assert torch_npu_only == {"num_key_value_heads": num_query_heads, "sparse_mode": 0}
        else:
            assert torch_npu_only == {}  # FP8RotateQuantFA passes neither
        batch, heads, s_q, head_dim = query.shape  # BNSD
        s_kv = key.shape[2]
        assert input_layout == "BNSD" and num_query_heads == heads
        assert query.dtype == key.dtype == value.dtype == torch.float8_e4m3fn
        assert key.shape == value.shape == (batch, heads, s_kv, head_dim)
        assert (query_quant_mode, key_quant_mode, value_quant_mode) == (7, 7, 7)
        assert dequant_scale_query.shape == (batch, heads, math.ceil(s_q / 128), 1)
        assert dequant_scale_key.shape == dequant_scale_value.shape == (batch, heads, math.ceil(s_kv / 256), 1)
        assert {s.dtype for s in (dequant_scale_query, dequant_scale_key, dequant_scale_value)} == {torch.float32}
        assert softmax_scale == pytest.approx(1 / math.sqrt(head_dim))
        assert pre_tokens == next_tokens == INT32_MAX
        self.calls.append({"q": tuple(query.shape), "kv": tuple(key.shape), "out_dtype": out_dtype})
        q = dequantize_per_block(query, dequant_scale_query, 128)
        k = dequantize_per_block(key, dequant_scale_key, 256)
        v = dequantize_per_block(value, dequant_scale_value, 256)
        # The kernel rounds P to e4m3 for P @ V (the reference's default pv_precision); emulate that here.
        out = attention_with_pv_precision(q, k, v, softmax_scale, "e4m3").to(out_dtype)
        out = F.pad(out, (0, 0, 0, self.pad_rows))
        return out, torch.zeros(batch, heads, s_q, 1)


PER_BLOCK_ENTRY_POINTS = [(NpuMindiesdFiaBackend, False), (NpuTorchFiaBackend, True)]


@pytest.mark.parametrize("backend_class, torch_style", PER_BLOCK_ENTRY_POINTS)
@pytest.mark.parametrize("tokens_q, tokens_kv, head_dim", [(300, 300, 64), (192, 16, 128), (1, 700, 64)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_per_block_fia_call_contract(backend_class, torch_style, tokens_q, tokens_kv, head_dim, dtype):
    op = StandInFia(torch_style, pad_rows=5)
    q, k, v = bsnd(2, tokens_q, 3, head_dim, dtype, kv_tokens=tokens_kv)
    rotation = get_rotation("cpu", dtype, head_dim, 425500)
    out = backend_class(Numerics(), op=op).attend(q, k, v, rotation)
    assert op.calls == [{"q": (2, 3, tokens_q, head_dim), "kv": (2, 3, tokens_kv, head_dim), "out_dtype": dtype}]
    assert out.shape == q.shape and out.dtype == dtype  # padded rows cropped, BNSD back to BSND
    # Same quantized inputs as the reference backend: equal up to float rounding.
    torch.testing.assert_close(out, ReferenceBackend(Numerics()).attend(q, k, v, rotation))


ENTRY_POINTS = [
    (NpuQuantAttentionBackend, StandInQuantAttention),
    (NpuMindiesdFiaBackend, lambda: StandInFia(False)),
    (NpuTorchFiaBackend, lambda: StandInFia(True)),
]


@pytest.mark.parametrize("backend_class, stand_in", ENTRY_POINTS)
def test_refusals_other_head_dims_grouped_heads_and_non_bsnd(backend_class, stand_in):
    op = stand_in()
    backend = backend_class(Numerics(), op=op)
    assert "head dim 96" in backend.unsupported_reason(96) and backend.unsupported_reason(128) is None
    with pytest.raises(ValueError, match="head dim 96"):
        backend.attend(*bsnd(1, 4, 2, 96), None)
    q, _, _ = bsnd(1, 4, 4, 64)
    _, k, v = bsnd(1, 4, 2, 64)
    with pytest.raises(ValueError, match="grouped-query"):
        backend.attend(q, k, v, None)
    with pytest.raises(ValueError, match="4-D BSND"):
        backend.attend(q[0], q[0], q[0], None)
    assert op.calls == []
    # No mask parameter at all: a masked call never reaches a quantized backend (the processor runs it native).
    with pytest.raises(TypeError):
        backend.attend(*bsnd(1, 4, 2, 64), None, attn_mask=torch.ones(4, 4))  # type: ignore[call-arg]


@pytest.mark.parametrize("backend_class, stand_in", ENTRY_POINTS)
def test_each_entry_point_serves_a_tiny_pipeline_cell_for_cell(backend_class, stand_in, i2v_pipe, compile_tiny):
    op = stand_in()
    plan = compile_tiny(recipe(I2V, kinds="[self, cross]", rules=I2V_RULES))
    with runtime.load(i2v_pipe, plan, backend=backend_class(Numerics.from_plan(plan), op=op)) as handle:
        run_tiny(i2v_pipe)
        report = handle.report()
    # one op call more than the report counts: the load-time probe
    assert report.matches_plan() and report.call_counts[backend_class.name] == len(op.calls) - 1 > 0


def rejecting(stand_in):
    """A stand-in whose op exists and takes the call, but whose CANN stack rejects it (as a release without FIA
    quant mode 7 does): well-formed arguments, then an error."""
    def make():
        op = stand_in()

        def call(*args, **kwargs):
            op(*args, **kwargs)
            raise RuntimeError("call aclnnFusedInferAttentionScoreV2 failed, EZ1001: quant mode 7 is not supported")
        call.calls = op.calls
        return call
    return make


@pytest.mark.parametrize("backend_class, stand_in", ENTRY_POINTS)
@pytest.mark.parametrize("fallback", ["error", "native"])
def test_a_stack_that_rejects_the_call_follows_the_fallback_policy_at_load(backend_class, stand_in, fallback,
                                                                         i2v_pipe, compile_tiny):
    plan = compile_tiny(recipe(I2V, fallback=fallback))
    op = rejecting(stand_in)()
    backend = backend_class(Numerics.from_plan(plan), op=op)
    probe = f"{backend_class.name}: probe call failed on this stack: RuntimeError: .*EZ1001"
    if fallback == "error":
        with pytest.raises(BackendUnavailableError, match=f"{probe}.*fallback policy is 'error'"):
            runtime.load(i2v_pipe, plan, backend=backend)
        return
    with pytest.warns(RuntimeWarning, match=probe):
        handle = runtime.load(i2v_pipe, plan, backend=backend)
    with handle:
        run_tiny(i2v_pipe)  # nothing raises mid-pipeline: the planned FP8 cells run native
        report = handle.report()
    assert len(op.calls) == 1 and report.fallback_calls > 0 and backend_class.name not in report.call_counts


# ---------------------------------------------------------------------------------------------------------------
# A dtype the chosen entry point cannot run follows the plan's fallback policy


@pytest.mark.parametrize("backend_class", [NpuMindiesdFiaBackend, NpuTorchFiaBackend])
def test_mx_plan_on_a_per_block_entry_point_follows_the_fallback_policy(backend_class, i2v_pipe, compile_tiny):
    strict = compile_tiny(recipe(I2V, dtype="mxfp8_e4m3"))
    backend = backend_class(Numerics.from_plan(strict), op=StandInFia(backend_class is NpuTorchFiaBackend))
    with pytest.raises(BackendUnavailableError, match="cannot run mxfp8_e4m3"):
        runtime.load(i2v_pipe, strict, backend=backend)
    lenient = compile_tiny(recipe(I2V, dtype="mxfp4_e2m1", fallback="native"))
    backend = backend_class(Numerics.from_plan(lenient), op=StandInFia(backend_class is NpuTorchFiaBackend))
    with pytest.warns(RuntimeWarning, match="cannot run mxfp4_e2m1"):
        handle = runtime.load(i2v_pipe, lenient, backend=backend)
    with handle:
        run_tiny(i2v_pipe)
        report = handle.report()
    assert report.fallback_calls > 0 and backend.name not in report.call_counts
    assert all("cannot run mxfp4_e2m1" in why for why in report.fallback_reasons.values())


@pytest.mark.parametrize("dtype", list(DTYPES))
def test_every_dtype_runs_on_the_reference_backend_cell_for_cell(dtype, i2v_pipe, compile_tiny):
    plan = compile_tiny(recipe(I2V, kinds="[self, cross]", rules=I2V_RULES, dtype=dtype))
    assert plan.data["dtype"] == dtype
    with runtime.load(i2v_pipe, plan, backend="reference") as handle:
        run_tiny(i2v_pipe)
        report = handle.report()
    assert report.matches_plan() and report.call_counts["reference"] > 0 and report.quantized_backend == "reference"


# ---------------------------------------------------------------------------------------------------------------
# The registry and the one selection function


def test_auto_here_finds_no_entry_point_and_says_why_for_each(caplog):
    if any(resolve_quantized_backend(n)[0] is not None for n in ("npu-quant-attention", "npu-mindiesd-fia", "npu-torch-fia")):
        pytest.skip("an NPU entry point is available here")
    with caplog.at_level(logging.INFO, logger="runtime"):
        backend, reason = resolve_quantized_backend("auto", Numerics(dtype="mxfp4_e2m1"))
    assert backend is None
    positions = [reason.index(name) for name in ("npu-quant-attention", "npu-mindiesd-fia", "npu-torch-fia")]
    assert positions == sorted(positions) and "backend='reference'" in reason
    assert any("backend='auto' found no" in r.getMessage() for r in caplog.records)


def test_names_and_aliases():
    assert isinstance(resolve_quantized_backend("fp8-reference")[0], ReferenceBackend)
    assert resolve_quantized_backend("reference", Numerics(dtype="mxfp8_e4m3"))[0].numerics.dtype == "mxfp8_e4m3"
    assert resolve_quantized_backend("fp8-npu")[1] == resolve_quantized_backend("npu-torch-fia")[1]
    assert resolve_quantized_backend("native") == (None, "backend='native' was requested")
    with pytest.raises(ValueError, match="choose one of auto, native, reference"):
        resolve_quantized_backend("fp8-gpu")
    # The CLI's torch-free list is the registry's, minus `native`.
    assert set(QUANTIZED_BACKEND_NAMES) == set(BACKEND_NAMES) - {"native"}
    # Every dtype has a quantizer; only dtypes with a quant_attention precision go to entry point (a).
    # int8_per_tensor quantizes the softmax inside its kernel: its reference is runtime/quant/int8.py, not a
    # dequantize-then-attend row, and MindIE-SD's quant_attention has no per-tensor INT8 mode.
    quantizers = registered_quantizers()
    assert set(quantizers) == set(DTYPES)
    whole = {"int8_per_tensor", "sage1_int8_fp16pv", "sage2_int8_fp8pv_sm90"}  # P quantized inside the kernel
    assert {n for n, q in quantizers.items() if q.kernel_inputs} == set(DTYPES) - whole
    assert all(quantizers[n].attention_reference is not None for n in whole)
    assert set(NpuQuantAttentionBackend.dtypes) == {n for n, spec in DTYPES.items()
                                                    if spec.target_name("mindiesd-precision")}
    assert NpuQuantAttentionBackend.dtypes and "int8_per_tensor" not in NpuQuantAttentionBackend.dtypes


# ---------------------------------------------------------------------------------------------------------------
# On a real Ascend 950 only: each entry point against the reference backend


NPU_CASES = [(cls, dtype) for cls, _ in ENTRY_POINTS for dtype in cls.dtypes]


@pytest.mark.npu
@pytest.mark.parametrize("backend_class, dtype", NPU_CASES, ids=[f"{c.name}-{d}" for c, d in NPU_CASES])
def test_entry_point_matches_the_reference_on_an_npu(backend_class, dtype):
    backend = backend_class(Numerics(dtype=dtype))
    reason = backend.unavailable_reason()
    if reason is not None:
        pytest.skip(reason)
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 1000, 4, 128, generator=g).to("npu", torch.bfloat16) for _ in range(3))
    rotation = get_rotation("npu", torch.bfloat16, 128, 425500)
    got = backend.attend(q, k, v, rotation)
    want = ReferenceBackend(Numerics(dtype=dtype)).attend(q, k, v, rotation)
    assert got.shape == q.shape and got.dtype == torch.bfloat16
    cosine = F.cosine_similarity(got.float().flatten(), want.float().flatten(), dim=0)
    assert cosine > 0.999, f"{backend.name} {dtype}: cos-sim {float(cosine):.6f} against the reference"
