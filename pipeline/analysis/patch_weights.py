"""The paper's Fig. 7: the reweighter's weight for every crop of one image pair, drawn over the image.

    python -m pipeline.analyze --weights CKPT --hazy IMG --clear IMG --out weights.png
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from matplotlib import patheffects
from matplotlib.figure import Figure

from ..bild import build_reweighter, crop_log_weights
from ..checkpoints import load_checkpoint
from ..config import saved_config
from ..data import to_tensor
from ..data.images import decode_image
from .plots import save_figure

__all__ = ["patch_weights"]

Grid = tuple[int, int, int, int]  # top, left, rows, cols of the crop grid on the image


def _crop_grid(hazy: np.ndarray, clear: np.ndarray, crop: int, path: str) -> tuple[torch.Tensor, torch.Tensor, Grid]:
    """Every whole crop x crop cell of a centred grid: (hazy, clear) tensors (rows*cols,3,S,S) and the grid."""
    h, w = hazy.shape[:2]
    rows, cols = h // crop, w // crop
    if rows == 0 or cols == 0:
        raise ValueError(f"{path} is {w}x{h}, smaller than one {crop}x{crop} crop; pass a smaller --crop")
    top, left = (h - rows * crop) // 2, (w - cols * crop) // 2

    def cells(image: np.ndarray) -> torch.Tensor:
        t = to_tensor(image[top : top + rows * crop, left : left + cols * crop])[0]  # (3, rows*S, cols*S)
        t = t.unfold(1, crop, crop).unfold(2, crop, crop)  # (3, rows, cols, S, S)
        return t.permute(1, 2, 0, 3, 4).reshape(rows * cols, 3, crop, crop)

    return cells(hazy), cells(clear), (top, left, rows, cols)


def _draw_weights(hazy: np.ndarray, weights: np.ndarray, grid: Grid, crop: int, title: str) -> Figure:
    top, left, rows, cols = grid
    h, w = hazy.shape[:2]
    fig = Figure(figsize=(8, 8 * h / w + 0.6))
    ax = fig.add_subplot()
    ax.imshow(hazy)
    extent = (left, left + cols * crop, top + rows * crop, top)
    shown = ax.imshow(weights, extent=extent, cmap="inferno", alpha=0.45, interpolation="nearest")
    fontsize = max(4, min(12, 200 // max(rows, cols)))
    for r in range(rows):
        for c in range(cols):
            ax.text(left + (c + 0.5) * crop, top + (r + 0.5) * crop, f"{weights[r, c]:.2f}", ha="center",
                    va="center", color="white", fontsize=fontsize,
                    path_effects=[patheffects.withStroke(linewidth=2, foreground="black")])  # legible on any colour
    ax.set_axis_off()
    ax.set_title(title)
    fig.colorbar(shown, ax=ax, fraction=0.046, pad=0.02, label="crop weight (mean 1)")
    return fig


def patch_weights(
    checkpoint: str | os.PathLike,
    hazy: str | os.PathLike,
    clear: str | os.PathLike,
    out: str | os.PathLike,
    crop: int | None = None,
) -> np.ndarray:
    """Draw the reweighter's crop weights over the hazy image (the paper's Fig. 7); returns the (rows, cols) grid.

    The image pair is cut into a grid of training-size crops (``crop`` defaults to the
    checkpoint's ``dataset.crop``), all scored as one batch, and normalised as in training,
    so the weights have mean 1 over the grid.
    """
    state = load_checkpoint(checkpoint)
    if state["models"]["reweighter"] is None:
        raise ValueError(f"checkpoint {checkpoint} has no reweighter (mode {state['config']['mode']!r}); "
                         "patch weights exist only for checkpoints of mode bild or bild-train")
    cfg = saved_config(state["config"])
    reweighter = build_reweighter(cfg.bild)
    reweighter.load_state_dict(state["models"]["reweighter"])
    hazy_img, clear_img = decode_image(Path(hazy)), decode_image(Path(clear))
    if hazy_img.shape != clear_img.shape:
        raise ValueError(f"{hazy} is {hazy_img.shape[1]}x{hazy_img.shape[0]} but {clear} is "
                         f"{clear_img.shape[1]}x{clear_img.shape[0]}; expected a pair of the same size")
    crop = crop or int(cfg["dataset"]["crop"])
    hazy_cells, clear_cells, grid = _crop_grid(hazy_img, clear_img, crop, str(hazy))
    with torch.no_grad():
        scores = reweighter(hazy_cells, clear_cells)
        log_w = crop_log_weights(scores, temperature=cfg["bild"]["temperature"], kind=cfg["bild"]["weighting"])
    weights = log_w.exp().reshape(grid[2], grid[3]).numpy()
    title = f"{cfg['backbone']['name']} {cfg['mode']}, epoch {state['epoch']}: crop weights ({crop}px)"
    save_figure(_draw_weights(hazy_img, weights, grid, crop, title), Path(out))
    return weights
