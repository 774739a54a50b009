"""The int8_per_tensor CPU reference (runtime/quant/int8.py) against direct computations on hand-made tensors,
the exactness of its three transforms, and its inferred-semantics options."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from runtime.numerics import Numerics
from runtime.quant.int8 import (
    KernelSemantics,
    int8_attention_reference,
    prepare_int8_inputs,
    quantize_per_tensor,
    quantize_probabilities,
    transform_inputs,
    undo_v_rotation,
    v_rotation_matrix,
)
from runtime.quant.rotation import randomized_hadamard

NAIVE = Numerics.int8(k_mean_subtraction=False, hadamard_rotation=False, v_rotation=False)


def exact_bsnd(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    q, k, v = (t.transpose(1, 2).double() for t in (q, k, v))
    return F.scaled_dot_product_attention(q, k, v).transpose(1, 2)


def cos(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(F.cosine_similarity(a.double().flatten(), b.double().flatten(), dim=0))


def hand_tensors() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    # 1 batch, 4 tokens, 1 head, head dim 2 (BSND); values chosen so scores differ a lot between rows.
    q = torch.tensor([[1.0, 0.5], [-2.0, 1.0], [0.25, -0.75], [3.0, 3.0]]).view(1, 4, 1, 2)
    k = torch.tensor([[0.5, 1.0], [1.5, -0.5], [-1.0, 2.0], [2.0, 2.0]]).view(1, 4, 1, 2)
    v = torch.tensor([[1.0, -1.0], [2.0, 0.0], [-3.0, 4.0], [0.5, 0.5]]).view(1, 4, 1, 2)
    return q, k, v


def direct_int8(q, k, v, tile: int, p_scale: int = 127) -> list[list[float]]:
    """The reference page's steps 4-6 written out with Python scalars and loops (no transforms)."""
    rows = lambda t: t[0, :, 0].tolist()  # noqa: E731
    q, k, v = rows(q), rows(k), rows(v)

    def quant(x):
        scale = max(abs(a) for row in x for a in row) / 127
        return [[max(-127, min(127, round(a / scale))) for a in row] for row in x], scale

    (q8, sq), (k8, sk), (v8, sv) = quant(q), quant(k), quant(v)
    d = len(q[0])
    out = []
    for qi in q8:
        scores = [sum(a * b for a, b in zip(qi, kj, strict=True)) * sq * sk / math.sqrt(d) for kj in k8]
        m, total, acc = -math.inf, 0.0, [0.0] * d
        for start in range(0, len(k8), tile):
            block = range(start, min(start + tile, len(k8)))
            new_m = max(m, max(scores[j] for j in block))
            corr = math.exp(m - new_m) if m > -math.inf else 0.0
            p = {j: math.exp(scores[j] - new_m) for j in block}
            p8 = {j: round(p[j] * p_scale) for j in block}  # Python's round is half-to-even, as rint
            total = total * corr + sum(p.values())  # row sum from the unquantized P~
            acc = [a * corr + sum(p8[j] * v8[j][c] for j in block) for c, a in enumerate(acc)]
            m = new_m
        out.append([a * sv / p_scale / total for a in acc])
    return out


@pytest.mark.parametrize("tile", [1, 2, 4])
def test_reference_equals_a_direct_computation_on_hand_made_tensors(tile):
    q, k, v = hand_tensors()
    got = int8_attention_reference(q, k, v, None, NAIVE, KernelSemantics(kv_tile_tokens=tile))
    expected = torch.tensor(direct_int8(q, k, v, tile), dtype=torch.float64).view(1, 4, 1, 2)
    assert got.shape == q.shape and got.dtype == q.dtype
    # the kernel returns fp16: agreement to fp16's relative precision (2^-11), nothing looser
    torch.testing.assert_close(got.double(), expected, rtol=2e-3, atol=1e-3)
    # and it is an approximation of attention, not attention itself: INT8 P differs from exact softmax
    assert not torch.allclose(got.double(), exact_bsnd(q, k, v), atol=1e-4)


def test_tiles_change_the_p_grid_where_the_running_max_changes():
    q, k, v = hand_tensors()
    one_tile = int8_attention_reference(q, k, v, None, NAIVE, KernelSemantics(kv_tile_tokens=4))
    per_token = int8_attention_reference(q, k, v, None, NAIVE, KernelSemantics(kv_tile_tokens=1))
    assert not torch.equal(one_tile, per_token)


def test_transforms_are_exact_in_exact_arithmetic():
    generator = torch.Generator().manual_seed(3)
    q, k, v = (torch.randn(2, 3, 37, 64, generator=generator, dtype=torch.float64) for _ in range(3))
    k = k + 5.0 * torch.randn(1, 3, 1, 64, generator=generator, dtype=torch.float64)  # per-channel K bias
    rotation = randomized_hadamard(64, 425500)
    r_v = randomized_hadamard(64, 425501)
    plain = F.scaled_dot_product_attention(q, k, v)
    tq, tk, tv = transform_inputs(q, k, v, rotation, r_v, k_mean_subtraction=True)
    assert not torch.allclose(tq, q) and not torch.allclose(tk, k) and not torch.allclose(tv, v)
    transformed = undo_v_rotation(F.scaled_dot_product_attention(tq, tk, tv), r_v)
    torch.testing.assert_close(transformed, plain, rtol=0, atol=1e-12)
    for name, args in (("k mean", (None, None, True)), ("q/k rotation", (rotation, None, False)),
                       ("v rotation", (None, r_v, False))):
        tq, tk, tv = transform_inputs(q, k, v, *args)
        alone = undo_v_rotation(F.scaled_dot_product_attention(tq, tk, tv), args[1])
        torch.testing.assert_close(alone, plain, rtol=0, atol=1e-12, msg=name)


