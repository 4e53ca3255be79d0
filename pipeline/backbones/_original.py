"""How an original repository names a backbone's weights: the table each backbone registers.

An :class:`OriginalFormat` says which repository, commit and file the names follow, and maps
every parameter name of the project's network to the original's by an ordered table of
``(regex, rename)`` rules: the first rule whose regex matches the whole project name gives the
original name. A parameter the original keeps inside one shared tensor (GridDehazeNet's
attention coefficients) is a :class:`Packed` slice of it instead.

The mapping is computed from the project network's own parameter names for given constructor
kwargs, so it holds for every size the rules cover, and it runs both ways:
``pipeline.models.importing`` reads an original checkpoint through it, and
:func:`to_original` writes one (what the round-trip tests use).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

__all__ = ["OriginalFormat", "Packed", "Rule", "original_names", "to_original"]

# (regex over the whole project name, the original name: a re.sub template or a function of the match)
Rule = tuple[str, str | Callable[[re.Match[str]], str]]


@dataclass(frozen=True)
class Packed:
    """One original tensor holding several project parameters, each a slice of it.

    ``shape(kwargs)`` is the original tensor's shape; ``slices(kwargs)`` maps each project
    parameter to the index of its slice; ``fill`` is the value of the entries no project
    parameter uses (the original's initial value, so a written file loads as the original would).
    """

    name: str
    shape: Callable[[Mapping[str, Any]], tuple[int, ...]]
    slices: Callable[[Mapping[str, Any]], dict[str, tuple[Any, ...]]]
    fill: float = 0.0


@dataclass(frozen=True)
class OriginalFormat:
    """An original repository's checkpoint format for one backbone.

    ``kwargs`` are the constructor arguments that make the project's network compute what the
    original does (beyond the preset's); ``notes`` say what still differs.
    """

    repository: str
    commit: str
    file: str
    rules: tuple[Rule, ...]
    packed: tuple[Packed, ...] = ()
    kwargs: Mapping[str, Any] = field(default_factory=dict)
    notes: str = ""


def _rename(fmt: OriginalFormat, name: str) -> str:
    for pattern, rename in fmt.rules:
        match = re.fullmatch(pattern, name)
        if match:
            return rename(match) if callable(rename) else match.expand(rename)
    raise KeyError(f"no rule of {fmt.repository} names the parameter {name!r}")


def original_names(fmt: OriginalFormat, names: list[str], kwargs: Mapping[str, Any]) -> dict[str, str]:
    """Project parameter name -> original name, for the parameters not packed into a shared tensor."""
    packed = {key for p in fmt.packed for key in p.slices(kwargs)}
    return {name: _rename(fmt, name) for name in names if name not in packed}


def to_original(fmt: OriginalFormat, weights: Mapping[str, torch.Tensor], kwargs: Mapping[str, Any]
                ) -> dict[str, torch.Tensor]:
    """The project's ``weights`` as the original repository's state dict (its names, its shared tensors)."""
    state = {original: weights[name].clone() for name, original in original_names(fmt, list(weights), kwargs).items()}
    dtype = next(iter(weights.values())).dtype
    for p in fmt.packed:
        tensor = torch.full(p.shape(kwargs), p.fill, dtype=dtype)
        for name, index in p.slices(kwargs).items():
            tensor[index] = weights[name]
        state[p.name] = tensor
    return state
