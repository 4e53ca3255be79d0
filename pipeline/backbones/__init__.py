"""Dehazing backbones and their registry.

Every network maps a hazy RGB batch (B, 3, H, W), float in [0, 1], to a clear estimate of
the same shape, roughly in [0, 1] (not clamped, so gradients survive); any H, W >= 16 work
(networks that downsample pad and crop back). Networks hold parameters only: no BatchNorm
or other buffers, no in-place ops on activations, so `torch.func.functional_call`,
`torch.func.jvp` and `torch.func.vmap`-style training code can treat them as pure
functions of their parameters.

    >>> from pipeline.backbones import create_backbone, list_backbones
    >>> model = create_backbone("ffanet", "tiny")
"""

from ._registry import (
    UnknownBackboneError,
    backbone_info,
    backbone_kwargs,
    build_from_kwargs,
    count_params,
    create_backbone,
    list_backbones,
    list_presets,
    original_format,
    register_backbone,
)
from ._original import OriginalFormat, original_names, to_original

# Imported for their side effect: each module registers its network.
from . import aodnet, dehazenet, ffanet, griddehazenet, msbdn  # noqa: E402,F401  isort: skip
from .aodnet import AODNet
from .dehazenet import DehazeNet
from .ffanet import FFANet
from .griddehazenet import GridDehazeNet
from .msbdn import MSBDN

__all__ = [
    "UnknownBackboneError",
    "register_backbone",
    "create_backbone",
    "build_from_kwargs",
    "backbone_kwargs",
    "list_backbones",
    "list_presets",
    "backbone_info",
    "count_params",
    "original_format",
    "OriginalFormat",
    "original_names",
    "to_original",
    "AODNet",
    "DehazeNet",
    "FFANet",
    "GridDehazeNet",
    "MSBDN",
]
