"""Whole-image inference and scoring, shared by training, evaluation, promotion and dehaze.

Images of any size go through a backbone either whole, in overlapping tiles (bounded
memory for O-HAZE-sized photos) or downsampled-dehazed-upsampled. Conventions as in
``pipeline.data``: uint8 HxWx3 RGB arrays outside, float32 NCHW in [0,1] inside.
"""

from __future__ import annotations

import math
import os

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from ..data import PairIndex, to_tensor, to_uint8
from ..hardware import autocast
from .metrics import psnr, ssim

__all__ = ["STRATEGIES", "TILE_OVERLAP", "resolve_device", "set_threads", "dehaze_tensor", "dehaze_image", "centre_crop",
           "score_pairs"]

STRATEGIES = ("whole", "tile", "resize")
TILE_OVERLAP = 32  # pixels two neighbouring tiles share, blended so that no seam shows


def resolve_device(name: str) -> torch.device:
    """``auto`` picks CUDA when available; anything else is handed to torch.device."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={name!r} asked for CUDA but torch.cuda.is_available() is False")
    return device


def set_threads(threads: int | None, *, cpus: int | None = None) -> int:
    """Set torch's CPU threads: ``threads``, or by default ``cpus``; returns the count.

    ``cpus`` defaults to the CPUs this process may use (its affinity, which containers and
    ``taskset`` narrow), never more: extra threads only contend. A Ray trial passes its
    ``--cpus-per-trial``. Threads beside the crop loader workers do not contend with them
    because torch's threads sleep when idle (``OMP_WAIT_POLICY=PASSIVE``, set in
    ``pipeline/__init__.py``).
    """
    if threads is not None and threads < 1:
        raise ValueError(f"threads={threads}; expected a positive number of CPU threads")
    if cpus is None:
        cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    count = threads or cpus
    torch.set_num_threads(count)
    return count


def _tile_starts(length: int, tile: int, overlap: int) -> list[int]:
    if length <= tile:
        return [0]
    stride = tile - overlap
    count = math.ceil((length - tile) / stride) + 1
    return sorted({min(i * stride, length - tile) for i in range(count)})


def _tiled(model: nn.Module, x: torch.Tensor, tile: int, overlap: int) -> torch.Tensor:
    """Run ``model`` over overlapping tiles and blend them with a tent window (no seams)."""
    _, _, h, w = x.shape
    out = torch.zeros_like(x)
    norm = torch.zeros_like(x[:, :1])
    th, tw = min(tile, h), min(tile, w)
    ramp_h = torch.minimum(torch.arange(th) + 1, torch.arange(th).flip(0) + 1).clamp(max=overlap + 1)
    ramp_w = torch.minimum(torch.arange(tw) + 1, torch.arange(tw).flip(0) + 1).clamp(max=overlap + 1)
    window = (ramp_h[:, None] * ramp_w[None, :]).to(x)[None, None]
    for top in _tile_starts(h, th, overlap):
        for left in _tile_starts(w, tw, overlap):
            patch = model(x[:, :, top : top + th, left : left + tw])
            out[:, :, top : top + th, left : left + tw] += patch * window
            norm[:, :, top : top + th, left : left + tw] += window
    return out / norm


@torch.no_grad()
def dehaze_tensor(
    model: nn.Module, x: torch.Tensor, *, strategy: str = "whole", tile: int = 512, overlap: int = TILE_OVERLAP,
    precision: str = "fp32",
) -> torch.Tensor:
    """Dehaze (1,3,H,W) in [0,1] -> (1,3,H,W) in [0,1].

    ``tile`` splits images of more pixels than a ``tile`` x ``tile`` square into overlapping
    tiles (the bound is on memory, which follows the pixel count: a 550x413 SOTS image runs
    whole, in 96 ms instead of 234 ms as two 512 px tiles); ``resize`` shrinks the long side
    to ``tile``, dehazes, and upsamples the result (cheaper, softer). ``precision`` is the
    autocast of the forward passes (``pipeline.hardware``); the result is float32.
    """
    if strategy == "tile" and tile <= 2 * overlap:
        raise ValueError(f"--tile {tile} is too small for tiles that overlap by {overlap} px; "
                         f"expected at least {2 * overlap + 1}")
    if strategy == "resize" and tile < 1:
        raise ValueError(f"--tile {tile}: expected a positive long side for --strategy resize")
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown inference strategy {strategy!r}; expected one of {', '.join(STRATEGIES)}")
    with autocast(precision, x.device):
        if strategy == "whole" or (strategy == "tile" and x.shape[-2] * x.shape[-1] <= tile * tile):
            y = model(x)
        elif strategy == "tile":
            y = _tiled(model, x, tile, overlap)
        else:  # resize
            h, w = x.shape[-2:]
            scale = min(1.0, tile / max(h, w))
            small = F.interpolate(x, scale_factor=scale, mode="area") if scale < 1 else x
            y = model(small)
            if scale < 1:
                y = F.interpolate(y, size=(h, w), mode="bilinear", align_corners=False)
    return y.float().clamp(0, 1)


def dehaze_image(model: nn.Module, image: np.ndarray, device: torch.device, **kwargs: object) -> np.ndarray:
    """uint8 HxWx3 in, uint8 HxWx3 out, on ``device``; kwargs as for :func:`dehaze_tensor`."""
    return to_uint8(dehaze_tensor(model, to_tensor(image).to(device), **kwargs))


def centre_crop(image: np.ndarray, max_side: int | None) -> np.ndarray:
    """Centre crop HxW to at most ``max_side`` per side (None keeps the image whole)."""
    if max_side is None:
        return image
    h, w = image.shape[:2]
    top, left = max(0, (h - max_side) // 2), max(0, (w - max_side) // 2)
    return image[top : top + max_side, left : left + max_side]


@torch.no_grad()
def score_pairs(
    model: nn.Module | None,
    index: PairIndex,
    indices: list[int],
    device: torch.device,
    *,
    max_side: int | None = None,
    **kwargs: object,
) -> dict[str, list[float]]:
    """Per-image PSNR and SSIM of ``model``'s output (or of the hazy input when model is None).

    Pairs are read one at a time: memory holds one image pair whatever the set's size.
    """
    scores: dict[str, list[float]] = {"psnr": [], "ssim": []}
    for i in indices:
        hazy, clear = (centre_crop(a, max_side) for a in index.pair(i))
        x, y = to_tensor(hazy).to(device), to_tensor(clear).to(device)
        out = x if model is None else dehaze_tensor(model, x, **kwargs)
        scores["psnr"].append(float(psnr(out, y)[0]))
        scores["ssim"].append(float(ssim(out, y)[0]))
    return scores
