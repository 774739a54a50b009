"""The error metrics against values that follow from their definitions."""

from __future__ import annotations

import math

import pytest
import torch

from qcompiler.stats import attention_flops
from runtime.metrics import (
    PSNR_CAP_DB,
    SSIM_K1,
    call_error,
    cosine_similarity,
    psnr,
    psnr_is_capped,
    relative_l1,
    rmse,
    ssim,
)


def _frames(seed: int = 0, shape=(1, 3, 16, 16, 3)) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    # Smooth-ish content: a blurred random field, so SSIM's structure term has something to compare.
    noise = torch.rand(shape, generator=generator)
    return (noise + noise.roll(1, dims=-2) + noise.roll(1, dims=-3)) / 3


def test_cosine_similarity_of_scaled_opposite_and_orthogonal_vectors() -> None:
    x = torch.tensor([1.0, 2.0, 3.0])
    assert cosine_similarity(2 * x, x) == pytest.approx(1.0)
    assert cosine_similarity(-x, x) == pytest.approx(-1.0)
    assert cosine_similarity(torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])) == 0.0
    assert cosine_similarity(torch.zeros(3), torch.zeros(3)) == 1.0
    assert cosine_similarity(torch.zeros(3), x) == 0.0


def test_relative_l1_and_rmse_by_hand() -> None:
    y = torch.tensor([1.0, -2.0, 3.0, 4.0])
    x = y + torch.tensor([0.5, 0.5, -0.5, 0.5])
    assert relative_l1(x, y) == pytest.approx(2.0 / 10.0)
    assert rmse(x, y) == pytest.approx(0.5)
    assert relative_l1(y, y) == 0.0 and rmse(y, y) == 0.0
    assert math.isinf(relative_l1(torch.ones(2), torch.zeros(2)))


def test_call_error_is_zero_for_identical_outputs_and_refuses_shape_mismatch() -> None:
    y = torch.randn(2, 8, 4, 64)
    error = call_error(y.clone(), y)
    assert (error.cos_sim, error.rel_l1, error.rmse) == (1.0, 0.0, 0.0)
    with pytest.raises(ValueError, match="shapes"):
        call_error(y, y[:1])


def test_psnr_of_identical_frames_is_the_documented_cap() -> None:
    frames = _frames()
    assert psnr(frames, frames.clone()) == PSNR_CAP_DB
    assert psnr_is_capped(psnr(frames, frames.clone()))


def test_psnr_of_a_known_mse() -> None:
    zeros = torch.zeros(1, 2, 8, 8, 3)
    assert psnr(zeros + 0.1, zeros) == pytest.approx(20.0)  # MSE 0.01 -> 10*log10(1/0.01)
    assert not psnr_is_capped(psnr(zeros + 0.1, zeros))


def test_ssim_is_one_for_identical_frames_and_symmetric() -> None:
    a, b = _frames(0), _frames(1)
    assert ssim(a, a.clone()) == pytest.approx(1.0, abs=1e-12)
    assert ssim(a, b) == pytest.approx(ssim(b, a), abs=1e-12)
    assert -1.0 <= ssim(a, b) < 1.0


def test_ssim_of_constant_frames_is_the_luminance_term() -> None:
    # No variance: SSIM reduces to (2ab + C1) / (a^2 + b^2 + C1), the paper's luminance comparison.
    a, b = 0.3, 0.6
    c1 = SSIM_K1**2
    expected = (2 * a * b + c1) / (a * a + b * b + c1)
    frames_a = torch.full((1, 2, 16, 16, 3), a)
    frames_b = torch.full((1, 2, 16, 16, 3), b)
    assert ssim(frames_a, frames_b) == pytest.approx(expected, rel=1e-9)


def test_ssim_falls_as_noise_grows() -> None:
    clean = _frames(0)
    generator = torch.Generator().manual_seed(7)
    noise = torch.randn(clean.shape, generator=generator)
    values = [ssim((clean + sigma * noise).clamp(0, 1), clean) for sigma in (0.0, 0.01, 0.05, 0.2)]
    assert values == sorted(values, reverse=True)
    assert values[0] == pytest.approx(1.0) and values[-1] < 0.8


def test_ssim_works_on_frames_smaller_than_the_window() -> None:
    a = _frames(0, shape=(1, 1, 6, 8, 3))
    assert ssim(a, a.clone()) == pytest.approx(1.0)
    assert ssim(a, _frames(1, shape=(1, 1, 6, 8, 3))) < 1.0


def test_attention_flops_formula() -> None:
    # The quality reference's anchor: Wan2.2 720p self-attention, 117 TFLOP per call.
    assert attention_flops(1, 40, 75_600, 75_600, 128) == pytest.approx(117.0e12, rel=0.01)


def test_call_error_agrees_with_the_single_metric_functions() -> None:
    generator = torch.Generator().manual_seed(3)
    y = torch.randn(1, 32, 2, 64, generator=generator)
    x = y + 0.01 * torch.randn(y.shape, generator=generator)
    error = call_error(x, y)
    assert error.cos_sim == pytest.approx(cosine_similarity(x, y), abs=1e-12)
    assert error.rel_l1 == pytest.approx(relative_l1(x, y), rel=1e-12)
    assert error.rmse == pytest.approx(rmse(x, y), rel=1e-12)
