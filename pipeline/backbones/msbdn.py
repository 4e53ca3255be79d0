"""MSBDN-DFF: Multi-Scale Boosted Dehazing Network with Dense Feature Fusion.

Paper: H. Dong, J. Pan, L. Xiang, Z. Hu, X. Zhang, F. Wang, M.-H. Yang, "Multi-Scale
Boosted Dehazing Network with Dense Feature Fusion", CVPR 2020 (arXiv:2004.13388).
Origin: https://github.com/BookerDeWitt/MSBDN-DFF (networks/MSBDN-DFF-v1-1.py and
networks/base_networks.py, fusion mode "iter2"). Licence: none stated in the origin
repository; this file is an independent re-implementation.

Structure: an 11x11 input conv, an encoder of `levels` stride-2 convs (16-32-64-128-256
channels in the paper), each level followed by a dense-feature-fusion (DFF) module that
back-projects the new feature onto every earlier, finer feature and a stack of residual
blocks; a bottleneck of 18 residual blocks; a boosted decoder whose levels are
strengthen-operate-subtract (SOS) modules, J_n = G_n(I_n + up(J_{n+1})) - up(J_{n+1}),
each followed by a DFF module over every earlier, coarser decoder feature; a 3x3 output
conv. Paper size: 31.35M parameters. No global residual (the original has none).

Departures: the decoder's 3x3 stride-2 transposed convs use padding 1 and output padding 1,
so they give exactly twice the size instead of 2H + 1 followed by a bilinear resize (same
parameters). Inputs are reflect-padded to a multiple of 2**levels (and at least
2**(levels + 1), so the reflect-padded convs of the bottleneck have room) and cropped back.
Widths and depths are constructor arguments so smaller presets exist. ``upsample="original"``
restores the original's transposed convs and resize: an imported original checkpoint
(``python -m pipeline.models import``) is built that way and computes what the original computes.
"""

from __future__ import annotations


import torch
import torch.nn as nn
import torch.nn.functional as F

from ._layers import crop_to, pad_to_multiple
from ._original import OriginalFormat
from ._registry import register_backbone

__all__ = ["MSBDN"]

UPSAMPLES = ("exact", "original")
_RESIDUAL = r"(conv[12]\.(?:weight|bias)|act\.weight)"  # a residual block's parameters


def _residual(prefix: str, inner: str) -> str:
    """A residual block's parameter in the original: ConvLayer wraps each conv as conv2d, the PReLU is relu."""
    return prefix + (inner.replace(".", ".conv2d.", 1) if inner.startswith("conv") else "relu.weight")


def _scale(n: str) -> int:
    return 2 ** (int(n) + 1)


# BookerDeWitt/MSBDN-DFF (networks/MSBDN-DFF-v1-1.py, networks/base_networks.py): encoder stacks dense0..3,
# stride-2 convs conv2x..conv16x, encoder DFF fusion1..4 (up_convs = DeconvBlock toward finer, down_convs
# = ConvBlock back), bottleneck dehaze.res<k>, decoder convd16x..convd2x, dense_4..dense_1, fusion_4..fusion_1
# (down_convs toward coarser, up_convs back).
ORIGINAL = OriginalFormat(
    repository="https://github.com/BookerDeWitt/MSBDN-DFF",
    commit="9c423db18597b1e6bb3d4f7d58725141be6bd7f4",
    file="networks/MSBDN-DFF-v1-1.py (Net), networks/base_networks.py (Encoder/Decoder_MDCBlock1, mode iter2)",
    rules=(
        (r"(conv_input|conv_output)\.(weight|bias)", r"\1.conv2d.\2"),
        (rf"enc_blocks\.(\d+)\.blocks\.(\d+)\.{_RESIDUAL}", lambda m: _residual(f"dense{m[1]}.{m[2]}.", m[3])),
        (r"down\.(\d+)\.(weight|bias)", lambda m: f"conv{_scale(m[1])}x.conv2d.{m[2]}"),
        (r"enc_fusion\.(\d+)\.to_other\.(\d+)\.conv\.(weight|bias)",
         lambda m: f"fusion{int(m[1]) + 1}.up_convs.{m[2]}.deconv.{m[3]}"),
        (r"enc_fusion\.(\d+)\.back\.(\d+)\.conv\.(weight|bias)",
         lambda m: f"fusion{int(m[1]) + 1}.down_convs.{m[2]}.conv.{m[3]}"),
        (r"enc_fusion\.(\d+)\.to_other\.(\d+)\.act\.weight", lambda m: f"fusion{int(m[1]) + 1}.up_convs.{m[2]}.act.weight"),
        (r"enc_fusion\.(\d+)\.back\.(\d+)\.act\.weight", lambda m: f"fusion{int(m[1]) + 1}.down_convs.{m[2]}.act.weight"),
        (rf"bottleneck\.(\d+)\.{_RESIDUAL}", lambda m: _residual(f"dehaze.res{m[1]}.", m[2])),
        (r"up\.(\d+)\.(weight|bias)", lambda m: f"convd{_scale(m[1])}x.conv2d.{m[2]}"),
        (rf"dec_blocks\.(\d+)\.blocks\.(\d+)\.{_RESIDUAL}",
         lambda m: _residual(f"dense_{int(m[1]) + 1}.{m[2]}.", m[3])),
        (r"dec_fusion\.(\d+)\.to_other\.(\d+)\.conv\.(weight|bias)",
         lambda m: f"fusion_{int(m[1]) + 1}.down_convs.{m[2]}.conv.{m[3]}"),
        (r"dec_fusion\.(\d+)\.back\.(\d+)\.conv\.(weight|bias)",
         lambda m: f"fusion_{int(m[1]) + 1}.up_convs.{m[2]}.deconv.{m[3]}"),
        (r"dec_fusion\.(\d+)\.to_other\.(\d+)\.act\.weight",
         lambda m: f"fusion_{int(m[1]) + 1}.down_convs.{m[2]}.act.weight"),
        (r"dec_fusion\.(\d+)\.back\.(\d+)\.act\.weight", lambda m: f"fusion_{int(m[1]) + 1}.up_convs.{m[2]}.act.weight"),
    ),
    kwargs={"upsample": "original"},
    notes="exact with upsample=original on inputs whose sides are multiples of 2**levels",
)


