"""GridDehazeNet: attention-based multi-scale network for image dehazing.

Paper: X. Liu, Y. Ma, Z. Shi, J. Chen, "GridDehazeNet: Attention-Based Multi-Scale Network
for Image Dehazing", ICCV 2019 (arXiv:1908.03245).
Origin: https://github.com/proteus1991/GridDehazeNet (model.py, residual_dense_block.py).
Licence: none stated in the origin repository; this file is an independent
re-implementation.

Structure: pre-processing (3x3 conv + residual dense block, RDB), a backbone grid of
`height` rows (scales) x `width` columns of RDBs, where the first half of the columns
carries stride-2 downsampling blocks from each row to the next coarser one and the second
half carries upsampling blocks back, every two-input node fusing its inputs with learned
per-channel attention weights (a * rdb_path + b * resample_path, initialised to 1), and
post-processing (RDB + 3x3 conv + ReLU). Paper size: height 3, width 6, 4 dense layers,
growth rate 16, 16 channels (about 0.96M parameters). No global residual (as the original).

Departures: the attention weights are one (2, channels) parameter per fusion node instead
of one shared (height, width, 2, max_channels) tensor of which only a slice is used, so the
count is slightly below the original's (no unused weights). Inputs are reflect-padded to a
multiple of 2**(height - 1) and cropped back.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from ._layers import crop_to, pad_to_multiple
from ._original import OriginalFormat, Packed
from ._registry import register_backbone

__all__ = ["GridDehazeNet"]


class ResidualDenseBlock(nn.Module):
    """RDB: densely connected conv-ReLU layers, a 1x1 fusion conv, and a residual."""

    def __init__(self, channels: int, num_layers: int, growth_rate: int) -> None:
        super().__init__()
        self.layers = nn.ModuleList(
            nn.Conv2d(channels + i * growth_rate, growth_rate, 3, padding=1)
            for i in range(num_layers)
        )
        self.fuse = nn.Conv2d(channels + num_layers * growth_rate, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feats = x
        for layer in self.layers:
            feats = torch.cat((feats, F.relu(layer(feats))), dim=1)
        return self.fuse(feats) + x


class DownSample(nn.Module):
    """Halve the resolution and double the channels: 3x3 stride-2 conv, 3x3 conv, ReLUs."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, stride=2, padding=1)
        self.conv2 = nn.Conv2d(channels, 2 * channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.conv2(F.relu(self.conv1(x))))


class UpSample(nn.Module):
    """Double the resolution and halve the channels: 3x3 stride-2 deconv, 3x3 conv, ReLUs."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        # output_padding=1 gives exactly 2x, which the padding to 2**(height-1) guarantees.
        self.deconv = nn.ConvTranspose2d(
            channels, channels, 3, stride=2, padding=1, output_padding=1
        )
        self.conv = nn.Conv2d(channels, channels // 2, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.conv(F.relu(self.deconv(x))))


class AttentionFusion(nn.Module):
    """a * x_rdb + b * x_resampled with learned per-channel a, b (initialised to 1)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(2, channels))

    def forward(self, from_rdb: torch.Tensor, from_resample: torch.Tensor) -> torch.Tensor:
        a = self.weight[0].view(1, -1, 1, 1)
        b = self.weight[1].view(1, -1, 1, 1)
        return a * from_rdb + b * from_resample


def _key(row: int, col: int) -> str:
    return f"{row}_{col}"


def fused_nodes(height: int, width: int) -> list[tuple[int, int]]:
    """The grid nodes with both an RDB input (c > 0) and a resampled input, which attention fuses."""
    half = width // 2
    down_half = [(r, c) for r in range(1, height) for c in range(1, half)]
    up_half = [(r, c) for r in range(height - 1) for c in range(half, width)]
    return down_half + up_half


def _coefficient_slices(kwargs: dict) -> dict[str, tuple]:
    """Node (r, c)'s (2, channels) weights are coefficient[r, c, :, :channels] in the original."""
    return {f"fusion.{_key(r, c)}.weight": (r, c, slice(None), slice(0, kwargs["depth_rate"] << r))
            for r, c in fused_nodes(kwargs["height"], kwargs["width"])}


# proteus1991/GridDehazeNet (model.py, residual_dense_block.py): rdb_module / downsample_module /
# upsample_module keyed "row_col" as here, RDB layers as residual_dense_layers.<i>.conv and conv_1x1, and
# one shared coefficient tensor (height, width, 2, depth_rate * 2**(height-1)) sliced per node.
ORIGINAL = OriginalFormat(
    repository="https://github.com/proteus1991/GridDehazeNet",
    commit="6f0cdf48203a2f41f15b7abc8da6ec3203668c8c",
    file="model.py (GateHazeNet), residual_dense_block.py (RDB)",
    rules=(
        (r"(conv_in|conv_out)\.(weight|bias)", r"\1.\2"),
        (r"(rdb_in|rdb_out)\.layers\.(\d+)\.(weight|bias)", r"\1.residual_dense_layers.\2.conv.\3"),
        (r"(rdb_in|rdb_out)\.fuse\.(weight|bias)", r"\1.conv_1x1.\2"),
        (r"rdb\.(\d+_\d+)\.layers\.(\d+)\.(weight|bias)", r"rdb_module.\1.residual_dense_layers.\2.conv.\3"),
        (r"rdb\.(\d+_\d+)\.fuse\.(weight|bias)", r"rdb_module.\1.conv_1x1.\2"),
        (r"down\.(\d+_\d+)\.(conv[12]\.(?:weight|bias))", r"downsample_module.\1.\2"),
        (r"up\.(\d+_\d+)\.((?:deconv|conv)\.(?:weight|bias))", r"upsample_module.\1.\2"),
    ),
    packed=(Packed(
        name="coefficient",
        shape=lambda kw: (kw["height"], kw["width"], 2, kw["depth_rate"] << (kw["height"] - 1)),
        slices=_coefficient_slices,
        fill=1.0,  # the original's initial value; the entries no node reads stay at it
    ),),
    notes="exact on inputs whose sides are multiples of 2**(height-1); the coefficient entries no node reads "
          "are dropped",
)


