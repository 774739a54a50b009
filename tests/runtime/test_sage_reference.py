"""runtime/quant/sage.py: the CPU references of SageAttention's kernels (docs/sageattention.md).

Properties of the quantizers and of the whole computation, then SageAttention 1.0.6's own Triton kernels run in
Triton's CPU interpreter (TRITON_INTERPRET=1, set by tests/conftest.py without CUDA) against the reference.
"""

from __future__ import annotations

import importlib.util
import math
import os

import pytest
import torch

from runtime.quant import sage
from runtime.quant.sage import (
    SageReferenceError,
    sage1_per_block_int8,
    sage1_sageattn,
    sage2_per_channel_fp8,
    sage2_per_thread_int8,
    sage2_per_warp_int8,
    sage2_qk_int8_pv_fp8_cuda_sm90,
)

# cos-sim against exact float64 attention, bf16 inputs [1, 2, 300, 128] (seed 0), measured on this reference:
#   inputs ("random" / "outlier" / "peaky")   sage1      sm90 per_thread   sm90 per_warp   bf16-rounded exact
#                                            0.999904   0.999293          0.999279        0.999999
#                                            0.999994   0.999993          0.999993
#                                            0.998203   0.998540          0.998425
# Bounds keep a margin under the measured figures; a broken scale, group or softmax step drops far below them.
COS_SIM_BOUNDS = {"random": 0.9990, "outlier": 0.9999, "peaky": 0.9970}
SM90_COS_SIM_BOUNDS = {"random": 0.9985, "outlier": 0.9999, "peaky": 0.9970}


def _inputs(kind: str, seed: int = 0, tokens: int = 300, head_dim: int = 128, dtype=torch.bfloat16):
    g = torch.Generator().manual_seed(seed)
    shape = (1, 2, tokens, head_dim)

    def randn(*s):
        return torch.randn(*s, generator=g)

    if kind == "random":
        q, k, v = randn(*shape), randn(*shape), randn(*shape)
    elif kind == "outlier":  # a large per-channel offset on K (what smoothing removes) and a V bias
        q, k, v = randn(*shape), randn(*shape) + 8 * randn(1, 1, 1, head_dim), 0.5 * randn(*shape) + 3
    elif kind == "peaky":  # sharp attention rows
        q, k, v = 4 * randn(*shape), 4 * randn(*shape), randn(*shape)
    else:
        raise AssertionError(kind)
    return q.to(dtype), k.to(dtype), v.to(dtype)


def _exact(q, k, v, is_causal=False):
    return torch.nn.functional.scaled_dot_product_attention(q.double(), k.double(), v.double(), is_causal=is_causal)


def _cos(a, b) -> float:
    return torch.nn.functional.cosine_similarity(a.double().flatten(), b.double().flatten(), dim=0).item()


# ---------------------------------------------------------------------------------------------- quantizers


def _dequant_error_ok(x, x_int8, token_scale):
    """|x - int8 * scale| <= scale / 2 (round to nearest), with float32 slack, and |int8| <= 127."""
    err = (x.double() - x_int8.double() * token_scale.double()[..., None]).abs()
    assert x_int8.abs().max() <= 127
    assert (err <= token_scale.double()[..., None] * (0.5 + 1e-5)).all()


def test_sage1_per_block_round_trip_and_block_sizes():
    q, k, _ = _inputs("random", tokens=200, head_dim=64)
    sm_scale = 0.125
    quant = sage1_per_block_int8(q, k, sm_scale=sm_scale)
    assert quant.q_scale.shape == (1, 2, 2, 1) and quant.k_scale.shape == (1, 2, 4, 1)  # ceil(200/128), ceil(200/64)
    _dequant_error_ok(q.float() * torch.tensor(sm_scale * sage.SAGE1_LOG2E), quant.q_int8, quant.q_token_scale)
    _dequant_error_ok(k.float(), quant.k_int8, quant.k_token_scale)
    # each block's largest element maps to +-127
    assert quant.q_int8[:, :, :128].abs().amax(dim=(2, 3)).eq(127).all()


