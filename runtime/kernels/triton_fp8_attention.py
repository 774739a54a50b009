"""FP8 flash attention in Triton on the per-block numerics of the Ascend kernel (forward, non-causal, no mask).

Inputs are exactly what `runtime.numerics.quantize_attention_inputs` produces (the one quantization function
the CPU reference and the NPU backend use too): BNSD float8_e4m3fn q/k/v and float32 dequant scales, one per
(batch, head, 128-token query block) and per (batch, head, 256-token key/value block). The output is BSND,
as diffusers wants it.

Per (query tile, key/value tile):
  S = (q8 @ k8^T) * sq * sk * softmax_scale          e4m3 x e4m3 dot, fp32 accumulation
  online softmax in fp32 (running max m, running sum l of the unquantized P)
  PV, `pv_precision`:
    "e4m3" (the NPU kernel's choice, the plan default): P8 = e4m3(P * 448), acc += (P8 @ v8) * sv / 448
    "fp16": acc += (fp16(P) @ fp16(v8)) * sv      (every e4m3 value is exact in fp16)
  out = acc / l

Tiles never straddle a quantization block (BLOCK_M divides the 128-token query block, BLOCK_N the 256-token
key/value block), so every scale is one scalar per tile.

Triton's CPU interpreter (TRITON_INTERPRET=1) has known bugs (see docs/gpu.md); with `interpreter_workarounds`
(on by default only when this module's kernel is interpreted):
  - the fp32 -> e4m3 cast mis-rounds and gives NaN instead of saturating (triton#8322): P*448 is first rounded
    onto the e4m3 grid with fp32 arithmetic, so the cast only meets exactly representable values;
  - the fp32 -> bf16 cast is not round-to-nearest-even: the kernel writes fp32 and PyTorch casts.
  - bf16 `tl.dot` multiplies raw bits (triton#11584): avoided by design, no dot here takes bf16.
On a GPU both workarounds change no bit of the result (checked by a `cuda`-marked test).
"""

from __future__ import annotations

import contextlib
import math

import torch
import triton
import triton.language as tl
from triton.runtime.interpreter import InterpretedFunction

from qcompiler.numerics import KV_BLOCK_TOKENS, P_E4M3_SCALE, PV_PRECISIONS, QUERY_BLOCK_TOKENS
from runtime.numerics import QuantizedAttentionInputs

HEAD_DIMS = (64, 128)
OUT_DTYPES = (torch.bfloat16, torch.float16, torch.float32)
# Tile sizes: one 128-token query block per program (its scale is one scalar) and half a 256-token key/value
# block per inner step. 128 x 128 tiles of e4m3 with head dim <= 128 fit Hopper's shared memory with 2 stages.
BLOCK_M = 128
BLOCK_N = 128
LOG2_E = 1.4426950408889634
# Adding and subtracting 1.5 * 2**23 rounds an fp32 of magnitude < 2**22 to an integer, ties to even.
_FP32_ROUND_MAGIC = 12582912.0

KERNEL_IS_INTERPRETED: bool  # set below, once the kernel is built


@triton.jit
def _round_to_e4m3_grid(x):
    """Round non-negative fp32 values <= 448 to the nearest e4m3 value (ties to even) in fp32 arithmetic.

    e4m3 has 3 mantissa bits: in [2**e, 2**(e+1)) the spacing is 2**(e-3); below 2**-6 (subnormals) it is 2**-9.
    """
    e = tl.floor(tl.log2(tl.maximum(x, 2.0**-9)))
    e = tl.maximum(e, -6.0)
    # log2 may round up just below a power of two (or down at one): correct e so that 2**e <= x < 2**(e+1).
    e = tl.where((x < tl.exp2(e)) & (e > -6.0), e - 1.0, e)
    e = tl.where(x >= tl.exp2(e + 1.0), e + 1.0, e)
    ulp = tl.exp2(e - 3.0)
    return ((x / ulp + _FP32_ROUND_MAGIC) - _FP32_ROUND_MAGIC) * ulp