def test_per_tensor_quantization_scale_range_and_error():
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 50, 32, generator=generator) * torch.tensor([1.0, 10.0, 0.1]).view(1, 3, 1, 1)
    x8, scale = quantize_per_tensor(x, "call")
    assert x8.dtype == torch.int8 and scale.shape == (1,) and scale.dtype == torch.float32
    assert float(scale) == pytest.approx(float(x.abs().max()) / 127)
    assert int(x8.abs().max()) == 127 and int(x8.min()) >= -127
    assert float((x8.float() * scale - x).abs().max()) <= float(scale) / 2 * 1.0001
    h8, head_scale = quantize_per_tensor(x, "head")
    assert head_scale.shape == (3,)
    torch.testing.assert_close(head_scale, x.abs().amax(dim=(0, 2, 3)) / 127)
    assert [int(h8[:, h].abs().max()) for h in range(3)] == [127, 127, 127]
    zeros8, zero_scale = quantize_per_tensor(torch.zeros(1, 1, 4, 32), "call")
    assert float(zero_scale) == 0 and not zeros8.any()
    with pytest.raises(ValueError, match="scale scope"):
        quantize_per_tensor(x, "block")


def test_probability_rounding_and_saturation_options():
    values = torch.tensor([0.5, 1.5, 2.5, 126.5, 130.0, -129.0], dtype=torch.float64)
    assert quantize_probabilities(values, KernelSemantics()).tolist() == [0, 2, 2, 126, 127, -128]
    assert quantize_probabilities(values, KernelSemantics(p_rounding="half_away")).tolist() == [1, 2, 3, 127, 127, -128]
    assert quantize_probabilities(values, KernelSemantics(p_rounding="truncate")).tolist() == [0, 1, 2, 126, 127, -128]
    assert quantize_probabilities(values, KernelSemantics(p_saturation="wrap")).tolist() == [0, 2, 2, 126, -126, 127]
    with pytest.raises(ValueError, match="quant_scale1"):
        KernelSemantics(quant_scale1="add")


def test_quant_scale1_semantics_decide_what_a_passed_127_means():
    q, k, v = hand_tensors()
    multiply = int8_attention_reference(q, k, v, None, NAIVE)
    # The reference passes the quant_scale1 that fits the semantics (1/127 when the kernel divides): same result.
    torch.testing.assert_close(int8_attention_reference(q, k, v, None, NAIVE, KernelSemantics(quant_scale1="divide")),
                               multiply)
    # ...but a kernel that divides by the 127 we pass quantizes every P to 0: the output is all zeros.
    from runtime.quant.int8 import int8_kernel_reference

    inputs = prepare_int8_inputs(q, k, v, None, NAIVE)
    wrong = int8_kernel_reference(inputs, 1 / math.sqrt(2), 127.0, inputs.dequant_scale2(127),
                                  KernelSemantics(quant_scale1="divide"))
    assert not wrong.any() and multiply.abs().sum() > 0


def test_row_sum_source_option_changes_the_denominator():
    q, k, v = hand_tensors()
    unquantized = int8_attention_reference(q, k, v, None, NAIVE)
    quantized = int8_attention_reference(q, k, v, None, NAIVE, KernelSemantics(row_sum="quantized"))
    assert not torch.equal(unquantized, quantized)
    # with the quantized sum, P8/sum(P8) are exact weights: a constant V passes through up to V's quantization
    const_v = torch.full_like(v, 0.75)
    out = int8_attention_reference(q, k, const_v, None, NAIVE, KernelSemantics(row_sum="quantized"))
    torch.testing.assert_close(out, const_v, rtol=1e-3, atol=1e-3)


def test_the_three_transforms_rescue_per_tensor_int8_on_biased_outlier_inputs():
    generator = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(1, 256, 2, 64, generator=generator) for _ in range(3))
    k = k + 4.0 * torch.randn(1, 1, 2, 64, generator=generator)  # K bias constant over tokens
    q[..., :2] *= 30.0
    k[..., 5:7] *= 30.0
    v[..., 3] *= 40.0
    q = q / 8
    rotation = randomized_hadamard(64, 425500).float()
    exact = exact_bsnd(q, k, v)
    naive = cos(int8_attention_reference(q, k, v, None, NAIVE), exact)
    full = cos(int8_attention_reference(q, k, v, rotation, Numerics.int8()), exact)
    assert full > 0.99 and full > naive + 0.01, (naive, full)


def test_v_rotation_uses_its_own_seeded_matrix():
    r_v = v_rotation_matrix("cpu", 64, 425500)
    torch.testing.assert_close(r_v @ r_v.T, torch.eye(64), atol=1e-6, rtol=0)
    assert not torch.equal(r_v, randomized_hadamard(64, 425500).float())
