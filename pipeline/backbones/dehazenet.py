"""DehazeNet: an end-to-end system for single image haze removal.

Paper: B. Cai, X. Xu, K. Jia, C. Qing, D. Tao, "DehazeNet: An End-to-End System for Single
Image Haze Removal", IEEE TIP 25(11), 2016 (arXiv:1601.07661).
Origin: https://github.com/caibolun/DehazeNet (Caffe/MATLAB). Licence: not verified (the
origin repository was not available to inspect); this file is an independent
re-implementation.

Structure (transmission estimation, 8,305 parameters at paper size): feature extraction
(5x5 conv, 16 maps, maxout over groups of 4 -> 4 maps), multi-scale mapping (parallel
3x3, 5x5 and 7x7 convs, 16 maps each), local extremum (7x7 max pooling, stride 1), and
non-linear regression (6x6 conv to one map) with BReLU, i.e. t = clamp(., 0, 1).

Departures, so the network is image-to-image and trainable end to end on the L1 of J:
- every conv and the pooling keep the spatial size (replicate padding; the 6x6 kernel is
  padded 2 before and 3 after), so t is a per-pixel map rather than one value per 16x16
  patch;
- the haze is removed inside the forward pass, J = (I - A) / max(t, t0) + A with t0 = 0.1,
  where the atmospheric light A is estimated per image from the input alone (mean colour of
  the pixels with the brightest 0.1% of the dark channel, as in the dark channel prior) and
  detached, so gradients flow only through t;
- the regression bias starts at 0.5 (the paper draws weights from N(0, 0.001) with zero
  bias), so at initialisation t lies inside BReLU's linear range and gradients flow.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from ._original import OriginalFormat
from ._registry import register_backbone

__all__ = ["DehazeNet"]

# thuBingo/DehazeNet_Pytorch (DehazeNet-pytorch.py): conv1 is the 5x5 feature extraction, conv2..4 the
# 3x3, 5x5, 7x7 multi-scale convs (in that order), conv5 the 6x6 regression; shapes are the paper's.
ORIGINAL = OriginalFormat(
    repository="https://github.com/thuBingo/DehazeNet_Pytorch",
    commit="2dba861919f5e1c8d0b391e8a63879bd65f7c8cc",
    file="DehazeNet-pytorch.py (DehazeNet)",
    rules=(
        (r"transmission\.extract\.(weight|bias)", r"conv1.\1"),
        (r"transmission\.scales\.(\d)\.(weight|bias)", lambda m: f"conv{int(m[1]) + 2}.{m[2]}"),
        (r"transmission\.regress\.(weight|bias)", r"conv5.\1"),
    ),
    notes="weights equal, forward not: the port maps an ImageNet-normalised 16x16 patch to one t "
          "(unpadded convs) and removes the haze outside the network; here t is per pixel and J is computed inside",
)


def dark_channel(x: torch.Tensor, patch: int) -> torch.Tensor:
    """Per-pixel minimum over colour and a patch x patch window: (B, 3, H, W) -> (B, 1, H, W)."""
    min_rgb = x.amin(dim=1, keepdim=True)
    return -F.max_pool2d(-min_rgb, patch, stride=1, padding=patch // 2)


@torch.no_grad()
def estimate_atmospheric_light(
    x: torch.Tensor, patch: int = 15, fraction: float = 1e-3
) -> torch.Tensor:
    """A per image: mean colour of the pixels with the brightest `fraction` of the dark
    channel. (B, 3, H, W) -> (B, 3, 1, 1), no gradient."""
    x = x.detach()  # also drops forward-mode tangents: A is a constant of the input
    batch, channels = x.shape[:2]
    dark = dark_channel(x, patch).flatten(1)  # (B, H*W)
    k = max(1, round(fraction * dark.shape[1]))
    idx = dark.topk(k, dim=1).indices  # (B, k)
    pixels = x.flatten(2).gather(2, idx.unsqueeze(1).expand(batch, channels, k))  # (B, 3, k)
    return pixels.mean(dim=2).view(batch, channels, 1, 1)


class Maxout(nn.Module):
    """Maximum over consecutive groups of `group_size` channels: C -> C / group_size."""

    def __init__(self, group_size: int) -> None:
        super().__init__()
        self.group_size = group_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        return x.reshape(b, c // self.group_size, self.group_size, h, w).amax(dim=2)


class BReLU(nn.Module):
    """Bilateral ReLU: clamp to [0, 1] (hardtanh), with gradient 1 inside the range."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.hardtanh(x, 0.0, 1.0)


