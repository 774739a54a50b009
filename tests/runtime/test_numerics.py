"""fp8-reference against an independent direct computation, written here block by block with plain loops."""

from __future__ import annotations

import math

import pytest
import torch

from runtime.backends import ReferenceBackend
from runtime.numerics import Numerics
from runtime.quant.per_block import quantize_per_block
from runtime.quant.rotation import randomized_hadamard, sylvester_hadamard


def realistic_qkv(batch: int, tokens_q: int, tokens_kv: int, heads: int, head_dim: int, seed: int = 0,
                  k_bias: float = 3.0):
    """BSND q/k/v like real attention: a per-channel bias in K, outlier channels in Q and K, heavy-tailed V."""
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(batch, tokens_q, heads, head_dim, generator=g)
    k = torch.randn(batch, tokens_kv, heads, head_dim, generator=g) + k_bias * torch.randn(head_dim, generator=g)
    q[..., 5] *= 30
    k[..., 7] *= 20
    # Student-t with 3 dof from the test's own generator (the global RNG would make inputs depend on test order).
    chi2 = sum(torch.randn(batch, tokens_kv, heads, head_dim, generator=g) ** 2 for _ in range(3))
    v = torch.randn(batch, tokens_kv, heads, head_dim, generator=g) / torch.sqrt(chi2 / 3)
    return q, k, v


def direct_fp8_attention(q, k, v, rotation, q_block=128, kv_block=256):
    """The documented numerics, computed the slow obvious way: per (batch, head), rotate q and k, then for each
    token block take amax over the block and the whole head dim, scale = amax/448, round x/scale to e4m3,
    multiply back; softmax(q k^T / sqrt(D)) v in float64; cast to the input dtype."""
    batch, _, heads, head_dim = q.shape
    out = torch.empty(q.shape, dtype=torch.float64)

    def fake_quant(x, block):
        y = torch.empty_like(x, dtype=torch.float64)
        for start in range(0, x.shape[0], block):
            chunk = x[start:start + block].double()
            scale = chunk.abs().max() / 448.0
            if scale == 0:
                y[start:start + block] = 0
                continue
            y[start:start + block] = (chunk / scale).float().to(torch.float8_e4m3fn).double() * scale
        return y

    for b in range(batch):
        for h in range(heads):
            qh, kh, vh = q[b, :, h], k[b, :, h], v[b, :, h]
            if rotation is not None:
                qh, kh = qh @ rotation, kh @ rotation
            qd, kd, vd = fake_quant(qh, q_block), fake_quant(kh, kv_block), fake_quant(vh, kv_block)
            scores = (qd @ kd.T) / math.sqrt(head_dim)
            out[b, :, h] = torch.softmax(scores, dim=-1) @ vd
    return out.to(q.dtype)


@pytest.mark.parametrize("tokens_q, tokens_kv", [(300, 300), (128, 512), (77, 16)])
@pytest.mark.parametrize("rotate", [True, False])
def test_fp8_reference_matches_direct_computation(tokens_q, tokens_kv, rotate):
    q, k, v = realistic_qkv(2, tokens_q, tokens_kv, heads=2, head_dim=64)
    rotation = randomized_hadamard(64, 425500).float() if rotate else None
    backend = ReferenceBackend(Numerics(hadamard_rotation=rotate))
    got = backend.attend(q, k, v, rotation)
    want = direct_fp8_attention(q, k, v, rotation)
    assert got.shape == q.shape and got.dtype == q.dtype
    # Both quantize identically; only float32 vs float64 attention arithmetic differs.
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
    exact = torch.nn.functional.scaled_dot_product_attention(*(t.transpose(1, 2) for t in (q, k, v))).transpose(1, 2)
    assert not torch.allclose(got, exact, atol=1e-5)  # it really quantized


def test_rotation_leaves_unquantized_attention_unchanged():
    # (QR)(KR)^T = QK^T: without quantization the rotation is invisible, so any change is FP8 error only.
    q, k, v = (t.double().transpose(1, 2) for t in realistic_qkv(1, 64, 64, heads=2, head_dim=64))
    r = randomized_hadamard(64, 425500).double()
    sdpa = torch.nn.functional.scaled_dot_product_attention
    torch.testing.assert_close(sdpa(q @ r, k @ r, v), sdpa(q, k, v))


def test_scale_shapes_follow_the_kernel_block_sizes():
    x = torch.randn(2, 3, 300, 64)
    q8, q_scale = quantize_per_block(x, 128)
    kv8, kv_scale = quantize_per_block(x, 256)
    assert q8.dtype == torch.float8_e4m3fn and q8.shape == x.shape
    assert q_scale.shape == (2, 3, 3, 1) and kv_scale.shape == (2, 3, 2, 1)  # ceil(300/128), ceil(300/256)
    assert q_scale.dtype == torch.float32
    # The last, partial block's scale covers only its 44 real tokens.
    torch.testing.assert_close(q_scale[:, :, 2, 0], x[:, :, 256:].abs().amax(dim=(2, 3)) / 448)
    assert q8.float().abs().max() <= 448


def test_all_zero_block_quantizes_to_zero_without_nan():
    x = torch.zeros(1, 1, 200, 64)
    x[:, :, 150:] = 1.0
    x8, scale = quantize_per_block(x, 128)
    assert scale[0, 0, 0, 0] == 0 and not torch.isnan(x8.float()).any()
    assert (x8[:, :, :128].float() == 0).all()


def test_k_mean_subtraction_is_exact_for_softmax_and_reduces_error():
    q, k, v = realistic_qkv(1, 256, 256, heads=1, head_dim=64, seed=2)
    k = k + 8.0  # a large shared bias in K: softmax ignores it, FP8 scales do not
    exact = torch.nn.functional.scaled_dot_product_attention(*(t.transpose(1, 2) for t in (q, k, v))).transpose(1, 2)
    plain = ReferenceBackend(Numerics(hadamard_rotation=False)).attend(q, k, v, None)
    centred = ReferenceBackend(Numerics(hadamard_rotation=False, k_mean_subtraction=True)).attend(q, k, v, None)
    assert (centred - exact).abs().mean() < (plain - exact).abs().mean()


@pytest.mark.parametrize("head_dim", [64, 128])
def test_randomized_hadamard_is_orthogonal_seeded_and_signed(head_dim):
    r = randomized_hadamard(head_dim, 425500).double()
    torch.testing.assert_close(r @ r.T, torch.eye(head_dim, dtype=torch.float64))
    assert torch.equal(r, randomized_hadamard(head_dim, 425500))
    assert not torch.equal(r, randomized_hadamard(head_dim, 1234))
    assert torch.allclose((r * math.sqrt(head_dim)).abs(), torch.ones_like(r))
    h = sylvester_hadamard(head_dim).double()
    assert torch.equal(h @ h.T, head_dim * torch.eye(head_dim, dtype=torch.float64))


def test_hadamard_needs_a_power_of_two():
    with pytest.raises(ValueError, match="power-of-two"):
        sylvester_hadamard(96)
