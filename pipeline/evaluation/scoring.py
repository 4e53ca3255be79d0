"""Scoring a model on a whole dataset in its native layout, beside two references.

Every image gets one row per method: the hazy input itself (the floor a dehazer must
clear), the dark channel prior (pipeline.baselines: no training) and the model. PSNR and
SSIM are computed at full resolution against the ground truth (pipeline.metrics). Images
larger than ``--tile`` go through the model in overlapping tiles (``tile``, the default) or
downsampled and upsampled back (``resize``), so the model's memory stays bounded.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import polars as pl
import torch
from tqdm import tqdm

from ..data import DataError, to_tensor
from ..data.layouts import PairRef, list_pairs, load_pairs
from ..files import atomic_write
from ..models import load_model, model_label
from .baselines import dark_channel_prior
from .inference import STRATEGIES, dehaze_tensor, resolve_device
from .metrics import psnr, ssim

__all__ = ["ROW_SCHEMA", "evaluate", "summarize", "write_rows"]

ROW_SCHEMA = {
    "image": pl.String,
    "scene": pl.String,
    "method": pl.String,
    "psnr": pl.Float64,
    "ssim": pl.Float64,
    "height": pl.Int32,
    "width": pl.Int32,
    "seconds": pl.Float64,
}

Method = Callable[[np.ndarray, torch.Tensor], torch.Tensor]  # (hazy uint8 HxWx3, hazy tensor) -> (1,3,H,W)


def _spread(pairs: list[PairRef], max_images: int | None) -> list[PairRef]:
    """At most ``max_images`` pairs, evenly spaced: the listing is grouped by scene, so its head is one scene."""
    if max_images is None or max_images >= len(pairs):
        return pairs
    if max_images < 1:
        raise ValueError(f"--max-images must be at least 1, got {max_images}")
    return [pairs[i] for i in np.linspace(0, len(pairs) - 1, max_images).round().astype(int)]


def _methods(model: torch.nn.Module, label: str, device: torch.device, strategy: str, tile: int) -> dict[str, Method]:
    def run_model(_: np.ndarray, x: torch.Tensor) -> torch.Tensor:
        return dehaze_tensor(model, x.to(device), strategy=strategy, tile=tile).cpu()

    def run_dcp(image: np.ndarray, _: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(dark_channel_prior(image)).permute(2, 0, 1)[None]

    return {"hazy": lambda _, x: x, "dcp": run_dcp, label: run_model}


def evaluate(
    model_path: str | os.PathLike,
    layout: str,
    root: str | os.PathLike,
    *,
    strategy: str = "tile",
    tile: int = 512,
    max_images: int | None = None,
    device: str = "auto",
    progress: bool = False,
) -> pl.DataFrame:
    """Per-image rows (image, scene, method, psnr, ssim, height, width, seconds) for hazy, dcp and the model."""
    if strategy not in STRATEGIES:
        raise ValueError(f"--strategy {strategy!r}; expected one of {', '.join(STRATEGIES)}")
    model, meta = load_model(model_path)
    dev = resolve_device(device)
    methods = _methods(model.to(dev), model_label(meta), dev, strategy, tile)
    listing = list_pairs(root, layout)
    if listing.problems:
        raise listing.problems[0]
    rows = []
    pairs = _spread(listing.pairs, max_images)
    # One pair decoded at a time (load_pairs, not read_pairs): full-size benchmarks need not fit in memory.
    for item in tqdm(load_pairs(pairs), total=len(pairs), desc="evaluate", unit="img", disable=not progress):
        if isinstance(item, DataError):
            raise item
        hazy, clear = to_tensor(item.hazy), to_tensor(item.clear)
        for name, method in methods.items():
            start = time.perf_counter()
            out = method(item.hazy, hazy)
            seconds = time.perf_counter() - start
            rows.append({"image": str(item.ref.hazy), "scene": item.ref.scene, "method": name,
                         "psnr": float(psnr(out, clear)[0]), "ssim": float(ssim(out, clear)[0]),
                         "height": hazy.shape[2], "width": hazy.shape[3], "seconds": seconds})
    return pl.DataFrame(rows, schema=ROW_SCHEMA)


def summarize(rows: pl.DataFrame) -> pl.DataFrame:
    """Mean PSNR, SSIM and seconds per method, in the order the methods first appear (references first)."""
    return rows.group_by("method", maintain_order=True).agg(
        images=pl.len(), psnr=pl.col("psnr").mean(), ssim=pl.col("ssim").mean(), seconds=pl.col("seconds").mean()
    )


def write_rows(rows: pl.DataFrame, path: str | os.PathLike) -> Path:
    """Write the per-image rows to ``path`` atomically; a folder is refused before any work, by name."""
    return atomic_write(path, rows.write_parquet)
