"""Random aligned training crops, and conversions between uint8 arrays and tensors.

A crop is drawn in two halves: `CropSampler.draw` picks the pairs, windows and flips from
the caller's random generator using only the index's sizes (cheap, in the training
process), and `cut_crops` reads the pairs and cuts the windows (the costly half, which
`pipeline.data.loader` runs in worker processes). Splitting them keeps the random stream a
function of the generator alone, wherever the pixels are read.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .errors import CropTooLargeError, DataError
from .index import PairIndex

__all__ = ["CropSampler", "CropSpec", "cut_crops", "crops_to_tensor", "to_tensor", "to_uint8"]


def to_tensor(img: np.ndarray) -> torch.Tensor:
    """uint8 HxWx3 RGB array -> float32 tensor (1, 3, H, W) in [0, 1]."""
    if img.dtype != np.uint8 or img.ndim != 3 or img.shape[2] != 3:
        raise ValueError(f"expected a uint8 HxWx3 image, got dtype {img.dtype} and shape {img.shape}")
    # astype copies: arrays may be read-only (memory-mapped cache entries), which torch.from_numpy warns about.
    return torch.from_numpy(img.astype(np.float32) / 255).permute(2, 0, 1).unsqueeze(0).contiguous()


def to_uint8(tensor: torch.Tensor) -> np.ndarray:
    """Tensor (1, 3, H, W) or (3, H, W) in [0, 1] -> uint8 HxWx3 array (clamped, rounded)."""
    if tensor.dim() == 4 and tensor.shape[0] == 1:
        tensor = tensor[0]
    if tensor.dim() != 3 or tensor.shape[0] != 3:
        raise ValueError(f"expected a tensor of shape (1, 3, H, W) or (3, H, W), got {tuple(tensor.shape)}")
    scaled = tensor.detach().float().clamp(0, 1).mul(255).round().to(torch.uint8)
    return scaled.permute(1, 2, 0).cpu().numpy()


def crops_to_tensor(crops: torch.Tensor) -> torch.Tensor:
    """uint8 (n, S, S, 3) -> float32 (n, 3, S, S) in [0, 1], on the device the crops are on."""
    return crops.permute(0, 3, 1, 2).float().div_(255).contiguous()


@dataclass(frozen=True)
class CropSpec:
    """Where the n crops of one batch come from: pair index, window corner and flip of each."""

    pairs: np.ndarray  # (n,) int64, indices into the PairIndex
    tops: np.ndarray  # (n,) int64
    lefts: np.ndarray  # (n,) int64
    flips: np.ndarray  # (n,) bool


def cut_crops(index: PairIndex, spec: CropSpec, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Read each pair of ``spec`` and cut its window: (hazy, clear) uint8 arrays (n, S, S, 3)."""
    n = len(spec.pairs)
    hazy = np.empty((n, size, size, 3), np.uint8)
    clear = np.empty((n, size, size, 3), np.uint8)
    for k in range(n):
        h_img, c_img = index.pair(int(spec.pairs[k]))
        top, left = spec.tops[k], spec.lefts[k]
        window = (slice(top, top + size), slice(left, left + size))
        step = -1 if spec.flips[k] else 1
        hazy[k] = h_img[window][:, ::step]
        clear[k] = c_img[window][:, ::step]
    return hazy, clear


class CropSampler:
    """Draws random S x S crops from pairs of an index, the same window on hazy and clear.

    Random state lives only in the `numpy.random.Generator` passed to `draw`, so a caller
    that checkpoints its generator resumes the same crop sequence. Each call draws a fixed
    amount of randomness (index, top, left, flip per crop), whether or not flips are on.
    Flips are horizontal only: a vertical flip would put the sky at the bottom, which real
    hazy photos never show.
    """

    def __init__(self, index: PairIndex, indices: list[int], crop_size: int, *, flips: bool = False) -> None:
        if not indices:
            raise DataError(f"no pairs to crop from in dataset {index.name!r}; expected a non-empty list of indices")
        if crop_size < 1:
            raise ValueError(f"crop_size must be a positive number of pixels, got {crop_size}")
        self.indices = list(indices)
        self._pairs = np.asarray(self.indices, dtype=np.int64)
        too_small = np.flatnonzero(index.sizes[self._pairs].min(axis=1) < crop_size)
        if len(too_small):
            i = self.indices[too_small[0]]
            h, w = index.size(i)
            raise CropTooLargeError(
                f"crop {crop_size}x{crop_size} is larger than {index.hazy_path(i)} ({w}x{h}); "
                f"expected a crop no larger than every image (use a smaller crop_size)"
            )
        self.index = index
        self.crop_size = crop_size
        self.flips = flips

    def draw(self, n: int, rng: np.random.Generator) -> CropSpec:
        """Pick n crops (pairs uniformly with replacement, windows uniformly), reading no pixels."""
        s = self.crop_size
        picks = rng.integers(len(self.indices), size=n)
        u = rng.random((n, 3))  # top, left, flip
        pairs = self._pairs[picks]
        heights, widths = self.index.sizes[pairs].T
        return CropSpec(
            pairs=pairs,
            tops=(u[:, 0] * (heights - s + 1)).astype(np.int64),
            lefts=(u[:, 1] * (widths - s + 1)).astype(np.int64),
            flips=(u[:, 2] < 0.5) & self.flips,
        )

    def sample(self, n: int, rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """(hazy, clear) float32 tensors (n, 3, S, S) in [0, 1], read in this process."""
        _, hazy, clear = self.sample_with_pairs(n, rng)
        return hazy, clear

    def sample_with_pairs(self, n: int, rng: np.random.Generator) -> tuple[list[int], torch.Tensor, torch.Tensor]:
        """Like `sample`, with the index of each crop's pair first (for per-pair analysis)."""
        spec = self.draw(n, rng)
        hazy, clear = cut_crops(self.index, spec, self.crop_size)
        return spec.pairs.tolist(), crops_to_tensor(torch.from_numpy(hazy)), crops_to_tensor(torch.from_numpy(clear))
