"""Backbone registry: one door in (`create_backbone`), one list out (`list_backbones`).

Each network module registers its class once, with its presets as plain data:

    @register_backbone("aodnet", presets={"paper": {...}, "small": {...}, "tiny": {...}},
                       default_crop=240, source="https://...", paper="AOD-Net, ICCV 2017")
    class AODNet(nn.Module): ...

A preset is the keyword arguments of the class constructor. `backbone_kwargs` merges a
preset with overrides and returns a JSON-serialisable dict; checkpoints store that dict
beside the weights so `build_from_kwargs(name, kwargs)` rebuilds the exact network.
"""

from __future__ import annotations

import copy
import fnmatch
import inspect
import json
from dataclasses import dataclass
from typing import Any, Callable, Mapping, TypeVar

import torch.nn as nn

from ._original import OriginalFormat

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
]

ModelT = TypeVar("ModelT", bound=type[nn.Module])


class UnknownBackboneError(ValueError):
    """An unknown backbone name or preset; the message lists the valid choices."""


@dataclass(frozen=True)
class _Entry:
    name: str
    cls: type[nn.Module]
    presets: Mapping[str, Mapping[str, Any]]
    default_crop: int
    source: str
    paper: str
    original: OriginalFormat | None


_REGISTRY: dict[str, _Entry] = {}


def _check_kwargs(cls: type[nn.Module], kwargs: Mapping[str, Any], where: str) -> None:
    """Fail early (at registration or creation) on kwargs the constructor does not take."""
    try:
        inspect.signature(cls).bind(**kwargs)
    except TypeError as err:
        raise TypeError(f"{where}: {err}") from None
    try:
        json.dumps(dict(kwargs))
    except TypeError as err:
        # Checkpoints store these kwargs as JSON, so anything else would break rebuilding.
        raise TypeError(f"{where}: kwargs must be JSON-serialisable ({err})") from None


def register_backbone(
    name: str,
    *,
    presets: dict[str, dict[str, Any]],
    default_crop: int,
    source: str,
    paper: str,
    original: OriginalFormat | None = None,
) -> Callable[[ModelT], ModelT]:
    """Class decorator that records a network under `name` with its presets and metadata;
    `original` is how the original repository names its weights (see `_original`)."""

    def decorator(cls: ModelT) -> ModelT:
        if name in _REGISTRY:
            raise ValueError(
                f"backbone {name!r} is already registered by {_REGISTRY[name].cls.__qualname__}"
            )
        if not presets:
            raise ValueError(f"backbone {name!r} needs at least one preset")
        for preset, kwargs in presets.items():
            _check_kwargs(cls, kwargs, f"backbone {name!r} preset {preset!r}")
        _REGISTRY[name] = _Entry(
            name=name,
            cls=cls,
            presets=copy.deepcopy(presets),
            default_crop=int(default_crop),
            source=source,
            paper=paper,
            original=original,
        )
        return cls

    return decorator


def _entry(name: str) -> _Entry:
    if name not in _REGISTRY:
        raise UnknownBackboneError(
            f"unknown backbone {name!r}; choose one of: {', '.join(list_backbones())}"
        )
    return _REGISTRY[name]


def _preset(entry: _Entry, preset: str) -> dict[str, Any]:
    if preset not in entry.presets:
        raise UnknownBackboneError(
            f"unknown preset {preset!r} for backbone {entry.name!r}; "
            f"choose one of: {', '.join(entry.presets)}"
        )
    return copy.deepcopy(dict(entry.presets[preset]))


def list_backbones(pattern: str | None = None) -> list[str]:
    """Registered names, sorted; `pattern` is an optional shell-style wildcard."""
    names = sorted(_REGISTRY)
    return names if pattern is None else fnmatch.filter(names, pattern)


def list_presets(name: str) -> list[str]:
    """Preset names of one backbone, in registration order (paper first by convention)."""
    return list(_entry(name).presets)


def backbone_info(name: str) -> dict[str, Any]:
    """Metadata of one backbone: name, presets (name -> kwargs), default_crop, source, paper."""
    entry = _entry(name)
    return {
        "name": entry.name,
        "presets": copy.deepcopy({k: dict(v) for k, v in entry.presets.items()}),
        "default_crop": entry.default_crop,
        "source": entry.source,
        "paper": entry.paper,
    }


def original_format(name: str) -> OriginalFormat:
    """How the original repository of backbone `name` names its weights."""
    entry = _entry(name)
    if entry.original is None:
        raise UnknownBackboneError(f"backbone {name!r} has no original checkpoint format to import")
    return entry.original


def backbone_kwargs(name: str, preset: str = "small", **overrides: Any) -> dict[str, Any]:
    """Every constructor kwarg of `name` at `preset` (defaults included), with overrides;
    None overrides are dropped so the preset's value stands (as in timm's create_model)."""
    entry = _entry(name)
    kwargs = _preset(entry, preset)
    kwargs.update({k: v for k, v in overrides.items() if v is not None})
    _check_kwargs(entry.cls, kwargs, f"backbone {name!r}")
    # Spell out the defaults too: a checkpoint then rebuilds the same network even if a
    # constructor default changes later.
    bound = inspect.signature(entry.cls).bind(**kwargs)
    bound.apply_defaults()
    return dict(bound.arguments)


def build_from_kwargs(name: str, kwargs: Mapping[str, Any]) -> nn.Module:
    """Rebuild a network from the kwargs stored in a checkpoint (see `backbone_kwargs`)."""
    entry = _entry(name)
    _check_kwargs(entry.cls, kwargs, f"backbone {name!r}")
    return entry.cls(**dict(kwargs))


def create_backbone(name: str, preset: str = "small", **overrides: Any) -> nn.Module:
    """Build backbone `name` at `preset` (paper, small, tiny), with optional kwarg overrides."""
    return build_from_kwargs(name, backbone_kwargs(name, preset, **overrides))


def count_params(model: nn.Module) -> int:
    """Number of trainable scalars (works on meta-device models too)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
