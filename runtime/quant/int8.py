"""`int8_per_tensor`: the CPU reference of Ascend A2/A3 full-quant INT8 attention, step by step.

The computation follows shared reference a2a3-int8.md section 5 (FIA v1 `npu_fused_infer_attention_score` in
full-quant mode, one scale per tensor, INT8 softmax probabilities):

  1. K mean subtraction: K -= mean over tokens, per (batch, head). Exact for softmax (adds a per-row constant).
  2. Q and K times the seeded Hadamard R. Exact: (QR)(KR)^T = QK^T.
  3. V times a second Hadamard R_v; the output times R_v^T afterwards. Exact: (P V R_v) R_v^T = P V.
  4. s_x = amax(x) / 127 over the whole tensor (scope "call") or over each head (scope "head", one call per
     head); x8 = clamp(rint(x / s_x), -127, 127). Done by us on the device, so these are facts, not guesses.
  5. Inside the kernel, an online softmax over key/value tiles: scores s = (q8 . k8) * dequant_scale1 * scale,
     running max m, P~ = exp(s - m), P8 = INT8(P~ * quant_scale1) in [0, 127]; the row sum l accumulates P~.
  6. O = sum(P8 . v8) * dequant_scale2 / l, in fp16 (the kernel's output type), then R_v^T, then the input dtype.

What happens inside the kernel (step 5) is only inferred from its parameter names and docs. Each inferred point
is a named field of `KernelSemantics`, with the inferred default, so the first run on a real A2/A3 can settle it
by comparing the kernel with each variant (tests/runtime/test_int8_npu_contract.py, marker `a2a3`).

Integer products (q8 . k8, P8 . v8) are computed in float64, where they are exact (|sum| < 2^53), so the
reference's only approximations are the quantization steps themselves and float64 exp/sum.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from qcompiler.formats import Numerics
from qcompiler.formats.int8_per_tensor import NAME as DTYPE
from qcompiler.formats.int8_per_tensor import SCALE_SCOPES as INT8_SCALE_SCOPES
from runtime.quant import register_quantizer

# Symmetric INT8 range used for Q, K and V: scale = amax / 127 maps amax to 127, and -128 is never produced.
INT8_MAX = 127
# R_v is a second randomized Hadamard with its own sign vector: seed = rotation_seed + this offset. Any seed is
# exact; a different one keeps V's sign pattern independent of Q/K's.
V_ROTATION_SEED_OFFSET = 1

ROUNDINGS = ("half_even", "half_away", "truncate")
QUANT_SCALE1_MODES = ("multiply", "divide")
SATURATIONS = ("clamp", "wrap")
ROW_SUM_SOURCES = ("unquantized", "quantized")
SCALE_SCOPES = INT8_SCALE_SCOPES


@dataclass(frozen=True)
class KernelSemantics:
    """What the INT8 kernel does inside, as far as it is only inferred [a2a3-int8.md: infer].

    quant_scale1:   "multiply": P8 = P~ * quant_scale1 (so we pass 127); "divide": P8 = P~ / quant_scale1
                    (then one passes 1/127). The CANN doc calls it the "quantization factor of P", which reads
                    as a multiplier; inferred.
    p_rounding:     how P~ * 127 becomes an integer: "half_even" (rint, what npu_quantize does), "half_away",
                    or "truncate". Inferred: half_even.
    p_saturation:   what happens to a P value past the INT8 range (only reachable with a quant_scale1 over 127 or
                    a stale max): "clamp" to [-128, 127] or two's-complement "wrap". Inferred: clamp.
    row_sum:        the softmax denominator l sums the unquantized P~ ("unquantized", as FlashAttention-style
                    kernels and MindIE-SD's mix kernel do) or the dequantized P8 / 127 ("quantized"). Inferred.
    kv_tile_tokens: key/value tokens per online-softmax tile; the running max, and so P's quantization grid,
                    changes at tile borders. The kernel's tiling is not documented; 512 is a guess.
    """

    quant_scale1: str = "multiply"
    p_rounding: str = "half_even"
    p_saturation: str = "clamp"
    row_sum: str = "unquantized"
    kv_tile_tokens: int = 512

    def __post_init__(self) -> None:
        for name, allowed in (("quant_scale1", QUANT_SCALE1_MODES), ("p_rounding", ROUNDINGS),
                              ("p_saturation", SATURATIONS), ("row_sum", ROW_SUM_SOURCES)):
            if getattr(self, name) not in allowed:
                raise ValueError(f"KernelSemantics.{name}={getattr(self, name)!r}; choose one of {', '.join(allowed)}")
        if self.kv_tile_tokens < 1:
            raise ValueError(f"KernelSemantics.kv_tile_tokens must be >= 1, got {self.kv_tile_tokens}")

    def quant_scale1_value(self, p_scale: int) -> float:
        """The quant_scale1 to pass so P8 = P~ * p_scale under these semantics."""
        return float(p_scale) if self.quant_scale1 == "multiply" else 1.0 / p_scale


DEFAULT_SEMANTICS = KernelSemantics()


@dataclass(frozen=True)
class Int8AttentionInputs:
    """What the kernel is called with: INT8 q/k/v in BNSD and float32 per-tensor (or per-head) scales.

    Scales have shape [1] (scope "call") or [N] (scope "head", one kernel call per head). `v_rotation` is R_v
    (float32) or None; the output must be multiplied by its transpose."""

    query: torch.Tensor
    key: torch.Tensor
    value: torch.Tensor
    query_scale: torch.Tensor
    key_scale: torch.Tensor
    value_scale: torch.Tensor
    v_rotation: torch.Tensor | None

    @property
    def dequant_scale1(self) -> torch.Tensor:
        """dequantization factor of the QK result: s_q * s_k (the softmax scale is passed separately)."""
        return self.query_scale * self.key_scale

    def dequant_scale2(self, p_scale: int) -> torch.Tensor:
        """dequantization factor of the PV result: s_v / p_scale (P8 carries a factor p_scale)."""
        return self.value_scale / p_scale


def transform_inputs(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, rotation: torch.Tensor | None,
                     v_rotation: torch.Tensor | None, k_mean_subtraction: bool) -> tuple[torch.Tensor, ...]:
    """Steps 1-3 on BNSD tensors (computed in their dtype, use float32 or float64). Exact in exact arithmetic."""
    if k_mean_subtraction:
        key = key - key.mean(dim=2, keepdim=True)
    if rotation is not None:
        rotation = rotation.to(query.dtype)
        query = query @ rotation
        key = key @ rotation
    if v_rotation is not None:
        value = value @ v_rotation.to(value.dtype)
    return query, key, value


def undo_v_rotation(out: torch.Tensor, v_rotation: torch.Tensor | None) -> torch.Tensor:
    """Step 6's last transform: O R_v^T (R_v is orthogonal, so this undoes step 3)."""
    return out if v_rotation is None else out @ v_rotation.to(out.dtype).T


def quantize_per_tensor(x: torch.Tensor, scope: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Step 4 on a BNSD tensor: (x8 int8, scale float32 [1] or [N]) with x ~= x8 * scale, scale = amax / 127.

    Device ops only (no .item()), so an NPU caller never synchronises with the host. An all-zero tensor gets
    scale 0 and zeros."""
    if scope not in SCALE_SCOPES:
        raise ValueError(f"scale scope {scope!r}; choose one of {', '.join(SCALE_SCOPES)}")
    x = x.float()
    amax = x.abs().amax() if scope == "call" else x.abs().amax(dim=(0, 2, 3))
    scale = (amax / INT8_MAX).reshape(-1)
    divisor = torch.where(scale > 0, scale, torch.ones_like(scale)).view(1, -1, 1, 1)
    # torch.round is round-half-to-even (rint). amax / scale == 127 in real arithmetic; the clamp guards fp32.
    quantized = torch.round(x / divisor).clamp(-INT8_MAX, INT8_MAX).to(torch.int8)
    return quantized, scale


def v_rotation_matrix(device: torch.device | str, head_dim: int, rotation_seed: int) -> torch.Tensor:
    from runtime.quant.rotation import get_rotation

    return get_rotation(device, torch.float32, head_dim, rotation_seed + V_ROTATION_SEED_OFFSET)


def prepare_int8_inputs(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, rotation: torch.Tensor | None,
                        numerics: Numerics) -> Int8AttentionInputs:
    """Steps 1-4: BSND q/k/v (after RoPE and q/k norm) -> the kernel's BNSD INT8 inputs and scales.

    `rotation` is the Q/K Hadamard the runtime hands every quantized backend (None when the plan turns it off);
    R_v is built here from the plan's seed when `v_rotation` is on."""
    q, k, v = (t.transpose(1, 2).float() for t in (query, key, value))
    if rotation is not None and rotation.dtype not in (torch.float32, torch.float64):
        # The runtime hands R in the activations' dtype. In bf16, 1/sqrt(128) rounds by up to 2^-9, which scales
        # every score by up to (1 + 2^-9)^2: take the same seeded R in float32 instead.
        from runtime.quant.rotation import get_rotation

        rotation = get_rotation(q.device, torch.float32, q.shape[-1], numerics.rotation_seed)
    r_v = v_rotation_matrix(q.device, q.shape[-1], numerics.rotation_seed) if numerics.v_rotation else None
    q, k, v = transform_inputs(q, k, v, rotation if numerics.hadamard_rotation else None, r_v,
                               numerics.k_mean_subtraction)
    q8, s_q = quantize_per_tensor(q, numerics.scale_scope)
    k8, s_k = quantize_per_tensor(k, numerics.scale_scope)
    v8, s_v = quantize_per_tensor(v, numerics.scale_scope)
    return Int8AttentionInputs(q8, k8, v8, s_q, s_k, s_v, r_v)


def quantize_probabilities(p_scaled: torch.Tensor, semantics: KernelSemantics) -> torch.Tensor:
    """P~ * 127 (already scaled) -> integer values (float64 holding INT8 values) per the inferred semantics."""
    if semantics.p_rounding == "half_even":
        rounded = torch.round(p_scaled)
    elif semantics.p_rounding == "half_away":
        rounded = torch.sign(p_scaled) * torch.floor(p_scaled.abs() + 0.5)
    else:
        rounded = torch.trunc(p_scaled)
    if semantics.p_saturation == "clamp":
        return rounded.clamp(-128, 127)
    return torch.remainder(rounded + 128, 256) - 128


def int8_kernel_reference(inputs: Int8AttentionInputs, softmax_scale: float, quant_scale1: float,
                          dequant_scale2: torch.Tensor, semantics: KernelSemantics = DEFAULT_SEMANTICS) -> torch.Tensor:
    """Step 5-6 up to the kernel's fp16 output: what the kernel would return for these arguments (BNSD fp16).

    Takes quant_scale1 and dequant_scale2 as the caller passes them, so a wrongly chosen argument shows up here
    exactly as it would on the NPU."""
    q, k, v = (t.double() for t in (inputs.query, inputs.key, inputs.value))
    heads = q.shape[1]

    def per_head(scale: torch.Tensor) -> torch.Tensor:
        return scale.double().reshape(-1).expand(heads).view(1, heads, 1, 1)

    dequant1 = per_head(inputs.dequant_scale1)
    batch, _, tokens, head_dim = q.shape
    running_max = torch.full((batch, heads, tokens, 1), -math.inf, dtype=torch.float64, device=q.device)
    row_sum = torch.zeros_like(running_max)
    acc = torch.zeros((batch, heads, tokens, v.shape[-1]), dtype=torch.float64, device=q.device)
    p_dequant = quant_scale1 if semantics.quant_scale1 == "multiply" else 1.0 / quant_scale1  # P8 ~= P~ * this
    for start in range(0, k.shape[2], semantics.kv_tile_tokens):
        k_tile = k[:, :, start:start + semantics.kv_tile_tokens]
        v_tile = v[:, :, start:start + semantics.kv_tile_tokens]
        scores = (q @ k_tile.transpose(-1, -2)) * dequant1 * softmax_scale  # integer product, exact in float64
        new_max = torch.maximum(running_max, scores.amax(dim=-1, keepdim=True))
        correction = torch.exp(running_max - new_max)  # exp(-inf) = 0 on the first tile
        p_tilde = torch.exp(scores - new_max)
        scaled = p_tilde * quant_scale1 if semantics.quant_scale1 == "multiply" else p_tilde / quant_scale1
        p8 = quantize_probabilities(scaled, semantics)
        tile_sum = p_tilde.sum(-1, keepdim=True) if semantics.row_sum == "unquantized" else (
            p8.sum(-1, keepdim=True) / p_dequant)
        row_sum = row_sum * correction + tile_sum
        acc = acc * correction + p8 @ v_tile  # integer product, exact in float64
        running_max = new_max
    out = acc * per_head(dequant_scale2) / row_sum
    return out.to(torch.float16)  # "Input of type INT8, output of type FLOAT16"


def int8_attention_reference(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                             rotation: torch.Tensor | None, numerics: Numerics,
                             semantics: KernelSemantics = DEFAULT_SEMANTICS) -> torch.Tensor:
    """The whole INT8 attention on BSND q/k/v: returns BSND in query's dtype, as the int8-npu backend does."""
    inputs = prepare_int8_inputs(query, key, value, rotation, numerics)
    out = int8_kernel_reference(inputs, 1.0 / math.sqrt(query.shape[-1]),
                                semantics.quant_scale1_value(numerics.p_scale),
                                inputs.dequant_scale2(numerics.p_scale), semantics)
    out = undo_v_rotation(out.float(), inputs.v_rotation)
    return out.transpose(1, 2).to(query.dtype)


register_quantizer(DTYPE, attention_reference=int8_attention_reference)
