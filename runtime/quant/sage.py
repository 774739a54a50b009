"""SageAttention's numerics on CPU: step-by-step references of the kernels diffusers dispatches to.

Two kernels, each a function with the library's own signature (docs/sageattention.md has the facts and the
citations in full):

- `sage1_sageattn`: SageAttention 1, `sageattention.sageattn` as the PyPI wheel 1.0.6 implements it (Triton):
  K smoothed (K - mean over tokens), INT8 Q per 128-token block with sm_scale * log2(e) folded in, INT8 K per
  64-token block, FP16 P and V with an FP16-accumulated P.V per 64-key block added to an FP32 accumulator.
- `sage2_qk_int8_pv_fp8_cuda_sm90`: SageAttention 2, `sageattn_qk_int8_pv_fp8_cuda_sm90` (CUDA, Hopper) with
  the defaults diffusers 0.42.1 leaves in place (`qk_quant_gran="per_thread"`, `pv_accum_dtype="fp32+fp32"`,
  `smooth_k=True`): INT8 Q per thread (2 tokens of a 16-token warp band), INT8 K per thread (32 tokens of a
  128-token block), V in FP8 e4m3 with one scale per channel, P in FP8 e4m3 scaled so the running row max is
  2^8.807 ~ 448, P.V accumulated in FP32 per 128-key block and added to an FP32 buffer.

Sources, pinned (line numbers below refer to these):
  [v1]  sageattention 1.0.6 wheel from PyPI: sageattention/core.py, quant_per_block.py, attn_qk_int8_per_block.py,
        attn_qk_int8_per_block_causal.py.
  [v2]  github.com/thu-ml/SageAttention at d1a57a546c3d395b1ffcbeecc66d81db76f3b4b5: sageattention/core.py,
        sageattention/quant.py, sageattention/triton/quant_per_thread.py, csrc/fused/fused.cu,
        csrc/qattn/qk_int_sv_f8_cuda_sm90.cu (here "sm90.cu"), csrc/qattn/attn_utils.cuh, csrc/math.cuh,
        csrc/numeric_conversion.cuh.

Tensors: both layouts the library takes, "HND" = BNSD [batch, heads, tokens, head_dim] (the library's default)
and "NHD" = BSND [batch, tokens, heads, head_dim] (what diffusers passes); the output has the input's layout and
dtype. Internally everything is HND. Grouped-query attention (fewer K/V heads than Q heads) is handled as the
kernels do: K and V are quantized per K/V head and shared by consecutive query heads.

What is exact and what is a model:
- Exact: smoothing and its rounding to the input dtype, every block/group boundary, every scale formula with its
  epsilon and rounding mode, the zero-filled tails of partial blocks, the online-softmax order (running max,
  rescaling, the denominator summing the unquantized P), the order of float32 multiplications where the kernel
  has two roundings, and the FP8/FP16 conversions (round to nearest even, saturating like cvt.rn.satfinite).
- Integer Q.K products are computed in float64 (exact). float32 fused multiply-adds (`fmaf`) are float64
  product-plus-sum rounded to float32 (a double rounding only on rare ties).
- Modelled: the hardware's accumulation inside one matrix instruction. sm90's FP8 wgmma accumulates in
  "fp32 (actually fp22)" ([v2] core.py:879-880); here the 128-key block sum is exact, then rounded to float32.
  Triton's FP16-output dot accumulates in FP16 between 16-deep MMA steps on a GPU; `pv_fp16_chunk` sets that
  depth (16, the GPU) or 64 (one rounding per block: what Triton's CPU interpreter does, numpy float16 matmul).
  ex2.approx / rcp.approx and Triton's approximate fp32 division are computed exactly here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from qcompiler.errors import QcompileError

LAYOUTS = ("HND", "NHD")

# [v1] quant_per_block.py:68 and [v2] quant.py:94: the softmax runs in base 2, so log2(e) is folded into Q's scale.
SAGE1_LOG2E = 1.44269504
# [v1] quant_per_block.py:33 (BLKQ=128, BLKK=64) = attn_qk_int8_per_block.py:166-167 (BLOCK_M, BLOCK_N).
SAGE1_Q_BLOCK = 128
SAGE1_K_BLOCK = 64
# [v1] core.py:82: "headdim should be in [64, 96, 128]" (96 runs padded to 128, numerically the same).
SAGE1_HEAD_DIMS = (64, 96, 128)
# [v1] attn_qk_int8_per_block_causal.py:33 (STAGE 2): masked scores get -1e6 added, not -inf.
SAGE1_CAUSAL_MASK = -1.0e6
# INT8 symmetric range: scale = amax / 127 ([v1] quant_per_block.py:26, [v2] quant_per_thread.py:41, fused.cu:164).
INT8_MAX = 127.0

# [v2] core.py:967-969: sm90 quantizes Q in 64-token blocks of 16-token warps, K in 128-token blocks (= warps),
# matching the kernel's CTA_Q = 64, CTA_K = 128 (sm90.cu:862-863).
SM90_Q_BLOCK = 64
SM90_Q_WARP = 16
SM90_K_BLOCK = 128
# [v2] quant_per_thread.py:27-32: 8 query groups per warp band (a thread's rows r and r + 8: sm90.cu:182, 198);
# quant_per_thread.py:54-76: 4 key groups per block (a thread's columns 2t, 2t+1 of every 8: sm90.cu:193, 418).
PER_THREAD_Q_GROUPS = 8
PER_THREAD_K_GROUPS = 4
# [v2] quant_per_thread.py:41, 89: scale = amax / 127 + 1e-7 (so an all-zero group does not divide by zero).
PER_THREAD_SCALE_EPS = 1e-7
# [v2] fused.cu:147: per-warp/per-block CUDA quantizer starts its amax at 1e-7.
PER_WARP_AMAX_FLOOR = 1e-7
# [v2] quant.py:227 (per_channel_fp8 scale_max default 448.0, the e4m3 maximum), used as is by core.py:983.
E4M3_MAX = 448.0
# [v2] attn_utils.cuh:30 + update_mdo (attn_utils.cuh:379): m = row max * sm_scale - 8.807, so P = 2^(s - m) has
# its running maximum at 2^8.807 ~ 447.89, just under the e4m3 maximum.
S_FP8_OFFSET = 8.807
# [v2] math.cuh:32; the kernel multiplies sm_scale by it (sm90.cu:153).
SM90_LOG2E = 1.44269504088896340736
# [v2] sm90.cu:203-206: running max starts at -5e6, the denominator at 1.0; sm90.cu:433: out-of-range/causal
# scores are set to -5e6.
SM90_M_INIT = -5000000.0
SM90_D_INIT = 1.0

QK_QUANT_GRANS = ("per_thread", "per_warp")


class SageReferenceError(QcompileError):
    """The inputs are outside what the SageAttention kernel accepts (its own asserts), so there is nothing exact
    to compute; the message names the argument and the accepted values."""


@dataclass(frozen=True)
class QuantizedQK:
    """INT8 Q and K as a SageAttention quantizer leaves them, in HND.

    q_int8 / k_int8: [B, H, S, D] int8. q_scale / k_scale: float32 in the library's own shape (one value per
    quantization group). q_token_scale [B, Hq, Sq] / k_token_scale [B, Hkv, Sk]: the scale of each token's group,
    which is what multiplies a token's row (Q) or column (K) of the integer scores.
    """

    q_int8: torch.Tensor
    q_scale: torch.Tensor
    k_int8: torch.Tensor
    k_scale: torch.Tensor
    q_token_scale: torch.Tensor
    k_token_scale: torch.Tensor


# ---------------------------------------------------------------------------------------------------- helpers


def _to_hnd(x: torch.Tensor, tensor_layout: str) -> torch.Tensor:
    return x.transpose(1, 2) if tensor_layout == "NHD" else x


def _from_hnd(x: torch.Tensor, tensor_layout: str) -> torch.Tensor:
    return x.transpose(1, 2) if tensor_layout == "NHD" else x


def _check_inputs(q, k, v, tensor_layout: str, dtypes: tuple, kernel: str) -> None:
    if tensor_layout not in LAYOUTS:
        raise SageReferenceError(f"{kernel}: tensor_layout={tensor_layout!r}; use 'HND' ([B, H, S, D]) or 'NHD'.")
    for name, t in (("q", q), ("k", k), ("v", v)):
        if t.dim() != 4:
            raise SageReferenceError(f"{kernel}: {name} has {t.dim()} dims; pass a 4-D {tensor_layout} tensor.")
        if t.dtype not in dtypes:
            names = ", ".join(str(d).removeprefix("torch.") for d in dtypes)
            raise SageReferenceError(f"{kernel}: {name} is {t.dtype}; the kernel accepts {names}.")
    if not (q.dtype == k.dtype == v.dtype):
        raise SageReferenceError(f"{kernel}: q, k, v dtypes differ ({q.dtype}, {k.dtype}, {v.dtype}); cast them.")
    qh, kh, vh = (_to_hnd(t, tensor_layout) for t in (q, k, v))
    if kh.shape != vh.shape or qh.shape[0] != kh.shape[0] or qh.shape[3] != kh.shape[3]:
        raise SageReferenceError(
            f"{kernel}: shapes q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)} do not form one "
            f"{tensor_layout} attention call (same batch and head dim; k and v the same shape)."
        )
    if qh.shape[1] % kh.shape[1]:
        raise SageReferenceError(
            f"{kernel}: {qh.shape[1]} query heads are not a multiple of {kh.shape[1]} key/value heads."
        )


def _f32(x: float) -> torch.Tensor:
    """A Python float as the kernel sees it: a float32 scalar (Triton scalar args, C++ `float` params)."""
    return torch.tensor(x, dtype=torch.float32)


def _fma32(a: torch.Tensor, b: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """float32 fmaf(a, b, c): the float32 product is exact in float64, one rounding to float32 at the end."""
    return (a.double() * b.double() + c.double()).float()


def _round_half_away_trunc(x: torch.Tensor) -> torch.Tensor:
    """Triton's `x += 0.5 * where(x >= 0, 1, -1); x.to(int8)`: add +-0.5 in float32, then truncate toward zero."""
    shifted = x + torch.where(x >= 0, 0.5, -0.5).to(torch.float32)
    return torch.nan_to_num(shifted, nan=0.0).trunc().to(torch.int8)