@triton.jit
def _fp8_attention_fwd(
    Q, K, V, QS, KS, VS, Out,
    stride_qb, stride_qh, stride_qs, stride_qd,
    stride_kb, stride_kh, stride_ks, stride_kd,
    stride_vb, stride_vh, stride_vs, stride_vd,
    stride_ob, stride_os, stride_oh, stride_od,
    stride_qsb, stride_qsh, stride_qsn,
    stride_ksb, stride_ksh, stride_ksn,
    stride_vsb, stride_vsh, stride_vsn,
    heads, seq_q, seq_kv, qk_scale_log2,
    HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    Q_BLOCK_TOKENS: tl.constexpr, KV_BLOCK_TOKENS: tl.constexpr,
    PV_E4M3: tl.constexpr, ROUND_P_IN_FP32: tl.constexpr, P_SCALE: tl.constexpr,
):
    start_m = tl.program_id(0) * BLOCK_M
    bh = tl.program_id(1)
    b = bh // heads
    h = bh % heads

    offs_m = start_m + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, HEAD_DIM)
    row_ok = offs_m < seq_q

    q_ptrs = Q + b * stride_qb + h * stride_qh + offs_m[:, None] * stride_qs + offs_d[None, :] * stride_qd
    q = tl.load(q_ptrs, mask=row_ok[:, None], other=0.0)
    sq = tl.load(QS + b * stride_qsb + h * stride_qsh + (start_m // Q_BLOCK_TOKENS) * stride_qsn)

    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, HEAD_DIM], dtype=tl.float32)

    k_base = K + b * stride_kb + h * stride_kh
    v_base = V + b * stride_vb + h * stride_vh
    for start_n in range(0, seq_kv, BLOCK_N):
        cols = start_n + offs_n
        col_ok = cols < seq_kv
        k = tl.load(k_base + cols[:, None] * stride_ks + offs_d[None, :] * stride_kd, mask=col_ok[:, None], other=0.0)
        v = tl.load(v_base + cols[:, None] * stride_vs + offs_d[None, :] * stride_vd, mask=col_ok[:, None], other=0.0)
        kv_block = start_n // KV_BLOCK_TOKENS
        sk = tl.load(KS + b * stride_ksb + h * stride_ksh + kv_block * stride_ksn)
        sv = tl.load(VS + b * stride_vsb + h * stride_vsh + kv_block * stride_vsn)

        # Scores in log2 units: exp(x) = exp2(x * log2 e), folded into one scale with sq, sk and 1/sqrt(D).
        s = tl.dot(q, tl.trans(k)) * (sq * sk * qk_scale_log2)
        s = tl.where(col_ok[None, :], s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))  # finite: every tile has at least one valid column
        alpha = tl.exp2(m_i - m_new)
        p = tl.exp2(s - m_new[:, None])
        l_i = l_i * alpha + tl.sum(p, 1)
        acc = acc * alpha[:, None]
        if PV_E4M3:
            p_scaled = p * P_SCALE
            if ROUND_P_IN_FP32:
                p_scaled = _round_to_e4m3_grid(p_scaled)
            pv = tl.dot(p_scaled.to(tl.float8e4nv), v)
            acc += pv * (sv / P_SCALE)
        else:
            pv = tl.dot(p.to(tl.float16), v.to(tl.float16))
            acc += pv * sv
        m_i = m_new

    out = acc / l_i[:, None]
    o_ptrs = Out + b * stride_ob + h * stride_oh + offs_m[:, None] * stride_os + offs_d[None, :] * stride_od
    tl.store(o_ptrs, out.to(Out.dtype.element_ty), mask=row_ok[:, None])


KERNEL_IS_INTERPRETED = isinstance(_fp8_attention_fwd, InterpretedFunction)
# Triton's own library functions (tl.max, tl.sum, ...) were decorated when triton was first imported: if that
# happened before TRITON_INTERPRET was set, our interpreted kernel cannot call them.
_INTERPRETER_SET_TOO_LATE = KERNEL_IS_INTERPRETED and not isinstance(tl.sum, InterpretedFunction)


def check_inputs(quantized: QuantizedAttentionInputs, pv_precision: str, out_dtype: torch.dtype) -> None:
    """Raise ValueError naming what is wrong when the kernel cannot take these inputs."""
    q, k, v = quantized.query, quantized.key, quantized.value
    if pv_precision not in PV_PRECISIONS:
        raise ValueError(f"pv_precision {pv_precision!r} is not one of {', '.join(PV_PRECISIONS)}")
    if out_dtype not in OUT_DTYPES:
        raise ValueError(f"out_dtype {out_dtype} is not one of bfloat16, float16, float32")
    for name, t in (("query", q), ("key", k), ("value", v)):
        if t.dtype != torch.float8_e4m3fn or t.dim() != 4:
            raise ValueError(f"{name} must be a BNSD float8_e4m3fn tensor, got {t.dtype} of shape {tuple(t.shape)}")
    if q.shape[-1] not in HEAD_DIMS:
        raise ValueError(f"head dim {q.shape[-1]} is not one the FP8 kernel takes (64 or 128)")
    if k.shape != v.shape or q.shape[:2] != k.shape[:2] or q.shape[3] != k.shape[3]:
        raise ValueError(f"q/k/v shapes do not match: {tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}")
    if k.shape[2] == 0 or q.shape[2] == 0:
        raise ValueError("attention over zero tokens")
    batch, heads = q.shape[:2]
    for name, scale, tokens, block in (
        ("query_scale", quantized.query_scale, q.shape[2], QUERY_BLOCK_TOKENS),
        ("key_scale", quantized.key_scale, k.shape[2], KV_BLOCK_TOKENS),
        ("value_scale", quantized.value_scale, k.shape[2], KV_BLOCK_TOKENS),
    ):
        want = (batch, heads, math.ceil(tokens / block), 1)
        if tuple(scale.shape) != want or scale.dtype != torch.float32:
            raise ValueError(f"{name} must be float32 of shape {want}, got {scale.dtype} {tuple(scale.shape)}")


