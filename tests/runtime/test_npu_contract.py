"""The fp8-npu backend's call into torch_npu.npu_fused_infer_attention_score_v2, checked on CPU against the
documented signature with a stand-in op. This checks how we CALL the kernel (names, shapes, dtypes, layouts,
scales, modes); it says nothing about the kernel itself, which only the `npu`-marked test below exercises."""

from __future__ import annotations

import math

import pytest
import torch

import runtime
from runtime.backends import Fp8NpuBackend, Fp8ReferenceBackend, npu_unavailable_reason
from runtime.backends.fp8_reference import attention_with_pv_precision
from runtime.numerics import Numerics
from runtime.quantize import dequantize_per_block
from runtime.rotation import randomized_hadamard
from runtime.tiny import run_tiny
from tests.runtime.conftest import I2V, I2V_RULES, recipe

INT32_MAX = 2147483647


class StandInOp:
    """Keyword-only parameters named as in the torch-npu 2.14.0 signature (an unknown name raises TypeError).
    Validates the per-block FP8 contract, then computes attention from the dequantized inputs so results can
    be compared with fp8-reference."""

    def __init__(self) -> None:
        self.calls: list[dict] = []

    def __call__(self, query, key, value, *, dequant_scale_query=None, dequant_scale_key=None,
                 dequant_scale_value=None, num_query_heads=1, num_key_value_heads=0, softmax_scale=1.0,
                 pre_tokens=INT32_MAX, next_tokens=INT32_MAX, input_layout="BSH", sparse_mode=0,
                 query_quant_mode=0, key_quant_mode=0, value_quant_mode=0, out_dtype=None):
        batch, heads, s_q, head_dim = query.shape  # BNSD
        s_kv = key.shape[2]
        assert input_layout == "BNSD"
        assert query.dtype == key.dtype == value.dtype == torch.float8_e4m3fn
        assert key.shape == value.shape == (batch, heads, s_kv, head_dim)
        assert num_query_heads == num_key_value_heads == heads
        assert (query_quant_mode, key_quant_mode, value_quant_mode) == (7, 7, 7)
        assert dequant_scale_query.shape == (batch, heads, math.ceil(s_q / 128), 1)
        assert dequant_scale_key.shape == dequant_scale_value.shape == (batch, heads, math.ceil(s_kv / 256), 1)
        assert {s.dtype for s in (dequant_scale_query, dequant_scale_key, dequant_scale_value)} == {torch.float32}
        assert softmax_scale == pytest.approx(1 / math.sqrt(head_dim))
        assert pre_tokens == next_tokens == INT32_MAX and sparse_mode == 0
        assert head_dim in (64, 128)
        self.calls.append({"q": tuple(query.shape), "kv": tuple(key.shape), "out_dtype": out_dtype})
        q = dequantize_per_block(query, dequant_scale_query, 128)
        k = dequantize_per_block(key, dequant_scale_key, 256)
        v = dequantize_per_block(value, dequant_scale_value, 256)
        # The NPU kernel computes P @ V with e4m3 P (pv_precision "e4m3"), as fp8-reference emulates it.
        out = attention_with_pv_precision(q, k, v, softmax_scale, "e4m3").to(out_dtype)
        return out, torch.zeros(batch, heads, s_q, 1)


@pytest.mark.parametrize("tokens_q, tokens_kv", [(300, 300), (192, 16), (1, 700)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_call_contract_and_layout_round_trip(tokens_q, tokens_kv, dtype):
    op = StandInOp()
    g = torch.Generator().manual_seed(0)
    q = torch.randn(2, tokens_q, 3, 64, generator=g).to(dtype)  # BSND, as diffusers hands them over
    k = torch.randn(2, tokens_kv, 3, 64, generator=g).to(dtype)
    v = torch.randn(2, tokens_kv, 3, 64, generator=g).to(dtype)
    rotation = randomized_hadamard(64, 425500).to(dtype)
    out = Fp8NpuBackend(Numerics(), op=op).attend(q, k, v, rotation)
    assert op.calls == [{"q": (2, 3, tokens_q, 64), "kv": (2, 3, tokens_kv, 64), "out_dtype": dtype}]
    assert out.shape == q.shape and out.dtype == dtype
    # Same quantized inputs, BNSD in and back to BSND: equal to the emulation up to float rounding.
    reference = Fp8ReferenceBackend(Numerics()).attend(q, k, v, rotation)
    torch.testing.assert_close(out, reference)


def test_pipeline_runs_through_the_stand_in_with_real_wan_shapes(i2v_pipe, compile_tiny):
    op = StandInOp()
    plan = compile_tiny(recipe(I2V, kinds="[self, cross]", rules=I2V_RULES))
    with runtime.load(i2v_pipe, plan, backend=Fp8NpuBackend(Numerics.from_mapping(plan.numerics), op=op)) as handle:
        run_tiny(i2v_pipe)
        report = handle.report()
    assert report.matches_plan() and report.call_counts["fp8-npu"] == len(op.calls) > 0
    shapes = {(c["q"], c["kv"]) for c in op.calls}
    # 9 frames at 16x16 -> 3 latent frames of 2x2 -> 3 video tokens (patch 1x2x2); 16 text tokens; 2 heads x 64.
    assert shapes == {((1, 2, 3, 64), (1, 2, 3, 64)), ((1, 2, 3, 64), (1, 2, 16, 64))}


def test_npu_backend_reports_why_it_cannot_run_here():
    if npu_unavailable_reason() is None:
        pytest.skip("an FP8-capable NPU is present")
    assert "torch_npu" in npu_unavailable_reason()
    assert Fp8NpuBackend().unavailable_reason() == npu_unavailable_reason()


@pytest.mark.npu
@pytest.mark.skipif(npu_unavailable_reason() is not None, reason="needs torch_npu and an Ascend 950 NPU")
def test_fp8_npu_matches_fp8_reference_on_an_npu():
    device = torch.device("npu")
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 1000, 4, 128, generator=g).to(device, torch.bfloat16) for _ in range(3))
    rotation = randomized_hadamard(128, 425500).to(device, torch.bfloat16)
    npu = Fp8NpuBackend(Numerics()).attend(q, k, v, rotation)
    reference = Fp8ReferenceBackend(Numerics()).attend(q, k, v, rotation)
    assert npu.shape == q.shape and npu.dtype == torch.bfloat16
    cosine = torch.nn.functional.cosine_similarity(npu.float().flatten(), reference.float().flatten(), dim=0)
    assert cosine > 0.999
