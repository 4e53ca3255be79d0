"""Reference dehazers that need no training: the dark channel prior.

K. He, J. Sun, X. Tang, "Single Image Haze Removal Using Dark Channel Prior", CVPR 2009,
with the transmission refined by the guided filter of K. He, J. Sun, X. Tang, "Guided
Image Filtering", ECCV 2010 (as the 2010 paper suggests in place of soft matting).

The 15x15 minimum filter is separable (a row pass then a column pass of scipy's running
minimum, twice as fast as numpy's sliding windows on a 550x413 image), and the guided
filter's box means come from cumulative sums, so their cost does not grow with the radius.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

__all__ = ["dark_channel", "atmospheric_light", "guided_filter", "dark_channel_prior"]

PATCH = 15  # the dark channel's window (He et al. 2009)
OMEGA = 0.95  # keep a little haze so far objects still look far
T0 = 0.1  # lower bound of t: keeps (I - A) / t from amplifying noise in dense haze
TOP_FRACTION = 0.001  # the brightest 0.1% of the dark channel are the most haze-opaque pixels
GUIDE_RADIUS_AT_600 = 60  # He et al. 2010 use r = 60 on images of about 600 px
GUIDE_EPS = 1e-3


def _min_filter(x: np.ndarray, size: int) -> np.ndarray:
    """Minimum over a size x size window of a 2-D array, edges padded by replication."""
    rows = ndimage.minimum_filter1d(x, size, axis=1, mode="nearest")
    return ndimage.minimum_filter1d(rows, size, axis=0, mode="nearest")


def dark_channel(image: np.ndarray, size: int = PATCH) -> np.ndarray:
    """min over the colour channels and a size x size window; HxWx3 float -> HxW."""
    return _min_filter(image.min(axis=2), size)


def atmospheric_light(image: np.ndarray, dark: np.ndarray) -> np.ndarray:
    """A (3,): among the brightest 0.1% of the dark channel, the pixel brightest in the input."""
    flat = image.reshape(-1, 3)
    k = max(1, int(dark.size * TOP_FRACTION))
    candidates = np.argpartition(dark.ravel(), -k)[-k:]
    return flat[candidates[np.argmax(flat[candidates].sum(axis=1))]]


def _box_mean(x: np.ndarray, r: int) -> np.ndarray:
    """Mean over the (2r+1)^2 window clipped at the borders, via 2-D cumulative sums."""
    h, w = x.shape
    c = np.zeros((h + 1, w + 1), dtype=np.float64)
    c[1:, 1:] = x.cumsum(0).cumsum(1)
    top, bottom = np.clip(np.arange(h) - r, 0, h), np.clip(np.arange(h) + r + 1, 0, h)
    left, right = np.clip(np.arange(w) - r, 0, w), np.clip(np.arange(w) + r + 1, 0, w)
    total = c[bottom][:, right] - c[top][:, right] - c[bottom][:, left] + c[top][:, left]
    area = (bottom - top)[:, None] * (right - left)[None, :]
    return total / area


def guided_filter(guide: np.ndarray, src: np.ndarray, radius: int, eps: float = GUIDE_EPS) -> np.ndarray:
    """Edge-preserving smoothing of ``src`` following the edges of the grey ``guide`` (both HxW)."""
    mean_i, mean_p = _box_mean(guide, radius), _box_mean(src, radius)
    cov_ip = _box_mean(guide * src, radius) - mean_i * mean_p
    var_i = _box_mean(guide * guide, radius) - mean_i * mean_i
    a = cov_ip / (var_i + eps)
    b = mean_p - a * mean_i
    return _box_mean(a, radius) * guide + _box_mean(b, radius)


def dark_channel_prior(image: np.ndarray) -> np.ndarray:
    """Dehaze a uint8 HxWx3 RGB image; returns float32 HxWx3 in [0, 1].

    t = 1 - omega * dark(I / A), refined by the guided filter (grey guide, radius 60 at a
    600 px short side, scaled with the image), then J = (I - A) / max(t, t0) + A.
    """
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"expected a uint8 HxWx3 image, got dtype {image.dtype} and shape {image.shape}")
    i = image.astype(np.float64) / 255
    airlight = atmospheric_light(i, dark_channel(i))
    transmission = 1 - OMEGA * dark_channel(i / np.maximum(airlight, 1e-6))
    radius = max(1, round(GUIDE_RADIUS_AT_600 * min(image.shape[:2]) / 600))
    transmission = guided_filter(i.mean(axis=2), transmission, radius)
    j = (i - airlight) / np.maximum(transmission, T0)[..., None] + airlight
    return np.clip(j, 0, 1).astype(np.float32)
