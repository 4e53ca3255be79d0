"""AOD-Net: All-in-One Dehazing Network.

Paper: B. Li, X. Peng, Z. Wang, J. Xu, D. Feng, "AOD-Net: All-in-One Dehazing Network",
ICCV 2017 (arXiv:1707.06543).
Origin: https://github.com/Boyiliee/AOD-Net (Caffe; the authors' PyTorch model sits in
"AOD-Net with PONO/model.py"). Licence: none stated in the origin repository; this file is
an independent re-implementation.

The K-estimation module is the paper's: five ReLU convs (1x1, 3x3, 5x5, 7x7, 3x3) with the
concatenations conv1|conv2 -> conv3, conv2|conv3 -> conv4, all four -> conv5, all with bias
(1,761 parameters at `width=3`), and the clean image is J = ReLU(K * I - K + b), b = 1.

Departures: `width` (channels of conv1..conv4, 3 in the paper) is a constructor argument so
smaller presets exist; conv5 always outputs 3 channels, one K per colour.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from ._original import OriginalFormat
from ._registry import register_backbone

__all__ = ["AODNet"]

# The PyTorch port's dehaze_net (net.py): e_conv1..5 are K-estimation's conv1..5, one for one.
ORIGINAL = OriginalFormat(
    repository="https://github.com/TheFairBear/PyTorch-Image-Dehazing",
    commit="not pinned (the repository was not available to inspect; names and forward from its published "
           "snapshots/dehazer.pth and the AOD-Net paper)",
    file="net.py (dehaze_net)",
    rules=((r"k_estimation\.conv(\d)\.(weight|bias)", r"e_conv\1.\2"),),
    notes="exact: the same five convs and J = ReLU(K * I - K + 1)",
)


class KEstimation(nn.Module):
    """Multi-scale K(x) module of AOD-Net: (B, 3, H, W) -> (B, 3, H, W), K >= 0."""

    def __init__(self, width: int = 3) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, width, 1)
        self.conv2 = nn.Conv2d(width, width, 3, padding=1)
        self.conv3 = nn.Conv2d(2 * width, width, 5, padding=2)
        self.conv4 = nn.Conv2d(2 * width, width, 7, padding=3)
        self.conv5 = nn.Conv2d(4 * width, 3, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x1 = F.relu(self.conv1(x))
        x2 = F.relu(self.conv2(x1))
        x3 = F.relu(self.conv3(torch.cat((x1, x2), dim=1)))
        x4 = F.relu(self.conv4(torch.cat((x2, x3), dim=1)))
        return F.relu(self.conv5(torch.cat((x1, x2, x3, x4), dim=1)))


@register_backbone(
    "aodnet",
    presets={
        "paper": {"width": 3},
        # The published network is already CPU-sized (1.7K parameters), so small == paper.
        "small": {"width": 3},
        "tiny": {"width": 2},
    },
    default_crop=240,
    source="https://github.com/Boyiliee/AOD-Net",
    paper="Li et al., AOD-Net: All-in-One Dehazing Network, ICCV 2017 (arXiv:1707.06543)",
    original=ORIGINAL,
)
class AODNet(nn.Module):
    """AOD-Net.

    Args:
        width: channels of the four inner K-estimation convs (paper: 3).
        b: the constant bias b of J = K * I - K + b (paper: 1).
    """

    def __init__(self, width: int = 3, b: float = 1.0) -> None:
        super().__init__()
        self.k_estimation = KEstimation(width)
        self.b = b

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        k = self.k_estimation(x)  # (B, 3, H, W)
        return F.relu(k * x - k + self.b)
