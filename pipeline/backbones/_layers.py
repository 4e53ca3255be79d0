"""Small helpers shared by the backbones (padding for networks that downsample)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["pad_to_multiple", "crop_to"]


def pad_to_multiple(
    x: torch.Tensor, multiple: int, *, minimum: int = 0, mode: str = "reflect"
) -> torch.Tensor:
    """Pad (B, C, H, W) on the bottom and right so H and W are multiples of `multiple`
    and at least `minimum`; undo with `crop_to`."""
    height, width = x.shape[-2:]
    target_h = max(-(-height // multiple) * multiple, minimum)
    target_w = max(-(-width // multiple) * multiple, minimum)
    pad_h, pad_w = target_h - height, target_w - width
    if pad_h == 0 and pad_w == 0:
        return x
    # Reflect padding needs pad < size; fall back to replicate for inputs smaller than the pad.
    if mode == "reflect" and (pad_h >= height or pad_w >= width):
        mode = "replicate"
    return F.pad(x, (0, pad_w, 0, pad_h), mode=mode)


def crop_to(x: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Crop (B, C, H', W') back to the top-left (height, width) after `pad_to_multiple`."""
    return x[..., :height, :width]
