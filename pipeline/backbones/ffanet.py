"""FFA-Net: Feature Fusion Attention Network for single image dehazing.

Paper: X. Qin, Z. Wang, Y. Bai, X. Xie, H. Jia, "FFA-Net: Feature Fusion Attention Network
for Single Image Dehazing", AAAI 2020 (arXiv:1911.07559).
Origin: https://github.com/zhilin007/FFA-Net (net/models/FFA.py). Licence: none stated in
the origin repository; this file is an independent re-implementation.

Structure: a 3x3 conv, `groups` groups of `blocks` feature-attention blocks (conv, ReLU,
local residual, conv, channel attention, pixel attention, residual) each closed by a conv
and a group residual, channel attention over the concatenated group outputs to weight
their sum, pixel attention, two 3x3 convs, and the global residual out = x + net(x).
Paper size: 3 groups x 19 blocks, 64 channels (4.46M parameters).

Departures: the original normalises the hazy input outside the network (mean
(0.64, 0.6, 0.58), std (0.14, 0.15, 0.152)) and adds the *normalised* input as global
residual; here the normalisation happens inside and the residual adds the [0, 1] input, so
the network is [0, 1] in and out. Any number of groups is allowed (the original asserts 3).
``global_residual="normalised"`` adds the normalised input as the original does: an imported
original checkpoint (``python -m pipeline.models import``) is built that way and computes
what the original computes.
"""

from __future__ import annotations

import re

import torch
import torch.nn as nn
import torch.nn.functional as F

from ._original import OriginalFormat
from ._registry import register_backbone

__all__ = ["FFANet"]

GLOBAL_RESIDUALS = ("input", "normalised")


def _group_block(m: re.Match[str], inner: str) -> str:
    return f"g{int(m[1]) + 1}.gp.{m[2]}.{inner}"


# zhilin007/FFA-Net (net/models/FFA.py): groups g1..g3 of Sequential gp (blocks, then the closing conv),
# calayer.ca / palayer.pa Sequentials (conv at 0 and 2), the fusion attention ca, pre and post Sequentials.
ORIGINAL = OriginalFormat(
    repository="https://github.com/zhilin007/FFA-Net",
    commit="9b4047c2e3bd167411dde461b090a861dd9069dc",
    file="net/models/FFA.py (FFA); checkpoints are {'model': state_dict} saved from DataParallel",
    rules=(
        (r"pre\.(weight|bias)", r"pre.0.\1"),
        (r"body\.(\d+)\.body\.(\d+)\.(conv[12]\.(?:weight|bias))", lambda m: _group_block(m, m[3])),
        (r"body\.(\d+)\.body\.(\d+)\.ca\.fc([12])\.(weight|bias)",
         lambda m: _group_block(m, f"calayer.ca.{2 * int(m[3]) - 2}.{m[4]}")),
        (r"body\.(\d+)\.body\.(\d+)\.pa\.fc([12])\.(weight|bias)",
         lambda m: _group_block(m, f"palayer.pa.{2 * int(m[3]) - 2}.{m[4]}")),
        (r"body\.(\d+)\.body\.(\d+)\.(weight|bias)", lambda m: _group_block(m, m[3])),
        (r"fusion\.([13])\.(weight|bias)", r"ca.\1.\2"),
        (r"pa\.fc([12])\.(weight|bias)", lambda m: f"palayer.pa.{2 * int(m[1]) - 2}.{m[2]}"),
        (r"post\.([01])\.(weight|bias)", r"post.\1.\2"),
    ),
    kwargs={"global_residual": "normalised"},
    notes="exact with global_residual=normalised (the original's residual adds its normalised input)",
)

# Statistics of RESIDE hazy images used by the origin repository's data loader.
_HAZY_MEAN = (0.64, 0.6, 0.58)
_HAZY_STD = (0.14, 0.15, 0.152)