@pytest.mark.parametrize("quantize", [sage2_per_thread_int8, sage2_per_warp_int8])
def test_sage2_qk_round_trip(quantize):
    q, k, _ = _inputs("outlier", tokens=300, head_dim=64)
    km = k.mean(dim=2, keepdim=True)
    quant = quantize(q, k, km)
    _dequant_error_ok(q.float(), quant.q_int8, quant.q_token_scale)
    smoothed = (k - km) if quantize is sage2_per_thread_int8 else (k.float() - km.float())
    _dequant_error_ok(smoothed.float(), quant.k_int8, quant.k_token_scale)


def _changed_groups(quantize, which: str, token: int, tokens: int = 256):
    q, k, _ = _inputs("random", tokens=tokens, head_dim=64)
    before = quantize(q, k)
    if which == "q":
        q = q.clone()
        q[:, :, token] *= 50
    else:
        k = k.clone()
        k[:, :, token] *= 50
    after = quantize(q, k)
    scale_before = before.q_scale if which == "q" else before.k_scale
    scale_after = after.q_scale if which == "q" else after.k_scale
    changed = (scale_before != scale_after).flatten(2).any(dim=(0, 1))
    token_changed = ((before.q_token_scale if which == "q" else before.k_token_scale)
                     != (after.q_token_scale if which == "q" else after.k_token_scale)).any(dim=(0, 1))
    return changed.nonzero().flatten().tolist(), token_changed.nonzero().flatten().tolist()


def test_granularity_sage1_per_block():
    groups, tokens = _changed_groups(lambda q, k: sage1_per_block_int8(q, k), "q", token=130)
    assert groups == [1] and tokens == list(range(128, 256))  # Q: 128-token blocks
    groups, tokens = _changed_groups(lambda q, k: sage1_per_block_int8(q, k), "k", token=130)
    assert groups == [2] and tokens == list(range(128, 192))  # K: 64-token blocks


def test_granularity_sm90_per_thread():
    # Q: token 37 = warp band 2 (tokens 32..47), group 37 % 8 = 5 -> tokens 37 and 45 share one scale
    groups, tokens = _changed_groups(lambda q, k: sage2_per_thread_int8(q, k), "q", token=37)
    assert groups == [2 * 8 + 5] and tokens == [37, 45]
    # K: token 133 = block 1 (128..255), group (133 % 8) // 2 = 2 -> the 32 tokens with token % 8 in {4, 5}
    groups, tokens = _changed_groups(lambda q, k: sage2_per_thread_int8(q, k), "k", token=133)
    assert groups == [1 * 4 + 2]
    assert tokens == [t for t in range(128, 256) if t % 8 in (4, 5)]


def test_granularity_sm90_per_warp():
    groups, tokens = _changed_groups(lambda q, k: sage2_per_warp_int8(q, k), "q", token=37)
    assert groups == [2] and tokens == list(range(32, 48))  # Q: 16-token warp bands
    groups, tokens = _changed_groups(lambda q, k: sage2_per_warp_int8(q, k), "k", token=133)
    assert groups == [1] and tokens == list(range(128, 256))  # K: 128-token blocks


def test_v_fp8_per_channel_scale_and_round_trip():
    _, _, v = _inputs("outlier", tokens=300, head_dim=64)
    v = v.clone()
    v[:, :, 7, 3] = 1000  # one outlier raises only channel 3's scale
    v8, scale = sage2_per_channel_fp8(v)
    assert scale.shape == (1, 2, 64)
    amax = v.float().abs().amax(dim=2)
    assert torch.equal(scale, amax / 448.0)
    assert v8.abs().max() <= 448 and torch.equal(v8, v8.to(torch.float8_e4m3fn).float())  # e4m3 values
    dq = v8 * scale[:, :, None, :]
    err = (dq - v.float()).abs()
    # e4m3: 3 mantissa bits -> half an ulp is 2^-4 relative for normals; subnormals step 2^-9 * scale
    assert (err <= v.float().abs() * 2**-4 + scale[:, :, None, :] * 2**-10 + 1e-6).all()