class TransmissionNet(nn.Module):
    """The DehazeNet CNN: hazy image (B, 3, H, W) -> transmission t (B, 1, H, W) in [0, 1]."""

    def __init__(
        self,
        features: int,
        maxout_group: int,
        scale_channels: int,
        pool_size: int,
        regression_kernel: int,
    ) -> None:
        super().__init__()
        if features % maxout_group:
            raise ValueError(f"features ({features}) must be a multiple of {maxout_group=}")
        reduced = features // maxout_group
        self.extract = nn.Conv2d(3, features, 5, padding=2, padding_mode="replicate")
        self.maxout = Maxout(maxout_group)
        self.scales = nn.ModuleList(
            nn.Conv2d(reduced, scale_channels, k, padding=k // 2, padding_mode="replicate")
            for k in (3, 5, 7)
        )
        self.pool_size = pool_size
        self.regression_kernel = regression_kernel
        self.regress = nn.Conv2d(3 * scale_channels, 1, regression_kernel)
        self.brelu = BReLU()
        nn.init.constant_(self.regress.bias, 0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.maxout(self.extract(x))  # (B, features / group, H, W)
        f = torch.cat([conv(f) for conv in self.scales], dim=1)  # (B, 3 * scale_channels, H, W)
        f = F.max_pool2d(f, self.pool_size, stride=1, padding=self.pool_size // 2)
        before = (self.regression_kernel - 1) // 2  # even kernels: one more pixel after
        after = self.regression_kernel - 1 - before
        f = F.pad(f, (before, after, before, after), mode="replicate")
        return self.brelu(self.regress(f))


@register_backbone(
    "dehazenet",
    presets={
        "paper": {"features": 16, "maxout_group": 4, "scale_channels": 16},
        # The published network is already CPU-sized (8.3K parameters), so small == paper.
        "small": {"features": 16, "maxout_group": 4, "scale_channels": 16},
        "tiny": {"features": 8, "maxout_group": 4, "scale_channels": 4},
    },
    default_crop=240,
    source="https://github.com/caibolun/DehazeNet",
    paper="Cai et al., DehazeNet: An End-to-End System for Single Image Haze Removal, "
    "IEEE TIP 2016 (arXiv:1601.07661)",
    original=ORIGINAL,
)
class DehazeNet(nn.Module):
    """DehazeNet with in-network haze removal.

    Args:
        features: maps of the 5x5 feature-extraction conv (paper: 16).
        maxout_group: maps per maxout unit (paper: 4, giving 4 maps).
        scale_channels: maps of each of the 3x3, 5x5, 7x7 multi-scale convs (paper: 16).
        pool_size: local-extremum max-pooling window (paper: 7).
        regression_kernel: kernel of the final regression conv (paper: 6).
        t0: lower bound on t when recovering J (0.1, the usual bound of the dark channel prior).
        dark_patch: dark-channel window used to estimate A (dark channel prior: 15).
    """

    def __init__(
        self,
        features: int = 16,
        maxout_group: int = 4,
        scale_channels: int = 16,
        pool_size: int = 7,
        regression_kernel: int = 6,
        t0: float = 0.1,
        dark_patch: int = 15,
    ) -> None:
        super().__init__()
        self.transmission = TransmissionNet(
            features, maxout_group, scale_channels, pool_size, regression_kernel
        )
        self.t0 = t0
        self.dark_patch = dark_patch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = self.transmission(x)  # (B, 1, H, W)
        a = estimate_atmospheric_light(x, self.dark_patch)  # (B, 3, 1, 1), detached
        return (x - a) / t.clamp(min=self.t0) + a
