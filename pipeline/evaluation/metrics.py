"""Image-quality metrics: PSNR and SSIM on batches of RGB images.

Inputs: tensors of shape (B, C, H, W), channel order RGB as everywhere in the
pipeline, values in [0, 1] (anything outside is clamped first, as it would be
when saved). Data range 1.0, full RGB (no Y channel, no border crop); one value per
image, returned as a float64 tensor of shape (B,).

- `psnr`: 10 log10(1 / MSE), computed in float64 (one pass, cheap); +inf for identical images.
- `ssim`: Wang et al. 2004 with an 11x11 Gaussian window (sigma 1.5), K1 = 0.01,
  K2 = 0.03, averaged over valid window positions and channels: the definition of
  `pytorch_msssim.ssim`, and of `skimage.metrics.structural_similarity(...,
  gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=1)`
  (tests/test_metrics.py checks both). Computed in float32, with the five local
  statistics of all channels filtered in one pair of separable convolutions: on a
  550x413 image, 18-60 ms on the project's 2-core CPU against 47-107 ms for
  pytorch_msssim in float32 and 93-152 ms in float64 (docs/scale.md). Images need at
  least 11 pixels per side.
"""

from __future__ import annotations

import torch
from torch.nn import functional as F

__all__ = ["psnr", "ssim"]

SSIM_WINDOW = 11
SSIM_SIGMA = 1.5
SSIM_K = (0.01, 0.03)
# Above this many pixels per image the channels are filtered one at a time: the five stacked
# statistics of all channels of a 13-megapixel O-HAZE photo would hold about 0.8 GB.
SSIM_FUSED_PIXELS = 4_000_000


def _prepare(pred: torch.Tensor, target: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    if pred.shape != target.shape:
        raise ValueError(f"pred and target must have the same shape, got {tuple(pred.shape)} and {tuple(target.shape)}")
    if pred.dim() != 4:
        raise ValueError(f"expected images of shape (B, C, H, W), got {tuple(pred.shape)}")
    return pred.detach().to(dtype).clamp(0, 1), target.detach().to(dtype).clamp(0, 1)


def psnr(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """PSNR in dB per image, float64 tensor (B,); data range 1.0; inf where pred == target."""
    pred, target = _prepare(pred, target, torch.float64)
    mse = (pred - target).pow(2).mean(dim=(1, 2, 3))
    return 10 * torch.log10(1 / mse)


def _gaussian_window(dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    coords = torch.arange(SSIM_WINDOW, dtype=dtype, device=device) - SSIM_WINDOW // 2
    window = torch.exp(-(coords**2) / (2 * SSIM_SIGMA**2))
    return window / window.sum()


def _local_means(maps: torch.Tensor, window: torch.Tensor) -> torch.Tensor:
    """Gaussian-weighted means over every valid 11x11 window, of each channel of ``maps``: two 1-D passes."""
    c = maps.shape[1]
    rows = F.conv2d(maps, window.view(1, 1, 1, -1).expand(c, 1, 1, SSIM_WINDOW), groups=c)
    return F.conv2d(rows, window.view(1, 1, -1, 1).expand(c, 1, SSIM_WINDOW, 1), groups=c)


def _ssim_per_channel(x: torch.Tensor, y: torch.Tensor, window: torch.Tensor) -> torch.Tensor:
    """Mean SSIM per image and channel (B, C) of ``x`` against ``y``."""
    c1, c2 = SSIM_K[0] ** 2, SSIM_K[1] ** 2
    stats = _local_means(torch.cat([x, y, x * x, y * y, x * y], dim=1), window)
    mu_x, mu_y, xx, yy, xy = stats.split(x.shape[1], dim=1)
    var_x, var_y, cov = xx - mu_x * mu_x, yy - mu_y * mu_y, xy - mu_x * mu_y
    luminance = (2 * mu_x * mu_y + c1) / (mu_x * mu_x + mu_y * mu_y + c1)
    structure = (2 * cov + c2) / (var_x + var_y + c2)
    return (luminance * structure).flatten(2).mean(-1)


def ssim(pred: torch.Tensor, target: torch.Tensor, *, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """SSIM per image, float64 tensor (B,); 11x11 Gaussian window, sigma 1.5, data range 1.0.

    Computed in ``dtype`` (float32; float64 is the reference the tests compare it with).
    """
    pred, target = _prepare(pred, target, dtype)
    if min(pred.shape[-2:]) < SSIM_WINDOW:
        raise ValueError(
            f"SSIM needs images of at least {SSIM_WINDOW}x{SSIM_WINDOW} pixels (its window), "
            f"got {pred.shape[-1]}x{pred.shape[-2]}"
        )
    window = _gaussian_window(dtype, pred.device)
    group = pred.shape[1] if pred.shape[-2] * pred.shape[-1] <= SSIM_FUSED_PIXELS else 1
    per_channel = [_ssim_per_channel(pred[:, k:k + group], target[:, k:k + group], window)
                   for k in range(0, pred.shape[1], group)]
    return torch.cat(per_channel, dim=1).mean(dim=1).double()