def test_v_fp8_all_zero_channel_is_nan_as_in_the_kernel():
    v = torch.randn(1, 1, 130, 64).to(torch.bfloat16)
    v[..., 9] = 0
    v8, scale = sage2_per_channel_fp8(v)
    assert scale[0, 0, 9] == 0 and v8[..., 9].isnan().all() and not v8[..., :9].isnan().any()


# -------------------------------------------------------------------------------------- whole computation


@pytest.mark.parametrize("kind", sorted(COS_SIM_BOUNDS))
def test_sage1_cos_sim_against_exact_attention(kind):
    q, k, v = _inputs(kind)
    assert _cos(sage1_sageattn(q, k, v), _exact(q, k, v)) >= COS_SIM_BOUNDS[kind]


@pytest.mark.parametrize("kind", sorted(SM90_COS_SIM_BOUNDS))
@pytest.mark.parametrize("gran", ["per_thread", "per_warp"])
def test_sm90_cos_sim_against_exact_attention(kind, gran):
    q, k, v = _inputs(kind)
    out = sage2_qk_int8_pv_fp8_cuda_sm90(q, k, v, qk_quant_gran=gran)
    assert out.dtype == torch.bfloat16 and out.shape == q.shape
    assert _cos(out, _exact(q, k, v)) >= SM90_COS_SIM_BOUNDS[kind]


def test_smoothing_makes_the_output_blind_to_a_key_offset():
    """Softmax is invariant to adding one vector to every key; with smooth_k the INT8 grid is too, so the error
    against exact attention stays what it was without the offset; without smoothing the offset eats the INT8
    range and the error grows."""
    q, k, v = _inputs("random", tokens=256)
    offset = 20 * torch.randn(1, 1, 1, 128, generator=torch.Generator().manual_seed(3))
    k_off = (k.float() + offset).to(torch.bfloat16)
    for fn in (sage1_sageattn, sage2_qk_int8_pv_fp8_cuda_sm90):
        base = _cos(fn(q, k, v), _exact(q, k, v))
        smooth = _cos(fn(q, k_off, v), _exact(q, k_off, v))
        raw = _cos(fn(q, k_off, v, smooth_k=False), _exact(q, k_off, v))
        # measured: sage1 0.99991 / 0.99992 / 0.99268, sm90 0.99934 / 0.99934 / 0.99227
        assert abs(smooth - base) < 1e-4 and (1 - raw) > 5 * (1 - smooth), (fn.__name__, base, smooth, raw)


def test_layouts_agree():
    q, k, v = _inputs("random", tokens=150, head_dim=64)
    for fn in (sage1_sageattn, sage2_qk_int8_pv_fp8_cuda_sm90):
        hnd = fn(q, k, v, tensor_layout="HND")
        nhd = fn(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), tensor_layout="NHD")
        assert nhd.shape == (1, 150, 2, 64)
        assert torch.equal(nhd.transpose(1, 2), hnd)


def test_grouped_query_heads_share_one_kv_head():
    q, k, v = _inputs("random", tokens=150, head_dim=64)
    k1, v1 = k[:, :1], v[:, :1]
    for fn in (sage1_sageattn, sage2_qk_int8_pv_fp8_cuda_sm90):
        gqa = fn(q, k1, v1)
        assert torch.equal(gqa, fn(q, k1.expand_as(q).contiguous(), v1.expand_as(q).contiguous()))


