"""Error metrics between a quantized output and its native reference.

Per attention call (formulas from docs/report-and-calibrate.md and the quality reference), over the
flattened tensors, `x` the FP8 output and `y` the native (reference) output of the same call inputs:

- cosine similarity  `sum(x*y) / (||x|| * ||y||)`
- relative L1        `sum|x - y| / sum|y|`
- RMSE               `sqrt(mean((x - y)^2))`

End to end, on decoded frames in [0, 1] (`data_range` 1.0):

- PSNR  `10 * log10(data_range^2 / MSE)`, capped at `PSNR_CAP_DB`: identical outputs (MSE = 0, infinite
  PSNR) give a finite number JSON can hold, and so does any difference too small to matter (> 100 dB).
  Whether frames are bit-identical is reported separately (`identical` in a report).
- SSIM  Wang et al. 2004 with an 11x11 Gaussian window (sigma 1.5), K1 = 0.01, K2 = 0.03, computed per frame
  and per channel over the "valid" region (no padding) and averaged: the constants of the paper and of
  scikit-image's `gaussian_weights=True` mode.

All reductions run in float64 on the tensors' device: outputs of a real Wan call hold ~4e8 elements, where
float32 sums lose the 1e-4-level differences these metrics exist to show.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

# 100 dB (RMS error 1e-5 of the range): far above the 30 dB "near lossless" mark and a round number that reads
# as "indistinguishable" in a table. An exactly zero MSE (infinite PSNR) and anything above 100 dB report 100.
PSNR_CAP_DB = 100.0

SSIM_WINDOW = 11
SSIM_SIGMA = 1.5
SSIM_K1 = 0.01
SSIM_K2 = 0.03


@dataclass(frozen=True)
class CallError:
    """The error of one quantized call against the native output of the same inputs."""

    cos_sim: float
    rel_l1: float
    rmse: float

    def to_dict(self) -> dict[str, float]:
        return {"cos_sim": self.cos_sim, "rel_l1": self.rel_l1, "rmse": self.rmse}


def _flat64(t: torch.Tensor) -> torch.Tensor:
    return t.detach().reshape(-1).to(torch.float64)


def cosine_similarity(x: torch.Tensor, y: torch.Tensor) -> float:
    """`sum(x*y) / (||x|| ||y||)`; 1.0 when both are all zero (identical), 0.0 when only one is."""
    a, b = _flat64(x), _flat64(y)
    na, nb = torch.linalg.vector_norm(a), torch.linalg.vector_norm(b)
    if na == 0 or nb == 0:
        return 1.0 if bool(na == nb) else 0.0
    # Clamp: rounding can push an identical pair a hair above 1.
    return float(torch.clamp(torch.dot(a, b) / (na * nb), -1.0, 1.0))


def relative_l1(x: torch.Tensor, y: torch.Tensor) -> float:
    """`sum|x - y| / sum|y|` with `y` the reference; 0.0 for identical tensors, inf if y is zero and x is not."""
    a, b = _flat64(x), _flat64(y)
    num = torch.sum(torch.abs(a - b))
    den = torch.sum(torch.abs(b))
    if den == 0:
        return 0.0 if num == 0 else math.inf
    return float(num / den)


def rmse(x: torch.Tensor, y: torch.Tensor) -> float:
    """`sqrt(mean((x - y)^2))`."""
    a, b = _flat64(x), _flat64(y)
    return float(torch.sqrt(torch.mean((a - b) ** 2)))


def call_error(x: torch.Tensor, y: torch.Tensor) -> CallError:
    """All three per-call metrics of `x` (quantized) against `y` (native). Shapes must match.

    Same formulas as the functions above, computed from one float64 copy of each tensor: this runs on every
    attention call of a calibration, where converting each tensor three times was a tenth of the cost.
    """
    if x.shape != y.shape:
        raise ValueError(f"cannot compare outputs of shapes {tuple(x.shape)} and {tuple(y.shape)}")
    a, b = _flat64(x), _flat64(y)
    diff = a - b
    norms = torch.stack([torch.linalg.vector_norm(a), torch.linalg.vector_norm(b)])
    sums = torch.stack([torch.dot(a, b), diff.abs().sum(), b.abs().sum(), torch.dot(diff, diff)]).tolist()
    na, nb = norms.tolist()
    dot, l1_diff, l1_ref, squared = sums
    if na == 0 or nb == 0:
        cos = 1.0 if na == nb else 0.0
    else:
        cos = min(1.0, max(-1.0, dot / (na * nb)))
    if l1_ref == 0:
        rel = 0.0 if l1_diff == 0 else math.inf
    else:
        rel = l1_diff / l1_ref
    return CallError(cos_sim=cos, rel_l1=rel, rmse=math.sqrt(squared / a.numel()))


def psnr(x: torch.Tensor, y: torch.Tensor, *, data_range: float = 1.0) -> float:
    """PSNR in dB of `x` against `y`, capped at PSNR_CAP_DB (identical inputs, or a difference below 1e-5 RMS)."""
    if x.shape != y.shape:
        raise ValueError(f"cannot compare frames of shapes {tuple(x.shape)} and {tuple(y.shape)}")
    mse = float(torch.mean((_flat64(x) - _flat64(y)) ** 2))
    if mse == 0.0:
        return PSNR_CAP_DB
    return min(PSNR_CAP_DB, 10.0 * math.log10(data_range**2 / mse))


def psnr_is_capped(value: float) -> bool:
    return value >= PSNR_CAP_DB


def _gaussian_window(size: int, sigma: float, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    coords = torch.arange(size, dtype=dtype, device=device) - (size - 1) / 2.0
    g = torch.exp(-(coords**2) / (2.0 * sigma**2))
    g = g / g.sum()
    return torch.outer(g, g)


def ssim(x: torch.Tensor, y: torch.Tensor, *, data_range: float = 1.0) -> float:
    """Mean SSIM of `x` against `y`, images laid out (..., H, W, C) (diffusers' numpy frame layout).

    Each (frame, channel) plane is compared separately and the SSIM maps are averaged. Frames smaller than
    the 11-pixel window use the largest odd window that fits (sigma scaled with it), so tiny test videos
    still get a defined value; this is stated in docs/report-and-calibrate.md.
    """
    if x.shape != y.shape:
        raise ValueError(f"cannot compare frames of shapes {tuple(x.shape)} and {tuple(y.shape)}")
    if x.dim() < 3:
        raise ValueError(f"SSIM expects frames shaped (..., H, W, C), got {tuple(x.shape)}")
    height, width, channels = x.shape[-3:]
    # (..., H, W, C) -> (N, 1, H, W): one plane per frame and channel.
    def planes(t: torch.Tensor) -> torch.Tensor:
        return t.detach().to(torch.float64).reshape(-1, height, width, channels).permute(0, 3, 1, 2).reshape(
            -1, 1, height, width
        )

    a, b = planes(x), planes(y)
    size = min(SSIM_WINDOW, height, width)
    if size % 2 == 0:
        size -= 1
    sigma = SSIM_SIGMA * size / SSIM_WINDOW
    window = _gaussian_window(size, sigma, a.dtype, a.device)[None, None]
    c1 = (SSIM_K1 * data_range) ** 2
    c2 = (SSIM_K2 * data_range) ** 2

    mu_a = F.conv2d(a, window)
    mu_b = F.conv2d(b, window)
    var_a = F.conv2d(a * a, window) - mu_a**2
    var_b = F.conv2d(b * b, window) - mu_b**2
    cov = F.conv2d(a * b, window) - mu_a * mu_b
    ssim_map = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2))
    return float(ssim_map.mean())