def _conv(in_ch: int, out_ch: int, kernel_size: int) -> nn.Conv2d:
    return nn.Conv2d(in_ch, out_ch, kernel_size, padding=kernel_size // 2)


class ChannelAttention(nn.Module):
    """x * sigmoid(MLP(avgpool(x))), one weight per channel."""

    def __init__(self, channels: int, reduction: int = 8) -> None:
        super().__init__()
        hidden = max(1, channels // reduction)
        self.fc1 = nn.Conv2d(channels, hidden, 1)
        self.fc2 = nn.Conv2d(hidden, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = F.adaptive_avg_pool2d(x, 1)  # (B, C, 1, 1)
        return x * torch.sigmoid(self.fc2(F.relu(self.fc1(w))))


class PixelAttention(nn.Module):
    """x * sigmoid(MLP(x)) with a 1x1-conv MLP, one weight per pixel."""

    def __init__(self, channels: int, reduction: int = 8) -> None:
        super().__init__()
        hidden = max(1, channels // reduction)
        self.fc1 = nn.Conv2d(channels, hidden, 1)
        self.fc2 = nn.Conv2d(hidden, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(self.fc2(F.relu(self.fc1(x))))  # weight (B, 1, H, W)


class FABlock(nn.Module):
    """Feature-attention block: conv-ReLU + local residual, conv, CA, PA, residual."""

    def __init__(self, dim: int, kernel_size: int = 3) -> None:
        super().__init__()
        self.conv1 = _conv(dim, dim, kernel_size)
        self.conv2 = _conv(dim, dim, kernel_size)
        self.ca = ChannelAttention(dim)
        self.pa = PixelAttention(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        res = F.relu(self.conv1(x)) + x
        res = self.pa(self.ca(self.conv2(res)))
        return res + x


class FAGroup(nn.Module):
    """`blocks` feature-attention blocks and a conv, wrapped in a residual."""

    def __init__(self, dim: int, blocks: int, kernel_size: int = 3) -> None:
        super().__init__()
        self.body = nn.Sequential(
            *(FABlock(dim, kernel_size) for _ in range(blocks)),
            _conv(dim, dim, kernel_size),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x) + x


@register_backbone(
    "ffanet",
    presets={
        "paper": {"groups": 3, "blocks": 19, "dim": 64},
        "small": {"groups": 1, "blocks": 3, "dim": 32},
        "tiny": {"groups": 1, "blocks": 1, "dim": 8},
    },
    default_crop=240,
    source="https://github.com/zhilin007/FFA-Net",
    paper="Qin et al., FFA-Net: Feature Fusion Attention Network for Single Image Dehazing, "
    "AAAI 2020 (arXiv:1911.07559)",
    original=ORIGINAL,
)
class FFANet(nn.Module):
    """FFA-Net.

    Args:
        groups: number of block groups whose outputs are fused (paper: 3).
        blocks: feature-attention blocks per group (paper: 19).
        dim: feature channels (paper: 64).
        kernel_size: conv kernel size (paper: 3).
        fusion_reduction: channel reduction of the attention that fuses the groups (paper: 16).
        global_residual: what the global residual adds: the [0, 1] ``input`` (trains from scratch
            here), or the ``normalised`` input, as the original does (its imported weights need it).
    """

    def __init__(
        self,
        groups: int = 3,
        blocks: int = 19,
        dim: int = 64,
        kernel_size: int = 3,
        fusion_reduction: int = 16,
        global_residual: str = "input",
    ) -> None:
        super().__init__()
        if global_residual not in GLOBAL_RESIDUALS:
            raise ValueError(f"global_residual={global_residual!r}; expected one of {', '.join(GLOBAL_RESIDUALS)}")
        self.global_residual = global_residual
        self.groups, self.dim = groups, dim
        self.pre = _conv(3, dim, kernel_size)
        self.body = nn.ModuleList(FAGroup(dim, blocks, kernel_size) for _ in range(groups))
        hidden = max(1, dim // fusion_reduction)
        self.fusion = nn.Sequential(
            nn.AdaptiveAvgPool2d(1),
            nn.Conv2d(dim * groups, hidden, 1),
            nn.ReLU(),
            nn.Conv2d(hidden, dim * groups, 1),
            nn.Sigmoid(),
        )
        self.pa = PixelAttention(dim)
        self.post = nn.Sequential(_conv(dim, dim, kernel_size), _conv(dim, 3, kernel_size))

    def _normalise(self, x: torch.Tensor) -> torch.Tensor:
        # Plain constants, not buffers: the network keeps no state beyond its parameters.
        mean = x.new_tensor(_HAZY_MEAN).view(1, 3, 1, 1)
        std = x.new_tensor(_HAZY_STD).view(1, 3, 1, 1)
        return (x - mean) / std

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        normalised = self._normalise(x)
        h = self.pre(normalised)
        feats = []
        for group in self.body:
            h = group(h)
            feats.append(h)
        stacked = torch.stack(feats, dim=1)  # (B, G, C, H, W)
        w = self.fusion(torch.cat(feats, dim=1))  # (B, G*C, 1, 1)
        fused = (w.view(-1, self.groups, self.dim, 1, 1) * stacked).sum(dim=1)
        residual = normalised if self.global_residual == "normalised" else x
        return residual + self.post(self.pa(fused))