def test_sm90_one_key_block_equals_the_closed_form():
    """With <= 128 keys the kernel runs only its last iteration: s = raw * dequant, m = max(s) * sm - 8.807,
    P = 2^(s * sm - m), O = e4m3(P) @ v8 / sum(P) * v_scale. Checks the online loop's bookkeeping."""
    q, k, v = _inputs("peaky", tokens=100, head_dim=64)
    out = sage2_qk_int8_pv_fp8_cuda_sm90(q, k, v, is_causal=False).double()
    km = k.mean(dim=2, keepdim=True)
    quant = sage2_per_thread_int8(q, k, km)
    v8, v_scale = sage2_per_channel_fp8(v)
    s = (quant.q_int8.double() @ quant.k_int8.double().transpose(-1, -2))
    s = s * quant.q_token_scale.double()[..., None] * quant.k_token_scale.double()[:, :, None, :]
    sm = 64**-0.5 * math.log2(math.e)
    p = torch.exp2(s * sm - (s.amax(-1, keepdim=True) * sm - sage.S_FP8_OFFSET))
    p8 = p.clamp(max=448).to(torch.float8_e4m3fn).double()
    closed = (p8 @ v8.double()) / p.sum(-1, keepdim=True) * v_scale.double()[:, :, None, :]
    assert (out - closed).abs().max() <= 2 * 2**-8 * closed.abs().max()  # bf16 output rounding


def test_sm90_denominator_sums_the_unquantized_p():
    """Constant V: exact attention returns the constant; the sm90 kernel returns sum(e4m3(P)) / sum(P) per row,
    because its numerator multiplies FP8 P while its denominator sums float32 P (sm90.cu:317-323)."""
    q, k, _ = _inputs("peaky", tokens=100, head_dim=64)
    ones = torch.ones_like(q)
    out = sage2_qk_int8_pv_fp8_cuda_sm90(q, k, ones).double()
    quant = sage2_per_thread_int8(q, k, k.mean(dim=2, keepdim=True))
    s = (quant.q_int8.double() @ quant.k_int8.double().transpose(-1, -2))
    s = s * quant.q_token_scale.double()[..., None] * quant.k_token_scale.double()[:, :, None, :]
    sm = 64**-0.5 * math.log2(math.e)
    p = torch.exp2(s * sm - (s.amax(-1, keepdim=True) * sm - sage.S_FP8_OFFSET))
    ratio = p.clamp(max=448).to(torch.float8_e4m3fn).double().sum(-1) / p.sum(-1)
    assert (out - 1).abs().max() > 0.01  # FP8 rounding of P shows
    assert (out[..., 0] - ratio).abs().max() <= 2**-8  # bf16 output rounding


def test_causal_matches_exact_causal_attention():
    q, k, v = _inputs("random", tokens=200, head_dim=64)
    exact = _exact(q, k, v, is_causal=True)
    assert _cos(sage1_sageattn(q, k, v, is_causal=True), exact) >= 0.999
    assert _cos(sage2_qk_int8_pv_fp8_cuda_sm90(q, k, v, is_causal=True), exact) >= 0.998
    # token 0 sees only itself: the output is its (quantized) value
    assert torch.allclose(sage1_sageattn(q, k, v, is_causal=True)[:, :, 0].float(), v[:, :, 0].float(), atol=2e-2)


def test_sage1_partial_key_block_counts_zero_keys_as_1_0_6_does():
    """1.0.6 (non-causal) masks only the load of a partial last key block: the 64 - kv_len % 64 zero-filled keys
    join the denominator with score 0 and value 0. Exact attention with those keys appended (zero smoothed keys
    = K's mean, zero values) is closer to the reference than plain exact attention."""
    q, k, v = _inputs("random", tokens=136, head_dim=64)  # 136 = 2 * 64 + 8: 56 phantom keys
    out = sage1_sageattn(q, k, v).double()
    plain = _exact(q, k, v)
    km = k.double().mean(dim=2, keepdim=True)
    k_pad = torch.cat([k.double(), km.expand(1, 2, 56, 64)], dim=2)
    v_pad = torch.cat([v.double(), torch.zeros(1, 2, 56, 64, dtype=torch.float64)], dim=2)
    phantom = _exact(q, k_pad, v_pad)
    assert (out - phantom).norm() < 0.5 * (out - plain).norm()