@register_backbone(
    "griddehazenet",
    presets={
        "paper": dict(height=3, width=6, num_dense_layers=4, growth_rate=16, depth_rate=16),
        "small": dict(height=3, width=4, num_dense_layers=3, growth_rate=8, depth_rate=8),
        "tiny": dict(height=3, width=2, num_dense_layers=2, growth_rate=4, depth_rate=4),
    },
    default_crop=240,
    source="https://github.com/proteus1991/GridDehazeNet",
    paper="Liu et al., GridDehazeNet: Attention-Based Multi-Scale Network for Image Dehazing, "
    "ICCV 2019 (arXiv:1908.03245)",
    original=ORIGINAL,
)
class GridDehazeNet(nn.Module):
    """GridDehazeNet.

    Args:
        height: rows of the grid, i.e. scales (paper: 3).
        width: columns of the grid, at least 2; the first width // 2 go down (paper: 6).
        num_dense_layers: conv layers per RDB (paper: 4).
        growth_rate: channels added by each RDB layer (paper: 16).
        depth_rate: channels of the finest row, doubled at each coarser row (paper: 16).
    """

    def __init__(
        self,
        height: int = 3,
        width: int = 6,
        num_dense_layers: int = 4,
        growth_rate: int = 16,
        depth_rate: int = 16,
    ) -> None:
        super().__init__()
        if width < 2 or height < 1:
            raise ValueError(f"need height >= 1 and width >= 2, got {height} x {width}")
        self.height, self.width, self.half = height, width, width // 2
        ch = [depth_rate << row for row in range(height)]

        def rdb(channels: int) -> ResidualDenseBlock:
            return ResidualDenseBlock(channels, num_dense_layers, growth_rate)

        self.conv_in = nn.Conv2d(3, depth_rate, 3, padding=1)
        self.rdb_in = rdb(depth_rate)
        # rdb[r_c] produces node (r, c + 1) from node (r, c).
        self.rdb = nn.ModuleDict(
            {_key(r, c): rdb(ch[r]) for r in range(height) for c in range(width - 1)}
        )
        # down[r_c] takes node (r, c) to row r + 1, in the first half of the columns.
        self.down = nn.ModuleDict(
            {_key(r, c): DownSample(ch[r]) for r in range(height - 1) for c in range(self.half)}
        )
        # up[r_c] takes node (r + 1, c) to row r, in the second half of the columns.
        self.up = nn.ModuleDict(
            {
                _key(r, c): UpSample(ch[r + 1])
                for r in range(height - 1)
                for c in range(self.half, width)
            }
        )
        # A node is fused when it has both an RDB input (c > 0) and a resampled input.
        self.fusion = nn.ModuleDict(
            {_key(r, c): AttentionFusion(ch[r]) for r, c in fused_nodes(height, width)}
        )
        self.rdb_out = rdb(depth_rate)
        self.conv_out = nn.Conv2d(depth_rate, 3, 3, padding=1)

    def _node(self, grid: dict[tuple[int, int], torch.Tensor], r: int, c: int) -> torch.Tensor:
        """Value of grid node (r, c) from its already computed neighbours."""
        key = _key(r, c)
        if c == 0:  # first column below the top row: downsampling only
            return self.down[_key(r - 1, 0)](grid[r - 1, 0])
        lateral = self.rdb[_key(r, c - 1)](grid[r, c - 1])
        if c < self.half and r > 0:
            return self.fusion[key](lateral, self.down[_key(r - 1, c)](grid[r - 1, c]))
        if c >= self.half and r < self.height - 1:
            return self.fusion[key](lateral, self.up[key](grid[r + 1, c]))
        return lateral  # top row of the down half, bottom row of the up half

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        height, width = x.shape[-2:]
        x = pad_to_multiple(x, 2 ** (self.height - 1))

        grid: dict[tuple[int, int], torch.Tensor] = {(0, 0): self.rdb_in(self.conv_in(x))}
        for c in range(self.width):
            # Down half fills rows top to bottom, up half bottom to top.
            rows = range(self.height) if c < self.half else reversed(range(self.height))
            for r in rows:
                if (r, c) not in grid:
                    grid[r, c] = self._node(grid, r, c)

        out = F.relu(self.conv_out(self.rdb_out(grid[0, self.width - 1])))
        return crop_to(out, height, width)