def fp8_attention(
    quantized: QuantizedAttentionInputs,
    *,
    softmax_scale: float,
    pv_precision: str = "e4m3",
    out_dtype: torch.dtype = torch.bfloat16,
    interpreter_workarounds: bool | None = None,
) -> torch.Tensor:
    """Attention of per-block quantized BNSD inputs; returns BSND [B, S_q, H, D] in `out_dtype`.

    `interpreter_workarounds` None: on exactly when the kernel runs in Triton's interpreter.
    """
    check_inputs(quantized, pv_precision, out_dtype)
    if _INTERPRETER_SET_TOO_LATE:
        raise RuntimeError(
            "TRITON_INTERPRET was set after triton had been imported (diffusers imports it): set it in the "
            "environment before starting Python, or before importing diffusers or triton"
        )
    workarounds = KERNEL_IS_INTERPRETED if interpreter_workarounds is None else interpreter_workarounds
    q, k, v = quantized.query, quantized.key, quantized.value
    qs, ks, vs = quantized.query_scale, quantized.key_scale, quantized.value_scale
    batch, heads, seq_q, head_dim = q.shape
    seq_kv = k.shape[2]
    # The kernel stores in the output's dtype; with workarounds it stores fp32 and PyTorch rounds.
    kernel_dtype = torch.float32 if workarounds else out_dtype
    out = torch.empty((batch, seq_q, heads, head_dim), dtype=kernel_dtype, device=q.device)
    grid = (triton.cdiv(seq_q, BLOCK_M), batch * heads)
    # Triton launches on the current CUDA device: make it the tensors' (a pipeline may live on cuda:1).
    on_device = torch.cuda.device(q.device) if q.is_cuda else contextlib.nullcontext()
    with on_device:
        _launch(grid, q, k, v, qs, ks, vs, out, heads, seq_q, seq_kv, head_dim, softmax_scale, pv_precision,
                workarounds)
    return out.to(out_dtype)


def _launch(grid, q, k, v, qs, ks, vs, out, heads, seq_q, seq_kv, head_dim, softmax_scale, pv_precision, workarounds):
    _fp8_attention_fwd[grid](
        q, k, v, qs, ks, vs, out,
        *q.stride(), *k.stride(), *v.stride(), *out.stride(),
        qs.stride(0), qs.stride(1), qs.stride(2),
        ks.stride(0), ks.stride(1), ks.stride(2),
        vs.stride(0), vs.stride(1), vs.stride(2),
        heads, seq_q, seq_kv, softmax_scale * LOG2_E,
        HEAD_DIM=head_dim, BLOCK_M=BLOCK_M, BLOCK_N=BLOCK_N,
        Q_BLOCK_TOKENS=QUERY_BLOCK_TOKENS, KV_BLOCK_TOKENS=KV_BLOCK_TOKENS,
        PV_E4M3=pv_precision == "e4m3", ROUND_P_IN_FP32=workarounds, P_SCALE=P_E4M3_SCALE,
    )


def emulate_tiles(
    quantized: QuantizedAttentionInputs, *, softmax_scale: float, pv_precision: str = "e4m3"
) -> torch.Tensor:
    """The kernel's arithmetic, tile by tile, in PyTorch fp32: BSND fp32 output. For tests (tight bound).

    Key/value tiles of BLOCK_N tokens are visited in the kernel's order with the same running max, so the
    e4m3 rounding of P happens on the same values; only summation order inside a dot differs.
    """
    check_inputs(quantized, pv_precision, torch.float32)
    q8, k8, v8 = quantized.query, quantized.key, quantized.value
    seq_q, seq_kv = q8.shape[2], k8.shape[2]
    sq = quantized.query_scale.repeat_interleave(QUERY_BLOCK_TOKENS, dim=2)[:, :, :seq_q]  # [B, H, Sq, 1]
    q = q8.float()
    m = torch.full(q.shape[:3], float("-inf"), dtype=torch.float32, device=q.device)
    row_sum = torch.zeros_like(m)
    acc = torch.zeros(q.shape, dtype=torch.float32, device=q.device)
    for start in range(0, seq_kv, BLOCK_N):
        stop = min(start + BLOCK_N, seq_kv)
        block = start // KV_BLOCK_TOKENS
        sk = quantized.key_scale[:, :, block : block + 1]  # [B, H, 1, 1]
        sv = quantized.value_scale[:, :, block : block + 1]
        s = (q @ k8[:, :, start:stop].float().transpose(-1, -2)) * (sq * sk * (softmax_scale * LOG2_E))
        m_new = torch.maximum(m, s.amax(dim=-1))
        alpha = torch.exp2(m - m_new)
        p = torch.exp2(s - m_new[..., None])
        row_sum = row_sum * alpha + p.sum(dim=-1)
        v = v8[:, :, start:stop].float()
        if pv_precision == "e4m3":
            p8 = (p * P_E4M3_SCALE).to(torch.float8_e4m3fn).float()
            pv = (p8 @ v) * (sv / P_E4M3_SCALE)
        else:
            pv = (p.half().float() @ v) * sv
        acc = acc * alpha[..., None] + pv
        m = m_new
    return (acc / row_sum[..., None]).transpose(1, 2)
