"""runtime/quant/mx.py against a direct, independent computation of OCP MX v1.0 written here: element grids
decoded from their bit patterns, nearest value by exhaustive search with ties to the even code, the shared
exponent found by doubling, all in Python floats block by block."""

from __future__ import annotations

import math

import pytest
import torch

from runtime.backends import ReferenceBackend
from runtime.numerics import Numerics
from runtime.quant.mx import E2M1, E4M3, NonFiniteInputError, fake_quantize_mx, quantize_mx


def decode_grid(exponent_bits: int, mantissa_bits: int, bias: int, drop_top_code: bool) -> list[tuple[float, int]]:
    """Every non-negative finite value of a small float format with its code, from the bits. e4m3fn has no
    infinities and only S.1111.111 is NaN, so its top code is dropped; e2m1 has no special values."""
    values = []
    for code in range(2 ** (exponent_bits + mantissa_bits)):
        exponent, mantissa = code >> mantissa_bits, code & (2**mantissa_bits - 1)
        if drop_top_code and code == 2 ** (exponent_bits + mantissa_bits) - 1:
            continue
        if exponent == 0:
            value = mantissa / 2**mantissa_bits * 2.0 ** (1 - bias)
        else:
            value = (1 + mantissa / 2**mantissa_bits) * 2.0 ** (exponent - bias)
        values.append((value, code))
    return values


GRIDS = {"e4m3": decode_grid(4, 3, 7, drop_top_code=True), "e2m1": decode_grid(2, 1, 1, drop_top_code=False)}
EMAX = {"e4m3": 8, "e2m1": 2}


def nearest(value: float, fmt: str) -> float:
    """Round to nearest in the grid, ties to the even code, saturating at the largest value."""
    grid = GRIDS[fmt]
    magnitude = abs(value)
    top = grid[-1][0]
    if magnitude >= top:
        return math.copysign(top, value)
    best = min(grid, key=lambda vc: (abs(vc[0] - magnitude), vc[1] & 1))
    return math.copysign(best[0], value)


def shared_exponent(amax: float, fmt: str) -> int:
    if amax == 0:
        return -127
    e = 0
    while 2.0**e > amax:
        e -= 1
    while 2.0 ** (e + 1) <= amax:
        e += 1
    return max(-127, min(127, e - EMAX[fmt]))


def direct_mx(values: list[float], fmt: str) -> tuple[list[float], list[int]]:
    """Fake-quantized values and the exponent of each 32-element block, the obvious way."""
    out, exponents = [], []
    for start in range(0, len(values), 32):
        block = values[start:start + 32]
        e = shared_exponent(max(abs(v) for v in block), fmt)
        exponents.append(e)
        out += [nearest(v / 2.0**e, fmt) * 2.0**e for v in block]
    return out, exponents


FORMATS = [("e4m3", E4M3), ("e2m1", E2M1)]


def test_element_grids_match_the_formats_published_ranges():
    assert GRIDS["e4m3"][-1][0] == 448 and GRIDS["e4m3"][1][0] == 2.0**-9 and len(GRIDS["e4m3"]) == 127
    assert [v for v, _ in GRIDS["e2m1"]] == [0, 0.5, 1, 1.5, 2, 3, 4, 6]


@pytest.mark.parametrize("name, fmt", FORMATS)
def test_random_blocks_match_the_direct_computation(name, fmt):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(3, 96, generator=g) * torch.logspace(-3, 3, 96)  # a wide dynamic range within blocks
    got = quantize_mx(x, fmt, axis=-1)
    for row in range(3):
        want, exponents = direct_mx(x[row].tolist(), name)
        assert got.dequantize()[row].tolist() == want
        assert got.exponents[row].tolist() == exponents
    assert got.exponents.shape == (3, 3) and got.scale_codes().dtype == torch.uint8
    assert got.e8m0_scales().dtype == torch.float8_e8m0fnu
    assert got.e8m0_scales().float().tolist() == torch.pow(2.0, got.exponents.float()).tolist()


