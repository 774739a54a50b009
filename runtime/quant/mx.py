"""OCP Microscaling (MX) v1.0 formats, MXFP8 (e4m3 elements) and MXFP4 (e2m1 elements), in plain PyTorch, and
the attention inputs as MindIE-SD's NPU paths quantize them.

The rules, each with its source:
- Blocks: 32 consecutive elements along one axis share one scale (OCP MX v1.0, section 5.1; k = 32 for both
  formats). A last, partial block is zero-padded to find its amax (zeros never raise an amax) and the padding is
  cropped from the result, so the scale tensor has ceil(n / 32) entries along the blocked axis.
- Scale: X = 2^e stored as E8M0 (8 exponent bits, bias 127, no sign or mantissa; code 0xFF is NaN), with
  e = floor(log2(amax of the block)) - emax_elem, emax_elem = 8 for e4m3 and 2 for e2m1 (OCP MX v1.0, section
  6.3, "ConvertToMX"). This is the rule we assume for torch_npu's `npu_dynamic_mx_quant` as MindIE-SD 3.1.0
  calls it: MXFP8RotateQuantFA passes no `scale_alg`, and MXFP4QuantFA passes `scale_alg` / `dst_type_max` only
  when `mxfp4_scale_alg` is set in its QuantConfig (default None; its opt-in "C7" variant, scale_alg=2 with
  dst_type_max=7.25, is NOT reproduced here). Not checked on an NPU: the `npu`-marked test compares.
- A block of zeros gets the smallest scale, 2^-127 (code 0x00), and quantizes to zeros.
- e is clamped to E8M0's finite range [-127, 127]. The lower clamp bites only when amax < 2^-119 (e4m3) or
  2^-125 (e2m1), i.e. for blocks of float32/bf16 denormals: their elements then underflow towards the element
  format's subnormals or zero, as any E8M0 encoder must do. The upper clamp cannot bite for float32 inputs.
- Elements: x / X rounded to nearest, ties to even (OCP MX v1.0 section 6.3 uses the element format's
  roundTiesToEven), saturating to the format's largest finite value (448 for e4m3, 6 for e2m1): with the scale
  rule above x / X < 2^(emax+1), so values in (448, 512) and (6, 8) clamp instead of overflowing (OCP allows
  saturation for the conversion to FP8/FP4 elements; e4m3fn has no infinity and e2m1 no inf/NaN at all).
  Subnormals of the element format are kept (e4m3: steps of 2^-9; e2m1: 0.5).
- NaN or infinity in an input is refused with NonFiniteInputError: OCP would make the block's scale NaN
  (0xFF) and every element of it NaN, which we will not carry silently through a pipeline.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from qcompiler.numerics import MX_BLOCK_ELEMENTS, MXFP4_SEQUENCE_MULTIPLE
from runtime.quant import prepare_qk, register_quantizer

# E8M0: unsigned 8-bit biased exponent. Code 0 = 2^-127 ... code 254 = 2^127; 255 = NaN (OCP MX v1.0 5.4).
E8M0_BIAS = 127
E8M0_MIN_EXPONENT = -127
E8M0_MAX_EXPONENT = 127


class NonFiniteInputError(ValueError):
    """An MX quantizer was given NaN or infinity (see the module docstring for why it refuses)."""


@dataclass(frozen=True)
class ElementFormat:
    """A small floating-point element format: `mantissa_bits` explicit mantissa bits, normal exponents from
    `emin` to `emax`, largest finite magnitude `max_value` (OCP MX v1.0 section 5.3)."""

    name: str
    mantissa_bits: int
    emin: int
    emax: int
    max_value: float


# e4m3 (OCP FP8, "fn" variant): bias 7, normals 2^-6 .. 1.75 * 2^8 = 448, subnormals multiples of 2^-9.
E4M3 = ElementFormat("e4m3", mantissa_bits=3, emin=-6, emax=8, max_value=448.0)
# e2m1 (OCP FP4): bias 1, normals 1.0 .. 1.5 * 2^2 = 6, one subnormal 0.5.
E2M1 = ElementFormat("e2m1", mantissa_bits=1, emin=0, emax=2, max_value=6.0)


@dataclass(frozen=True)
class MxTensor:
    """An MX-quantized tensor. `elements`: float32 values on the element format's grid (x ~= elements * 2^e),
    same shape as the input. `exponents`: int16 e per block, the input's shape with the blocked axis of
    length ceil(n / 32). `axis`: the blocked axis (non-negative)."""

    elements: torch.Tensor
    exponents: torch.Tensor
    axis: int
    element_format: ElementFormat

    def scale_codes(self) -> torch.Tensor:
        """The E8M0 bits of each scale (uint8), as an NPU kernel takes them."""
        return (self.exponents + E8M0_BIAS).to(torch.uint8)

    def e8m0_scales(self) -> torch.Tensor:
        """The scales as torch.float8_e8m0fnu (the dtype MindIE-SD passes as dequant_scale_*_dtype)."""
        return self.scale_codes().view(torch.float8_e8m0fnu)

    def dequantize(self) -> torch.Tensor:
        """elements * 2^e in float32, each scale broadcast over its block."""
        length = self.elements.shape[self.axis]
        scale = torch.pow(2.0, self.exponents.double()).repeat_interleave(MX_BLOCK_ELEMENTS, dim=self.axis)
        scale = scale.narrow(self.axis, 0, length)
        return (self.elements.double() * scale).float()


def round_to_element(values: torch.Tensor, element_format: ElementFormat) -> torch.Tensor:
    """Round float64 `values` to the element grid, nearest with ties to even, saturating at +-max_value.

    Inside a binade [2^b, 2^(b+1)) (b >= emin) the grid step is 2^(b - mantissa_bits); below 2^emin the
    subnormal step 2^(emin - mantissa_bits). An even multiple of the step is an even mantissa (the step count
    within a binade starts at 2^mantissa_bits, an even number), so torch.round's half-to-even on value / step is
    the format's roundTiesToEven.
    """
    magnitude = values.abs()
    _mantissa, exponent = torch.frexp(magnitude)  # magnitude = m * 2^exponent, m in [0.5, 1): floor(log2) = exponent-1
    binade = torch.clamp(exponent - 1, min=element_format.emin)
    step = torch.pow(2.0, (binade - element_format.mantissa_bits).double())
    rounded = torch.round(magnitude / step) * step
    return torch.copysign(rounded.clamp(max=element_format.max_value), values)


def _check_finite(x: torch.Tensor, name: str) -> None:
    if not bool(torch.isfinite(x).all()):
        bad = int((~torch.isfinite(x)).sum())
        raise NonFiniteInputError(
            f"{name} has {bad} NaN/infinite value(s): MX quantization refuses them (a NaN E8M0 scale would "
            "poison its whole 32-element block). Fix the model's activations, or run this cell native."
        )


def quantize_mx(x: torch.Tensor, element_format: ElementFormat, axis: int, name: str = "tensor") -> MxTensor:
    """MX-quantize `x` in blocks of 32 consecutive elements along `axis` (rules: module docstring)."""
    _check_finite(x, name)
    axis = axis % x.dim()
    moved = x.double().movedim(axis, -1)
    length = moved.shape[-1]
    blocks = -(-length // MX_BLOCK_ELEMENTS)
    padded = F.pad(moved, (0, blocks * MX_BLOCK_ELEMENTS - length))
    grouped = padded.unflatten(-1, (blocks, MX_BLOCK_ELEMENTS))
    amax = grouped.abs().amax(dim=-1, keepdim=True)
    _mantissa, amax_exponent = torch.frexp(amax)
    shared = torch.where(amax > 0, amax_exponent - 1 - element_format.emax, torch.full_like(amax_exponent,
                                                                                           E8M0_MIN_EXPONENT))
    shared = shared.clamp(E8M0_MIN_EXPONENT, E8M0_MAX_EXPONENT)
    # ldexp by -e is exact in float64 for every e in E8M0's range.
    elements = round_to_element(torch.ldexp(grouped, -shared.double()), element_format)
    elements = elements.flatten(-2)[..., :length].movedim(-1, axis).float()
    exponents = shared.squeeze(-1).movedim(-1, axis).to(torch.int16)
    return MxTensor(elements, exponents, axis, element_format)


def fake_quantize_mx(x: torch.Tensor, element_format: ElementFormat, axis: int, name: str = "tensor") -> torch.Tensor:
    """quantize_mx then dequantize, in float32: what the kernel computes with."""
    return quantize_mx(x, element_format, axis, name).dequantize()


def mxfp8_attention_inputs(
    query: torch.Tensor, key: torch.Tensor, value: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """BSND q/k/v (already rotated) -> dequantized float32 BSND, as MindIE-SD 3.1.0's MXFP8RotateQuantFA feeds
    FIA v2: tensors reshaped to TND (B*S tokens, heads, D), `npu_dynamic_mx_quant(q|k, axis=-1)` (blocks of 32
    along the head dim, per token and head) and `npu_dynamic_mx_quant(v, axis=0)` (blocks of 32 along the
    flattened B*S token axis, per head and channel).

    With batch > 1 and S not a multiple of 32, a V block straddles two batch items there; we reproduce that
    (the same TND flattening), so the reference predicts what the NPU computes rather than an idealised format.
    """
    batch, tokens_kv = key.shape[:2]
    q = fake_quantize_mx(query.flatten(0, 1), E4M3, axis=-1, name="query").view(query.shape)
    k = fake_quantize_mx(key.flatten(0, 1), E4M3, axis=-1, name="key").view(key.shape)
    v = fake_quantize_mx(value.flatten(0, 1), E4M3, axis=0, name="value").view(batch, tokens_kv, *value.shape[2:])
    return q, k, v


def pad_sequence(x: torch.Tensor, multiple: int = MXFP4_SEQUENCE_MULTIPLE) -> torch.Tensor:
    """Zero-pad a BSND tensor's sequence axis to a multiple of `multiple` (MindIE-SD 3.1.0
    `_pad_fa_seq_before_quant(x, 512, "BSND")`)."""
    return F.pad(x, (0, 0, 0, 0, 0, (-x.shape[1]) % multiple))


def mxfp4_attention_inputs(
    query: torch.Tensor, key: torch.Tensor, value: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """BSND q/k/v (already rotated) -> dequantized float32 BSND, PADDED, as MindIE-SD 3.1.0's MXFP4QuantFA feeds
    its quant_flash_attn op: each sequence zero-padded to a multiple of 512, then `npu_dynamic_mx_quant` to e2m1
    with Q and K along the head dim (axis -1) and V along the sequence (BSND axis 1, per batch item, head and
    channel; no block straddles two batch items since the padded length is a multiple of 32).

    The result keeps the padding: MXFP4QuantFA passes `seqused_kv` = the PADDED key length, so the kernel
    attends to the zero keys too (score q.0 = 0, value 0: they add exp(-max) terms to the softmax denominator).
    The caller crops the query padding from the output (as `_crop_fa_output` does).
    """
    q = fake_quantize_mx(pad_sequence(query), E2M1, axis=-1, name="query")
    k = fake_quantize_mx(pad_sequence(key), E2M1, axis=-1, name="key")
    v = fake_quantize_mx(pad_sequence(value), E2M1, axis=1, name="value")
    return q, k, v


def _kernel_inputs(quantizer):
    def inputs(query, key, value, rotation, numerics):
        query, key = prepare_qk(query, key, rotation, numerics)
        return tuple(t.transpose(1, 2) for t in quantizer(query, key, value))
    return inputs


register_quantizer("mxfp8_e4m3", kernel_inputs=_kernel_inputs(mxfp8_attention_inputs))
register_quantizer("mxfp4_e2m1", kernel_inputs=_kernel_inputs(mxfp4_attention_inputs))