def _to_e4m3(x: torch.Tensor) -> torch.Tensor:
    """cvt.rn.satfinite.e4m3x2.f32 (numeric_conversion.cuh:53): round to nearest even, saturate to +-448, NaN
    stays NaN. Returned as the float32 values of the e4m3 codes."""
    return x.clamp(-E4M3_MAX, E4M3_MAX).to(torch.float8_e4m3fn).float()


def _pad_tokens(x: torch.Tensor, multiple: int) -> torch.Tensor:
    """Zero-fill the token dim (dim 2) up to a multiple: what masked Triton loads and TMA out-of-bounds fills read."""
    extra = -x.shape[2] % multiple
    return F.pad(x, (0, 0, 0, extra)) if extra else x


def _expand_kv_heads(x: torch.Tensor, q_heads: int) -> torch.Tensor:
    """K/V head h serves query heads h * groups .. (h + 1) * groups - 1 ([v1] attn_qk_int8_per_block.py:146)."""
    groups = q_heads // x.shape[1]
    return x.repeat_interleave(groups, dim=1) if groups > 1 else x


def _smooth_k(k: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """K minus its mean over tokens, both in K's dtype ([v1] core.py:90-91, [v2] core.py:949 + quant_per_thread.py:159).

    Exact for softmax: it subtracts q . mean(k) from every score of a row."""
    km = k.mean(dim=2, keepdim=True)
    return k - km, km


# ------------------------------------------------------------------------------------ SageAttention 1 (1.0.6)


def sage1_per_block_int8(
    q: torch.Tensor, k: torch.Tensor, *, sm_scale: float | None = None
) -> QuantizedQK:
    """[v1] quant_per_block.py: INT8 per (batch, head, block) of 128 query / 64 key tokens, HND inputs.

    Q is multiplied by sm_scale * 1.44269504 first (line 68; K by 1.0, line 78), in float32 (line 24-25);
    scale = max|x| / 127 over the block (line 26, no epsilon: an all-zero Q block gets scale 0 and NaN scores, as
    in the kernel); x / scale, +-0.5, truncated to int8 (lines 27-29). Tail tokens of a partial block read as 0.
    """
    head_dim = q.shape[-1]
    if sm_scale is None:
        sm_scale = head_dim**-0.5  # line 59-60
    q_i, q_s, q_tok = _sage1_quant_blocks(q, _f32(sm_scale * SAGE1_LOG2E), SAGE1_Q_BLOCK)
    k_i, k_s, k_tok = _sage1_quant_blocks(k, _f32(1.0), SAGE1_K_BLOCK)
    return QuantizedQK(q_i, q_s, k_i, k_s, q_tok, k_tok)


def _sage1_quant_blocks(x: torch.Tensor, mult: torch.Tensor, block: int):
    b, h, s, d = x.shape
    xp = _pad_tokens(x.float() * mult, block)
    blocks = xp.shape[2] // block
    grouped = xp.view(b, h, blocks, block, d)
    scale = grouped.abs().amax(dim=(3, 4), keepdim=True) / _f32(INT8_MAX)
    x_int8 = _round_half_away_trunc(grouped / scale).view(b, h, blocks * block, d)[:, :, :s]
    scale_lib = scale.view(b, h, blocks, 1)  # quant_per_block.py:56-57 shape
    token_scale = scale.view(b, h, blocks, 1).expand(b, h, blocks, block).reshape(b, h, blocks * block)[:, :, :s]
    return x_int8, scale_lib, token_scale


def sage1_sageattn(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    tensor_layout: str = "HND",
    is_causal: bool = False,
    sm_scale: float | None = None,
    smooth_k: bool = True,
    *,
    pv_fp16_chunk: int = 16,
    output_dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """`sageattention.sageattn` 1.0.6 ([v1] core.py:17-112) on CPU.

    1. smooth_k: k - mean(k over tokens), in k's dtype (core.py:89-91; the library does it in place on the
       caller's k, this reference does not).
    2. v to float16 when bf16 or fp32 (core.py:95-96; bf16 values past 65504 become inf, as there).
    3. `sage1_per_block_int8` (core.py:105).
    4. Per 128-query block, over 64-key blocks ([v1] attn_qk_int8_per_block.py:94-119):
       qk = float32(int dot) * q_scale * k_scale, two float32 roundings left to right (line 100);
       online softmax in base 2, running max m (init -inf) and denominator l (init 1.0, lines 151-152; the first
       block's alpha = 0 clears it) summing the float32 p (lines 101-107);
       p to float16 (line 112) and acc += dot(p16, v16, out_dtype=float16) (line 114): float16 accumulation
       inside the block, modelled as float32 sums of `pv_fp16_chunk` keys rounded to float16 in turn (16 = one
       MMA k-step on a GPU; 64 = the Triton interpreter's single rounding), added to the float32 acc.
       Non-causal 1.0.6 does NOT mask the zero-filled keys of a partial last block (line 97 masks only the load):
       each counts as a score-0 key with value 0 in the denominator, so kv_len % 64 != 0 biases the output.
       Causal (attn_qk_int8_per_block_causal.py): blocks left of the diagonal unmasked, the diagonal 128-block
       with -1e6 added above it, nothing right of it.
    5. out = acc / l in q's dtype (line 162-163), in q's layout. `output_dtype=torch.float32` returns acc / l
       unrounded, the value the kernel's attention function gives with output_dtype=float32 (useful against
       Triton's CPU interpreter, which rounds float32 -> bfloat16 toward zero where a GPU rounds to nearest).
    """
    kernel = "sageattn 1.0.6"
    _check_inputs(q, k, v, tensor_layout, (torch.float16, torch.bfloat16, torch.float32), kernel)
    if q.shape[-1] not in SAGE1_HEAD_DIMS:
        raise SageReferenceError(f"{kernel}: head dim {q.shape[-1]}; the kernel accepts {SAGE1_HEAD_DIMS}.")
    if pv_fp16_chunk not in (16, 32, 64):
        raise SageReferenceError(f"{kernel}: pv_fp16_chunk={pv_fp16_chunk}; use 16 (GPU MMA) or 64 (interpreter).")
    dtype = q.dtype
    qh, kh, vh = (_to_hnd(t, tensor_layout) for t in (q, k, v))
    if is_causal and qh.shape[2] != kh.shape[2]:
        raise SageReferenceError(f"{kernel}: is_causal needs qo_len == kv_len (causal.py:130).")
    if smooth_k:
        kh, _ = _smooth_k(kh)
    v16 = vh.to(torch.float16)
    quant = sage1_per_block_int8(qh, kh, sm_scale=sm_scale)

    heads = qh.shape[1]
    b, _, sq, d = qh.shape
    k_int8 = _expand_kv_heads(_pad_tokens(quant.k_int8, SAGE1_K_BLOCK), heads).double()
    k_scale = _expand_kv_heads(quant.k_scale, heads)  # [B, H, nk, 1]
    v_pad = _expand_kv_heads(_pad_tokens(v16, SAGE1_K_BLOCK), heads)
    q_int8 = quant.q_int8.double()
    q_scale = quant.q_token_scale.unsqueeze(-1)  # [B, H, Sq, 1]

    rows = torch.arange(sq)
    m_i = torch.full((b, heads, sq), -math.inf)
    l_i = torch.ones((b, heads, sq))
    acc = torch.zeros((b, heads, sq, d))
    for j in range(k_int8.shape[2] // SAGE1_K_BLOCK):
        cols = slice(j * SAGE1_K_BLOCK, (j + 1) * SAGE1_K_BLOCK)
        key_idx = torch.arange(cols.start, cols.stop)
        raw = (q_int8 @ k_int8[:, :, cols].transpose(-1, -2)).float()
        qk = raw * q_scale * k_scale[:, :, j : j + 1, :]
        active = torch.ones(sq, dtype=torch.bool)
        if is_causal:
            row_block_start = (rows // SAGE1_Q_BLOCK) * SAGE1_Q_BLOCK
            active = cols.start < row_block_start + SAGE1_Q_BLOCK
            diagonal = cols.start >= row_block_start
            above = key_idx[None, :] > rows[:, None]
            qk = qk + torch.where(diagonal[:, None] & above, _f32(SAGE1_CAUSAL_MASK), _f32(0.0))
        m_ij = torch.maximum(m_i, qk.amax(dim=-1))
        p = torch.exp2(qk - m_ij[..., None])
        alpha = torch.exp2(m_i - m_ij)
        l_new = l_i * alpha + p.sum(dim=-1)
        pv = _fp16_accumulated_dot(p.to(torch.float16), v_pad[:, :, cols], pv_fp16_chunk)
        acc_new = acc * alpha[..., None] + pv
        act = active[None, None, :]
        m_i = torch.where(act, m_ij, m_i)
        l_i = torch.where(act, l_new, l_i)
        acc = torch.where(act[..., None], acc_new, acc)
    out = (acc / l_i[..., None]).to(output_dtype or dtype)
    return _from_hnd(out, tensor_layout).contiguous()


def _fp16_accumulated_dot(p16: torch.Tensor, v16: torch.Tensor, chunk: int) -> torch.Tensor:
    """tl.dot(p, v, out_dtype=float16) from a zero accumulator, as float32 sums of `chunk` keys, each added to
    the float16 accumulator with one rounding. Returns float32 values of the float16 result."""
    c = torch.zeros(p16.shape[:-1] + (v16.shape[-1],), dtype=torch.float16)
    for start in range(0, p16.shape[-1], chunk):
        part = p16[..., start : start + chunk].float() @ v16[..., start : start + chunk, :].float()
        c = (c.float() + part).to(torch.float16)
    return c.float()


# ---------------------------------------------------------------------------- SageAttention 2, sm90 FP8 kernel


def sage2_per_thread_int8(q: torch.Tensor, k: torch.Tensor, km: torch.Tensor | None = None) -> QuantizedQK:
    """[v2] triton/quant_per_thread.py:154-204 with sm90's sizes (core.py:969: BLKQ=64, WARPQ=16, BLKK=WARPK=128).

    K: k - km in k's dtype first (line 158-159). No sm_scale here (the kernel applies it, sm90.cu:153, 264).
    Q groups: within each 16-token warp band, tokens t and t + 8 (lines 27-32): 8 groups of 2 tokens.
    K groups: within each 128-token block, the 32 tokens whose (token % 8) // 2 equals the group (lines 54-76).
    scale = max|x| / 127 + 1e-7 in float32 (lines 41, 89); x / scale, +-0.5, truncated (lines 42-44, 90-95).
    Scale shapes as the library: q [B, H, ceil(Sq/64) * 4 * 8], k [B, Hkv, ceil(Sk/128) * 4] (lines 180-181).
    """
    if km is not None:
        k = k - km
    b, hq, sq, d = q.shape
    qf = _pad_tokens(q.float(), SM90_Q_BLOCK)
    bands = qf.shape[2] // SM90_Q_WARP
    # token = band * 16 + j * 8 + group  ->  [B, H, band, j, group, D]
    qg = qf.view(b, hq, bands, SM90_Q_WARP // PER_THREAD_Q_GROUPS, PER_THREAD_Q_GROUPS, d)
    q_scale = qg.abs().amax(dim=(3, 5), keepdim=True) / _f32(INT8_MAX) + _f32(PER_THREAD_SCALE_EPS)
    q_int8 = _round_half_away_trunc(qg / q_scale).view(b, hq, -1, d)[:, :, :sq]
    q_tok = q_scale.expand_as(qg[..., :1]).reshape(b, hq, -1)[:, :, :sq]

    _, hk, sk, _ = k.shape
    kf = _pad_tokens(k.float(), SM90_K_BLOCK)
    blocks = kf.shape[2] // SM90_K_BLOCK
    # token = block * 128 + j * 8 + group * 2 + pair  ->  [B, H, block, j, group, pair, D]
    kg = kf.view(b, hk, blocks, SM90_K_BLOCK // 8, PER_THREAD_K_GROUPS, 2, d)
    k_scale = kg.abs().amax(dim=(3, 5, 6), keepdim=True) / _f32(INT8_MAX) + _f32(PER_THREAD_SCALE_EPS)
    k_int8 = _round_half_away_trunc(kg / k_scale).view(b, hk, -1, d)[:, :, :sk]
    k_tok = k_scale.expand_as(kg[..., :1]).reshape(b, hk, -1)[:, :, :sk]
    return QuantizedQK(
        q_int8, q_scale.reshape(b, hq, -1), k_int8, k_scale.reshape(b, hk, -1), q_tok, k_tok
    )


def sage2_per_warp_int8(q: torch.Tensor, k: torch.Tensor, km: torch.Tensor | None = None) -> QuantizedQK:
    """[v2] quant.py:105-180 -> fused.cu QuantInt8Kernel (lines 64-198), sm90 sizes (core.py:967: WARPQ=16,
    BLKK=128). Q per 16-token warp band, K per 128-token block with the mean subtracted in float32 (fused.cu:124;
    not rounded to k's dtype, unlike the per-thread path). amax starts at 1e-7 (line 147); scale = amax / 127
    (line 164); x * (127 / amax) rounded half-to-even and saturated (cvt.rni.sat.s8.f32, fused.cu:169-183,
    numeric_conversion.cuh:147)."""
    b, hq, sq, d = q.shape
    q_i, q_s, q_tok = _per_warp_quant(q.float(), SM90_Q_WARP, SM90_Q_BLOCK)
    kf = k.float() - km.float() if km is not None else k.float()
    k_i, k_s, k_tok = _per_warp_quant(kf, SM90_K_BLOCK, SM90_K_BLOCK)
    return QuantizedQK(q_i, q_s, k_i, k_s, q_tok, k_tok)


def _per_warp_quant(x: torch.Tensor, group: int, pad_to: int):
    b, h, s, d = x.shape
    xp = _pad_tokens(x, pad_to)
    grouped = xp.view(b, h, -1, group, d)
    amax = torch.clamp_min(grouped.abs().amax(dim=(3, 4), keepdim=True), PER_WARP_AMAX_FLOOR)
    scale = amax / _f32(INT8_MAX)
    x_int8 = torch.round(grouped * (_f32(INT8_MAX) / amax)).clamp(-128, 127).to(torch.int8)
    token_scale = scale.expand_as(grouped[..., :1]).reshape(b, h, -1)[:, :, :s]
    return x_int8.view(b, h, -1, d)[:, :, :s], scale.reshape(b, h, -1), token_scale


def sage2_per_channel_fp8(v: torch.Tensor, scale_max: float = E4M3_MAX) -> tuple[torch.Tensor, torch.Tensor]:
    """[v2] quant.py:224-293 with smooth_v=False (core.py:983) -> fused.cu MeanScaleKernel (lines 316-427).

    One scale per (batch, K/V head, channel) over all tokens: amax = max(|max|, |min|) (line 390), scale = amax /
    448 (line 393), v8 = e4m3(v * (448 / amax)) (lines 399, 418-423). Zero padding (core.py:976-981) never raises
    an amax. An all-zero channel gets 448 / 0 = inf and 0 * inf = NaN, as in the kernel (sm90 then drops only the
    channels it padded itself, core.py:991). Returns (float32 values of the e4m3 codes [B, H, S, D], scale
    [B, H, D] float32).
    """
    vf = v.float()
    amax = torch.maximum(vf.amax(dim=2).abs(), vf.amin(dim=2).abs())
    scale = amax / _f32(scale_max)
    recp = _f32(scale_max) / amax
    return _to_e4m3(vf * recp[:, :, None, :]), scale


def sage2_qk_int8_pv_fp8_cuda_sm90(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    tensor_layout: str = "HND",
    is_causal: bool = False,
    qk_quant_gran: str = "per_thread",
    sm_scale: float | None = None,
    pv_accum_dtype: str = "fp32+fp32",
    smooth_k: bool = True,
) -> torch.Tensor:
    """`sageattn_qk_int8_pv_fp8_cuda_sm90` ([v2] core.py:829-996) on CPU; defaults are the library's, which are
    what diffusers 0.42.1 uses (it passes only layout "NHD", is_causal, sm_scale, return_lse).

    1. sm_scale defaults to head_dim ** -0.5 (core.py:942-943). Head dims below 64 / between 64 and 128 are
       zero-padded by the library (core.py:928-935); zero channels change neither the INT8 scales nor Q.K, so the
       reference skips the padding.
    2. smooth_k: km = mean(k over tokens) in k's dtype (core.py:948-949).
    3. `sage2_per_thread_int8` (default) or `sage2_per_warp_int8` (core.py:966-969).
    4. `sage2_per_channel_fp8` on V (core.py:983, scale_max 448).
    5. The kernel, qk_int8_sv_f8_attn_kernel (sm90.cu:126-567), per 64-query block over 128-key blocks:
       sm = float32(sm_scale) * log2(e) (sm90.cu:153); dequant = q_scale * k_scale of the row's and column's
       groups (sm90.cu:263, 369);
       every block but the row block's last: s = float32(raw int), the scale fused: sm_eff = sm * dequant
       (sm90.cu:264, 303), m_new = max(m, fmaf(rowmax(s), sm_eff, -8.807)), p = exp2(fmaf(s, sm_eff, -m_new))
       (attn_utils.cuh:370-397, 450-453);
       the last block: s = float32(raw) * dequant (sm90.cu:402), out-of-range (and causal) keys -5e6
       (sm90.cu:407-437), then the same with sm (sm90.cu:370);
       d = d * 2^(m_old - m_new) + sum(p) (float32 p, not the FP8 p; sm90.cu:317-318);
       O = O * 2^(m_old - m_new) + float32(e4m3(p) . v8 over the block) (sm90.cu:323-356);
       finally O / d * v_scale[channel] (sm90.cu:490-515), rounded to q's dtype (sm90.cu:528-548).
       Causal: a 64-row block stops after ceil(min(kv_len, (block + 1) * 64) / 128) key blocks (sm90.cu:252-256).
    """
    kernel = "sageattn_qk_int8_pv_fp8_cuda_sm90"
    _check_inputs(q, k, v, tensor_layout, (torch.float16, torch.bfloat16), kernel)
    if qk_quant_gran not in QK_QUANT_GRANS:
        raise SageReferenceError(f"{kernel}: qk_quant_gran={qk_quant_gran!r}; use one of {QK_QUANT_GRANS}.")
    if pv_accum_dtype != "fp32+fp32":
        # core.py:985-986: "fp32" raises NotImplementedError on sm90; nothing else is dispatched.
        raise SageReferenceError(f"{kernel}: pv_accum_dtype={pv_accum_dtype!r}; sm90 runs only 'fp32+fp32'.")
    head_dim = q.shape[-1]
    if head_dim > 128:
        raise SageReferenceError(f"{kernel}: head dim {head_dim}; the kernel supports at most 128 (core.py:936).")
    dtype = q.dtype
    qh, kh, vh = (_to_hnd(t, tensor_layout) for t in (q, k, v))
    b, heads, sq, d = qh.shape
    sk = kh.shape[2]
    if is_causal and sq != sk:
        raise SageReferenceError(f"{kernel}: is_causal needs qo_len == kv_len.")
    if sm_scale is None:
        sm_scale = head_dim**-0.5
    km = _smooth_k(kh)[1] if smooth_k else None
    quantize = sage2_per_thread_int8 if qk_quant_gran == "per_thread" else sage2_per_warp_int8
    quant = quantize(qh, kh, km)
    v8, v_scale = sage2_per_channel_fp8(vh)

    k_int8 = _expand_kv_heads(_pad_tokens(quant.k_int8, SM90_K_BLOCK), heads).double()
    k_tok = _expand_kv_heads(_pad_tokens(quant.k_token_scale.unsqueeze(-1), SM90_K_BLOCK), heads).squeeze(-1)
    v8 = _expand_kv_heads(_pad_tokens(v8, SM90_K_BLOCK), heads).double()
    v_scale = _expand_kv_heads(v_scale, heads)
    q_int8 = quant.q_int8.double()
    q_tok = quant.q_token_scale

    sm = _f32(sm_scale) * _f32(SM90_LOG2E)
    offset = _f32(-S_FP8_OFFSET)
    rows = torch.arange(sq)
    n_blocks = math.ceil(sk / SM90_K_BLOCK)
    if is_causal:
        limit = torch.clamp(((rows // SM90_Q_BLOCK) + 1) * SM90_Q_BLOCK, max=sk)
        n_iter = (limit + SM90_K_BLOCK - 1) // SM90_K_BLOCK
    else:
        n_iter = torch.full((sq,), n_blocks)

    m = torch.full((b, heads, sq), SM90_M_INIT)
    dsum = torch.full((b, heads, sq), SM90_D_INIT)
    o = torch.zeros((b, heads, sq, d))
    for j in range(n_blocks):
        cols = slice(j * SM90_K_BLOCK, (j + 1) * SM90_K_BLOCK)
        key_idx = torch.arange(cols.start, cols.stop)
        raw = (q_int8 @ k_int8[:, :, cols].transpose(-1, -2)).float()  # exact: |raw| <= 127^2 * 128 < 2^24
        dequant = q_tok[..., :, None] * k_tok[:, :, None, cols]
        # every block but the last of a row: the dequant scale rides on sm (sm90.cu:263-264)
        sm_eff = sm * dequant
        m_main = torch.maximum(m, _fma32(raw, sm_eff, offset).amax(dim=-1))
        p_main = torch.exp2(_fma32(raw, sm_eff, -m_main[..., None]))
        # the row's last block: dequantize, mask, then scale by sm (sm90.cu:369-439)
        s_last = raw * dequant
        out_of_range = key_idx[None, :] >= sk
        if is_causal:
            out_of_range = out_of_range | (key_idx[None, :] > rows[:, None])
        s_last = torch.where(out_of_range, _f32(SM90_M_INIT), s_last)
        m_last = torch.maximum(m, _fma32(s_last.amax(dim=-1), sm, offset))
        p_last = torch.exp2(_fma32(s_last, sm, -m_last[..., None]))

        is_last = (n_iter - 1 == j)[None, None, :]
        m_new = torch.where(is_last, m_last, m_main)
        p = torch.where(is_last[..., None], p_last, p_main)
        o_scale = torch.exp2(m - m_new)
        d_new = dsum * o_scale + p.double().sum(dim=-1).float()
        pv = (_to_e4m3(p).double() @ v8[:, :, cols]).float()
        o_new = o * o_scale[..., None] + pv
        active = (j < n_iter)[None, None, :]
        m = torch.where(active, m_new, m)
        dsum = torch.where(active, d_new, dsum)
        o = torch.where(active[..., None], o_new, o)
    out = (o * (_f32(1.0) / dsum)[..., None] * v_scale[:, :, None, :]).to(dtype)
    return _from_hnd(out, tensor_layout).contiguous()