@pytest.mark.parametrize("name, fmt", FORMATS)
def test_every_grid_value_and_every_midpoint(name, fmt):
    # One block holds the format's max (so the shared exponent is 0 after scaling by 2^emax) plus every grid
    # value and every midpoint between neighbours: exact values must survive, midpoints go to the even code.
    grid = [v for v, _ in GRIDS[name]]
    points = grid + [(a + b) / 2 for a, b in zip(grid[:-1], grid[1:], strict=True)]
    points += [-p for p in points]
    values = [grid[-1]] + points
    values += [0.0] * (-len(values) % 32)
    x = torch.tensor(values, dtype=torch.float64)
    got = fake_quantize_mx(x.float(), fmt, axis=0).tolist()
    want, exponents = direct_mx(x.float().tolist(), name)
    assert got == want and exponents[0] == math.floor(math.log2(grid[-1])) - EMAX[name]
    assert set(abs(v) for v in got[: len(grid) + 1]) <= set(grid)


def test_saturation_instead_of_overflow():
    # amax 500 -> e = 8 - 8 = 0 for e4m3; 500 / 1 > 448 saturates (an e4m3fn cast would give NaN).
    x = torch.tensor([500.0, -470.0, 1.0] + [0.0] * 29)
    got = quantize_mx(x, E4M3, axis=0)
    assert got.exponents.tolist() == [0] and got.dequantize()[:3].tolist() == [448.0, -448.0, 1.0]
    # e2m1: amax 7.5 -> e = 2 - 2 = 0; 7.5 saturates to 6, 6.9 too.
    y = torch.tensor([7.5, 6.9, -7.0] + [0.0] * 29)
    assert fake_quantize_mx(y, E2M1, axis=0)[:3].tolist() == [6.0, 6.0, -6.0]


def test_zero_block_gets_the_smallest_scale_and_stays_zero():
    x = torch.zeros(2, 64)
    x[1, 40] = 3.0
    got = quantize_mx(x, E2M1, axis=-1)
    assert got.exponents.tolist() == [[-127, -127], [-127, -1]]  # 3.0: floor(log2 3) - 2 = -1
    assert got.scale_codes()[0].tolist() == [0, 0]
    assert (got.dequantize()[0] == 0).all() and got.dequantize()[1, 40] == 3.0


@pytest.mark.parametrize("name, fmt", FORMATS)
def test_denormal_inputs_clamp_the_exponent_and_underflow(name, fmt):
    tiny = 2.0**-140  # a float32 denormal: floor(log2) - emax < -127, so e clamps to -127
    x = torch.tensor([tiny, 2 * tiny, 2.0**-120] + [0.0] * 29, dtype=torch.float32)
    got = quantize_mx(x, fmt, axis=0)
    want, exponents = direct_mx(x.tolist(), name)
    assert got.exponents.tolist() == exponents and got.dequantize().tolist() == want
    assert exponents[0] == max(-127, -120 - EMAX[name])


def test_partial_last_block_and_axis_choice():
    g = torch.Generator().manual_seed(2)
    x = torch.randn(40, 3, generator=g)  # blocks along axis 0: 32 + 8 tokens per column
    got = quantize_mx(x, E4M3, axis=0)
    assert got.exponents.shape == (2, 3)
    for column in range(3):
        want, exponents = direct_mx(x[:, column].tolist(), "e4m3")
        assert got.dequantize()[:, column].tolist() == want and got.exponents[:, column].tolist() == exponents


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_inputs_are_refused(bad):
    x = torch.ones(32)
    x[5] = bad
    with pytest.raises(NonFiniteInputError, match="value has 1 NaN/infinite"):
        quantize_mx(x, E4M3, axis=0, name="value")


def reference_attention(q, k, v, dtype, rotation=None):
    return ReferenceBackend(Numerics(dtype=dtype, hadamard_rotation=rotation is not None)).attend(q, k, v, rotation)


