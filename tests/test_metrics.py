"""PSNR and SSIM: known values, identical images, agreement with scikit-image, error paths."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from skimage import data as skdata
from skimage.metrics import structural_similarity

from conftest import REALDATA
from pipeline.evaluation import metrics
from pipeline.evaluation.metrics import psnr, ssim


def test_psnr_of_a_known_mse() -> None:
    target = torch.full((2, 3, 8, 8), 0.5, dtype=torch.float64)
    pred = target.clone()
    pred[0] += 0.1  # MSE 0.01 -> 20 dB
    pred[1] -= 0.01  # MSE 1e-4 -> 40 dB
    values = psnr(pred, target)
    assert values.dtype == torch.float64 and values.shape == (2,)
    torch.testing.assert_close(values, torch.tensor([20.0, 40.0], dtype=torch.float64))


def test_psnr_clamps_and_is_infinite_for_identical_images() -> None:
    img = torch.rand(1, 3, 8, 8)
    assert math.isinf(psnr(img, img.clone()).item())
    assert math.isinf(psnr(img * 0 + 1.5, img * 0 + 1).item())  # clamped to 1 first


def test_ssim_of_identical_images_is_one() -> None:
    img = torch.rand(2, 3, 16, 16)
    values = ssim(img, img.clone())
    assert values.dtype == torch.float64 and values.shape == (2,)
    torch.testing.assert_close(values, torch.ones(2, dtype=torch.float64))


def _batch(img: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(img).permute(2, 0, 1)[None]  # HxWx3 -> (1, 3, H, W)


def test_ssim_agrees_with_scikit_image() -> None:
    clear = skdata.astronaut()[100:180, 150:246].astype(np.float64) / 255
    noisy = np.clip(clear + np.random.default_rng(0).normal(0, 0.08, clear.shape), 0, 1)
    expected = structural_similarity(noisy, clear, gaussian_weights=True, sigma=1.5, use_sample_covariance=False,
                                     channel_axis=2, data_range=1)
    got = ssim(_batch(noisy), _batch(clear)).item()
    assert 0.2 < expected < 0.95  # a non-trivial value
    assert got == pytest.approx(expected, abs=1e-3)


@pytest.mark.parametrize("metric", [psnr, ssim])
def test_shape_errors(metric) -> None:
    with pytest.raises(ValueError, match="same shape"):
        metric(torch.rand(1, 3, 16, 16), torch.rand(1, 3, 16, 15))
    with pytest.raises(ValueError, match=r"\(B, C, H, W\)"):
        metric(torch.rand(3, 16, 16), torch.rand(3, 16, 16))


def test_ssim_needs_eleven_pixels() -> None:
    with pytest.raises(ValueError, match="at least 11x11.*got 10x20"):
        ssim(torch.rand(1, 3, 20, 10), torch.rand(1, 3, 20, 10))


@pytest.mark.parametrize("fused_pixels", [metrics.SSIM_FUSED_PIXELS, 0], ids=["channels-together", "one-by-one"])
def test_ssim_is_the_definition_of_pytorch_msssim(fused_pixels: int, monkeypatch: pytest.MonkeyPatch) -> None:
    from pytorch_msssim import ssim as reference

    monkeypatch.setattr(metrics, "SSIM_FUSED_PIXELS", fused_pixels)
    x = torch.rand(2, 3, 40, 57, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    y = (0.6 * x + 0.3 * torch.rand(x.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64))
    expected = reference(x, y, data_range=1.0, size_average=False)
    torch.testing.assert_close(ssim(x, y, dtype=torch.float64), expected, atol=1e-6, rtol=0)
    torch.testing.assert_close(ssim(x, y), expected, atol=1e-5, rtol=0)


def _real_pairs() -> list[tuple[np.ndarray, np.ndarray]]:
    """Hazy/clear pairs of real photographs: the built-in data (always), SOTS-indoor when it is there."""
    from pipeline.data import load_builtin, read_index

    builtin = load_builtin()
    pairs = [builtin.pair(i) for i in range(0, len(builtin), 12)]
    if (REALDATA / "sots_indoor").is_dir():
        sots = read_index(REALDATA / "sots_indoor")
        pairs += [sots.pair(i) for i in range(0, len(sots), 50)]
    return pairs


def test_float32_ssim_matches_float64_on_real_images() -> None:
    for hazy, clear in _real_pairs():
        x, y = _batch(hazy.astype(np.float32) / 255), _batch(clear.astype(np.float32) / 255)
        assert abs(ssim(x, y).item() - ssim(x, y, dtype=torch.float64).item()) < 1e-4