def test_bad_inputs_are_refused_with_the_kernels_limits():
    q = torch.randn(1, 2, 64, 80, dtype=torch.float16)
    with pytest.raises(SageReferenceError, match=r"head dim 80.*\(64, 96, 128\)"):
        sage1_sageattn(q, q, q)
    with pytest.raises(SageReferenceError, match="float32.*float16, bfloat16"):
        sage2_qk_int8_pv_fp8_cuda_sm90(q.float(), q.float(), q.float())
    with pytest.raises(SageReferenceError, match="tensor_layout='BSND'"):
        sage2_qk_int8_pv_fp8_cuda_sm90(q, q, q, tensor_layout="BSND")
    with pytest.raises(SageReferenceError, match="pv_accum_dtype='fp32'"):
        sage2_qk_int8_pv_fp8_cuda_sm90(q, q, q, pv_accum_dtype="fp32")
    with pytest.raises(SageReferenceError, match="3 query heads are not a multiple of 2"):
        sage2_qk_int8_pv_fp8_cuda_sm90(torch.randn(1, 3, 64, 64).half(), q[..., :64], q[..., :64])


# ------------------------------------------------------- the real SageAttention 1.0.6 kernels, interpreted

_HAS_SAGE1 = importlib.util.find_spec("sageattention") is not None and importlib.util.find_spec("triton") is not None


def _sage1_modules():
    """sageattention 1.0.6's Triton modules, or skip: not installed, another version, or compiled for a GPU."""
    if not _HAS_SAGE1:
        pytest.skip("sageattention is not installed (the dev extra pins 1.0.6)")
    from importlib.metadata import version

    if version("sageattention") != "1.0.6":
        pytest.skip(f"sageattention {version('sageattention')} is installed; these tests pin 1.0.6's kernels")
    from sageattention import attn_qk_int8_per_block, attn_qk_int8_per_block_causal, core, quant_per_block
    from triton.runtime.interpreter import InterpretedFunction

    if not isinstance(quant_per_block.quant_per_block_int8_kernel, InterpretedFunction):
        pytest.skip("the kernels are compiled for a GPU here (TRITON_INTERPRET is not 1)")
    return core, quant_per_block, attn_qk_int8_per_block, attn_qk_int8_per_block_causal


def _run_sage1_kernels(q, k, v, layout, causal, output_dtype):
    """sageattn's body (core.py:87-110) without its `assert q.is_cuda` (core.py:76): smooth K, V to fp16, quantize,
    attend; on a copy of k (the library subtracts the mean in place)."""
    _, quant_per_block, attn, attn_causal = _sage1_modules()
    k = k.clone()
    k -= k.mean(dim=1 if layout == "NHD" else 2, keepdim=True)
    v16 = v.to(torch.float16)
    quant = quant_per_block.per_block_int8(q, k, tensor_layout=layout)
    forward = (attn_causal if causal else attn).forward
    return forward(*quant[:1], quant[2], v16, quant[1], quant[3], tensor_layout=layout, output_dtype=output_dtype), quant


# Reference vs kernel, both with float32 output (Triton's interpreter rounds float32 -> bfloat16 toward zero, a GPU
# to nearest, so comparing bf16 outputs would measure the interpreter). The reference uses the interpreter's
# P.V accumulation (pv_fp16_chunk=64, numpy's float16 matmul sums in float32 and rounds once). What remains is
# torch's vs numpy's exp2 (an ulp), which can flip one float16 P: measured max |diff| 9.5e-5 (fp16 inputs),
# 6.0e-5 (bf16), 2.7e-5 (bf16 causal), 6e-8 (fp32 inputs), on unit-variance inputs.
INTERPRETER_MAX_ABS = 5e-4
INTERPRETER_MIN_COS = 0.9999999