def direct_mx_attention(q, k, v, dtype):
    """The documented MindIE-SD layouts in loops: MXFP8 Q/K blocks along D per (token, head), V blocks along the
    flattened B*S axis per (head, channel); MXFP4 sequences padded to 512 with zeros, Q/K along D, V along S per
    (batch, head, channel), padded keys attended to; softmax(q k^T / sqrt(D)) v in float64, queries cropped."""
    name = "e4m3" if dtype == "mxfp8_e4m3" else "e2m1"
    if dtype == "mxfp4_e2m1":
        pad = lambda t: torch.nn.functional.pad(t, (0, 0, 0, 0, 0, (-t.shape[1]) % 512))  # noqa: E731
        q, k, v = pad(q), pad(k), pad(v)
    batch, s_q, heads, d = q.shape
    s_kv = k.shape[1]

    def along_d(t):
        out = torch.empty(t.shape, dtype=torch.float64)
        for b in range(t.shape[0]):
            for s in range(t.shape[1]):
                for h in range(heads):
                    out[b, s, h] = torch.tensor(direct_mx(t[b, s, h].tolist(), name)[0], dtype=torch.float64)
        return out

    vq = torch.empty(v.shape, dtype=torch.float64)
    if dtype == "mxfp8_e4m3":
        flat = v.reshape(batch * s_kv, heads, d)
        for h in range(heads):
            for c in range(d):
                vq.view(batch * s_kv, heads, d)[:, h, c] = torch.tensor(direct_mx(flat[:, h, c].tolist(), name)[0])
    else:
        for b in range(batch):
            for h in range(heads):
                for c in range(d):
                    vq[b, :, h, c] = torch.tensor(direct_mx(v[b, :, h, c].tolist(), name)[0])
    qq, kq = along_d(q), along_d(k)
    out = torch.empty(batch, s_q, heads, d, dtype=torch.float64)
    for b in range(batch):
        for h in range(heads):
            scores = qq[b, :, h] @ kq[b, :, h].T / math.sqrt(d)
            out[b, :, h] = torch.softmax(scores, dim=-1) @ vq[b, :, h]
    return out


@pytest.mark.parametrize("dtype, batch, s_q, s_kv", [("mxfp8_e4m3", 2, 20, 20), ("mxfp8_e4m3", 1, 40, 40),
                                                     ("mxfp4_e2m1", 2, 9, 5)])
def test_reference_backend_matches_the_direct_mx_attention(dtype, batch, s_q, s_kv):
    g = torch.Generator().manual_seed(3)
    q, k, v = (torch.randn(batch, s, 2, 64, generator=g) for s in (s_q, s_kv, s_kv))
    got = reference_attention(q, k, v, dtype)
    want = direct_mx_attention(q, k, v, dtype)[:, :s_q]
    assert got.shape == q.shape
    torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-5)


def test_mxfp8_value_blocks_straddle_batch_items_as_on_the_npu():
    # S = 20: the second 32-token V block holds batch 0's last 12 tokens and batch 1's first 20. A large value in
    # batch 1 changes batch 0's V scale, hence batch 0's output: the TND flattening is reproduced on purpose.
    g = torch.Generator().manual_seed(4)
    q, k, v = (torch.randn(2, 20, 1, 64, generator=g) for _ in range(3))
    loud = v.clone()
    loud[1, 5, 0, 3] = 1000.0
    base, changed = reference_attention(q, k, v, "mxfp8_e4m3"), reference_attention(q, k, loud, "mxfp8_e4m3")
    assert not torch.equal(base[0], changed[0])


def test_mxfp4_attends_to_the_zero_padding_as_mindiesd_3_1_0_does():
    # 3 real tokens padded to 512: 509 zero keys with score 0 join the softmax, shrinking the output towards 0.
    g = torch.Generator().manual_seed(5)
    q, k, v = (torch.randn(1, 3, 1, 64, generator=g) for _ in range(3))
    out = reference_attention(q, k, v, "mxfp4_e2m1")
    exact = torch.nn.functional.scaled_dot_product_attention(*(t.transpose(1, 2) for t in (q, k, v))).transpose(1, 2)
    assert out.abs().mean() < 0.1 * exact.abs().mean()
