"""Random aligned training crops, and conversions between uint8 arrays and tensors."""

from __future__ import annotations

import numpy as np
import torch

from .errors import CropTooLargeError, DataError
from .store import PairStore

__all__ = ["CropSampler", "to_tensor", "to_uint8"]


def to_tensor(img: np.ndarray) -> torch.Tensor:
    """uint8 HxWx3 RGB array -> float32 tensor (1, 3, H, W) in [0, 1]."""
    if img.dtype != np.uint8 or img.ndim != 3 or img.shape[2] != 3:
        raise ValueError(f"expected a uint8 HxWx3 image, got dtype {img.dtype} and shape {img.shape}")
    # astype copies: store arrays may be read-only (Ray's object store), which torch.from_numpy warns about.
    return torch.from_numpy(img.astype(np.float32) / 255).permute(2, 0, 1).unsqueeze(0).contiguous()


def to_uint8(tensor: torch.Tensor) -> np.ndarray:
    """Tensor (1, 3, H, W) or (3, H, W) in [0, 1] -> uint8 HxWx3 array (clamped, rounded)."""
    if tensor.dim() == 4 and tensor.shape[0] == 1:
        tensor = tensor[0]
    if tensor.dim() != 3 or tensor.shape[0] != 3:
        raise ValueError(f"expected a tensor of shape (1, 3, H, W) or (3, H, W), got {tuple(tensor.shape)}")
    scaled = tensor.detach().float().clamp(0, 1).mul(255).round().to(torch.uint8)
    return scaled.permute(1, 2, 0).cpu().numpy()


class CropSampler:
    """Draws random S x S crops from pairs of a store, the same window on hazy and clear.

    Random state lives only in the `numpy.random.Generator` passed to `sample`, so a
    caller that checkpoints its generator resumes the same crop sequence. Each call
    draws a fixed amount of randomness (index, top, left, flip per crop), whether or
    not flips are on. Flips are horizontal only: a vertical flip would put the sky
    at the bottom, which real hazy photos never show.
    """

    def __init__(self, store: PairStore, indices: list[int], crop_size: int, *, flips: bool = False) -> None:
        if not indices:
            raise DataError(f"no pairs to crop from in dataset {store.name!r}; expected a non-empty list of indices")
        if crop_size < 1:
            raise ValueError(f"crop_size must be a positive number of pixels, got {crop_size}")
        for i in indices:
            h, w = store.hazy[i].shape[:2]
            if crop_size > min(h, w):
                raise CropTooLargeError(
                    f"crop {crop_size}x{crop_size} is larger than {store.hazy_paths[i]} ({w}x{h}); "
                    f"expected a crop no larger than every image (use a smaller crop_size)"
                )
        self.store = store
        self.indices = list(indices)
        self.crop_size = crop_size
        self.flips = flips

    def sample(self, n: int, rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """(hazy, clear) float32 tensors (n, 3, S, S) in [0, 1]; pairs drawn uniformly with replacement."""
        _, hazy, clear = self.sample_with_pairs(n, rng)
        return hazy, clear

    def sample_with_pairs(self, n: int, rng: np.random.Generator) -> tuple[list[int], torch.Tensor, torch.Tensor]:
        """Like `sample`, with the store index of each crop's pair first (for per-pair analysis)."""
        s = self.crop_size
        picks = rng.integers(len(self.indices), size=n)
        u = rng.random((n, 3))  # top, left, flip
        hazy = np.empty((n, s, s, 3), np.uint8)
        clear = np.empty((n, s, s, 3), np.uint8)
        for k in range(n):
            h_img, c_img = self.store.pair(self.indices[picks[k]])
            h, w = h_img.shape[:2]
            top, left = int(u[k, 0] * (h - s + 1)), int(u[k, 1] * (w - s + 1))
            window = (slice(top, top + s), slice(left, left + s))
            step = -1 if self.flips and u[k, 2] < 0.5 else 1
            hazy[k] = h_img[window][:, ::step]
            clear[k] = c_img[window][:, ::step]
        return [self.indices[p] for p in picks], _batch(hazy), _batch(clear)


def _batch(crops: np.ndarray) -> torch.Tensor:
    # (n, S, S, 3) uint8 -> (n, 3, S, S) float32 in [0, 1]
    return torch.from_numpy(crops).permute(0, 3, 1, 2).float().div_(255).contiguous()