@pytest.mark.parametrize(
    ("dtype", "layout", "tokens", "head_dim", "causal", "kv_heads"),
    [
        (torch.float16, "HND", 200, 64, False, 2),  # partial last key block (200 = 3 * 64 + 8)
        (torch.bfloat16, "NHD", 200, 128, False, 1),  # diffusers' layout and dtype, grouped-query heads
        (torch.bfloat16, "HND", 256, 64, True, 2),
    ],
)
def test_sage1_reference_matches_the_real_kernels_in_the_interpreter(dtype, layout, tokens, head_dim, causal,
                                                                       kv_heads):
    g = torch.Generator().manual_seed(0)
    hnd_q, hnd_kv = (1, 2, tokens, head_dim), (1, kv_heads, tokens, head_dim)
    q = torch.randn(hnd_q, generator=g)
    k = torch.randn(hnd_kv, generator=g) + 2
    v = torch.randn(hnd_kv, generator=g)
    q, k, v = (t.to(dtype) for t in (q, k, v))
    if layout == "NHD":
        q, k, v = (t.transpose(1, 2).contiguous() for t in (q, k, v))
    real, (q8, q_scale, k8, k_scale) = _run_sage1_kernels(q, k, v, layout, causal, torch.float32)

    def hnd(t):
        return t.transpose(1, 2) if layout == "NHD" else t

    k_smoothed = k - k.mean(dim=1 if layout == "NHD" else 2, keepdim=True)
    ours = sage1_per_block_int8(hnd(q), hnd(k_smoothed))
    assert torch.equal(ours.q_int8, hnd(q8)) and torch.equal(ours.q_scale, q_scale)
    assert torch.equal(ours.k_int8, hnd(k8)) and torch.equal(ours.k_scale, k_scale)

    ref = sage1_sageattn(q, k, v, tensor_layout=layout, is_causal=causal, pv_fp16_chunk=64,
                         output_dtype=torch.float32)
    assert (ref - real).abs().max() <= INTERPRETER_MAX_ABS
    assert _cos(ref, real) >= INTERPRETER_MIN_COS


def test_sage1_sageattn_refuses_cpu_tensors():
    """Why the test above calls the kernels, not `sageattn`: 1.0.6's wrapper asserts CUDA tensors (core.py:76)."""
    core = _sage1_modules()[0]
    q = torch.randn(1, 2, 64, 64, dtype=torch.float16)
    with pytest.raises(AssertionError, match="Input tensors must be on cuda"):
        core.sageattn(q, q.clone(), q)


# ------------------------------------------ opt-in: SageAttention 2's per-thread quantizer (not on PyPI)

_SA2_QUANT = os.environ.get("SAGEATTENTION2_QUANT_PER_THREAD")


@pytest.mark.slow
@pytest.mark.skipif(not _SA2_QUANT, reason="set SAGEATTENTION2_QUANT_PER_THREAD to a SageAttention 2 checkout's "
                    "sageattention/triton/quant_per_thread.py to compare (docs/sageattention.md)")
def test_sm90_per_thread_quantizer_matches_sageattention2_triton_kernel():
    spec = importlib.util.spec_from_file_location("sa2_quant_per_thread", _SA2_QUANT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    q, k, _ = _inputs("outlier", tokens=333, head_dim=128)
    q, k = q.transpose(1, 2).contiguous(), k.transpose(1, 2).contiguous()  # NHD, as diffusers passes
    km = k.mean(dim=1, keepdim=True)
    q8, q_scale, k8, k_scale = module.per_thread_int8(q, k, km, tensor_layout="NHD", BLKQ=64, WARPQ=16, BLKK=128,
                                                      WARPK=128)
    ours = sage2_per_thread_int8(q.transpose(1, 2), k.transpose(1, 2), km.transpose(1, 2))
    assert torch.equal(ours.q_int8, q8.transpose(1, 2)) and torch.equal(ours.q_scale, q_scale)
    assert torch.equal(ours.k_int8, k8.transpose(1, 2)) and torch.equal(ours.k_scale, k_scale)