def _reflect_conv(in_ch: int, out_ch: int, kernel_size: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(
        in_ch, out_ch, kernel_size, stride, padding=kernel_size // 2, padding_mode="reflect"
    )


class ResidualBlock(nn.Module):
    """x + 0.1 * conv(PReLU(conv(x))), the original's scaled residual."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = _reflect_conv(channels, channels, 3)
        self.conv2 = _reflect_conv(channels, channels, 3)
        self.act = nn.PReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + 0.1 * self.conv2(self.act(self.conv1(x)))


class ResidualStack(nn.Module):
    """`depth` residual blocks wrapped in one more residual."""

    def __init__(self, channels: int, depth: int) -> None:
        super().__init__()
        self.blocks = nn.Sequential(*(ResidualBlock(channels) for _ in range(depth)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(x) + x


class Resample(nn.Module):
    """4x4 stride-2 (transposed) conv + PReLU: exact 2x down or up sampling inside DFF."""

    def __init__(self, in_ch: int, out_ch: int, up: bool) -> None:
        super().__init__()
        conv = nn.ConvTranspose2d if up else nn.Conv2d
        self.conv = conv(in_ch, out_ch, 4, stride=2, padding=1)
        self.act = nn.PReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.conv(x))


class DenseFeatureFusion(nn.Module):
    """DFF ("iter2"): fuse a feature with earlier features of other scales by back-projection.

    For each earlier feature e_i (in the order they were produced), the running fusion f is
    resampled to e_i's scale, the difference to e_i is taken, resampled back and added:
    f <- f + back(to(f) - e_i). `toward_finer` is True in the encoder (earlier features are
    finer: go up first) and False in the decoder (earlier features are coarser).
    """

    def __init__(self, channels: int, steps: int, toward_finer: bool) -> None:
        super().__init__()
        # Step j maps channels*r**j <-> channels*r**(j+1), r = 1/2 going finer, 2 going coarser.
        def width(j: int) -> int:
            return channels >> j if toward_finer else channels << j

        self.to_other = nn.ModuleList(
            Resample(width(j), width(j + 1), up=toward_finer) for j in range(steps)
        )
        self.back = nn.ModuleList(
            Resample(width(j + 1), width(j), up=not toward_finer) for j in range(steps)
        )

    def forward(self, x: torch.Tensor, earlier: list[torch.Tensor]) -> torch.Tensor:
        fused = x
        steps = len(self.to_other)
        for i, feat in enumerate(earlier):
            distance = steps - i  # scales between `fused` and `feat`
            t = fused
            for j in range(distance):
                t = self.to_other[j](t)
            t = t - feat
            for j in reversed(range(distance)):
                t = self.back[j](t)
            fused = fused + t
        return fused


@register_backbone(
    "msbdn",
    presets={
        "paper": {"base_channels": 16, "levels": 4, "level_blocks": 3, "bottleneck_blocks": 18},
        "small": {"base_channels": 4, "levels": 4, "level_blocks": 2, "bottleneck_blocks": 4},
        # One level fewer: at 4 levels even 2 base channels cost 150K parameters in DFF.
        "tiny": {"base_channels": 2, "levels": 3, "level_blocks": 1, "bottleneck_blocks": 1},
    },
    default_crop=256,
    source="https://github.com/BookerDeWitt/MSBDN-DFF",
    paper="Dong et al., Multi-Scale Boosted Dehazing Network with Dense Feature Fusion, "
    "CVPR 2020 (arXiv:2004.13388)",
    original=ORIGINAL,
)
class MSBDN(nn.Module):
    """MSBDN-DFF.

    Args:
        base_channels: channels at full resolution, doubled at every level (paper: 16).
        levels: stride-2 levels (paper: 4; inputs are padded to a multiple of 2**levels).
        level_blocks: residual blocks per encoder and decoder level (paper: 3).
        bottleneck_blocks: residual blocks at the coarsest level (paper: 18).
        input_kernel: kernel size of the input conv (paper: 11).
        upsample: the decoder's 2x upsampling: ``exact`` (a transposed conv that gives twice the size),
            or ``original`` (2H + 1, then a bilinear resize, as the original; its imported weights need it).
    """

    def __init__(
        self,
        base_channels: int = 16,
        levels: int = 4,
        level_blocks: int = 3,
        bottleneck_blocks: int = 18,
        input_kernel: int = 11,
        upsample: str = "exact",
    ) -> None:
        super().__init__()
        if upsample not in UPSAMPLES:
            raise ValueError(f"upsample={upsample!r}; expected one of {', '.join(UPSAMPLES)}")
        self.levels, self.upsample = levels, upsample
        ch = [base_channels << level for level in range(levels + 1)]
        self.conv_input = _reflect_conv(3, ch[0], input_kernel)
        self.enc_blocks = nn.ModuleList(ResidualStack(ch[n], level_blocks) for n in range(levels))
        self.down = nn.ModuleList(_reflect_conv(ch[n], ch[n + 1], 3, 2) for n in range(levels))
        # Encoder DFF at level n+1 looks back at n finer features.
        self.enc_fusion = nn.ModuleList(
            DenseFeatureFusion(ch[n + 1], n + 1, toward_finer=True) for n in range(levels)
        )
        self.bottleneck = nn.Sequential(*(ResidualBlock(ch[-1]) for _ in range(bottleneck_blocks)))
        # Decoder modules are indexed by the level they produce (0 = full resolution).
        pad = 1 if upsample == "exact" else 0
        self.up = nn.ModuleList(
            nn.ConvTranspose2d(ch[n + 1], ch[n], 3, stride=2, padding=pad, output_padding=pad)
            for n in range(levels)
        )
        self.dec_blocks = nn.ModuleList(ResidualStack(ch[n], level_blocks) for n in range(levels))
        self.dec_fusion = nn.ModuleList(
            DenseFeatureFusion(ch[n], levels - n, toward_finer=False) for n in range(levels)
        )
        self.conv_output = _reflect_conv(ch[0], 3, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        height, width = x.shape[-2:]
        x = pad_to_multiple(x, 2**self.levels, minimum=2 ** (self.levels + 1))

        # Encoder: `memory` keeps each level's fused input, the DFF targets of later levels.
        feat = self.conv_input(x)
        memory = [feat]
        skips = []
        for n in range(self.levels):
            feat = self.enc_blocks[n](feat)
            skips.append(feat)
            feat = self.enc_fusion[n](self.down[n](feat), memory)
            memory.append(feat)

        # Bottleneck as an SOS step whose "previous estimate" is its own input.
        feat = self.bottleneck(2 * feat) + feat
        memory = [feat]

        # Boosted decoder: strengthen (add upsampled estimate), operate, subtract.
        for n in reversed(range(self.levels)):
            upsampled = self.up[n](feat)
            if self.upsample == "original":
                upsampled = F.interpolate(upsampled, size=skips[n].shape[-2:], mode="bilinear", align_corners=False)
            strengthened = skips[n] + upsampled
            feat = self.dec_blocks[n](strengthened) - upsampled
            feat = self.dec_fusion[n](feat, memory)
            memory.append(feat)

        return crop_to(self.conv_output(feat), height, width)
