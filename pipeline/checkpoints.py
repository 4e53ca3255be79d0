"""Training checkpoints: the file format, saving and loading it safely, and the resume policy.

A checkpoint (``bild-checkpoint/1``) is one ``torch.save`` of a plain dict: both networks'
state dicts, both optimisers', the step, the random state, the resolved config and the data
splits. It holds only tensors and Python scalars, strings, lists and dicts, so it loads with
``torch.load(weights_only=True)``: a file that would need any other class to unpickle is
refused by name before anything in it runs.
"""

from __future__ import annotations

import io
import os
import pickle
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from .config import flatten, saved_config
from .storage import Location, fetch, location

__all__ = ["CHECKPOINT_FORMAT", "RESUME_KEYS", "CheckpointError", "field", "load_checkpoint", "one_line", "optional_field",
           "resumed_config", "safe_load", "save_checkpoint"]

CHECKPOINT_FORMAT = "bild-checkpoint/1"


class CheckpointError(ValueError):
    """A file that is not a readable checkpoint or model of an expected format; the message names it."""


def save_checkpoint(path: str | os.PathLike | Location, state: dict[str, Any]) -> Location:
    """Write ``state`` (a dict with ``format``) whole or not at all to a path or a storage URI."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    target = location(path)
    target.write_bytes(buffer.getvalue())
    return target


def field(tree: Any, dotted: str, kind: type, file: Path) -> Any:
    """``tree[a][b]...`` for ``dotted`` "a.b", checked to be a ``kind``: a malformed file gets one line, not a KeyError."""
    value = tree
    for part in dotted.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    if not isinstance(value, kind):
        raise CheckpointError(f"{file} is malformed: {dotted} is missing or not a {kind.__name__}")
    return value


def optional_field(tree: dict[str, Any], dotted: str, kind: type, file: Path) -> Any:
    """Like :func:`field`, for a key that may be absent (None then); present, it must be a ``kind``."""
    value: Any = tree
    for part in dotted.split("."):
        if not isinstance(value, dict) or value.get(part) is None:
            return None
        value = value[part]
    return field(tree, dotted, kind, file)


# What every reader of a checkpoint (resume, promote, analyze, the search's trials) takes from it.
_CHECKPOINT_FIELDS = {"backbone.name": str, "backbone.kwargs": dict, "config": dict, "epoch": int, "step": int,
                      "models.backbone": dict, "optimizers.inner": dict, "rng": dict}


def one_line(err: BaseException) -> str:
    """A library's (often multi-line) message on one line; for a refused pickle, the line naming what it wanted."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    telling = [line for line in lines if "GLOBAL" in line]
    return telling[0] if telling else " ".join(lines) or type(err).__name__


def load_checkpoint(
    path: str | os.PathLike | Location,
    formats: tuple[str, ...] = (CHECKPOINT_FORMAT,),
    *,
    advice: str = "a checkpoint written by this project never needs that; load only files you trust",
    trust: bool = False,
) -> dict[str, Any]:
    """Read a file written by :func:`save_checkpoint` (or another of ``formats``) without running code from it.

    This is the project's only ``torch.load``. A file that needs more than tensors and plain
    containers to unpickle is refused with :class:`CheckpointError` naming it, followed by
    ``advice``. ``trust=True`` unpickles without the weights-only guard, which RUNS whatever code the
    file holds: only the explicit ``python -m pipeline.models convert FILE --trust`` passes it.
    A checkpoint in an object store is read from the local cache (``pipeline.storage.fetch``).
    """
    where = location(path)
    if not where.is_file():
        raise FileNotFoundError(f"checkpoint {where} does not exist")
    path = fetch(where)
    expected = f"expected one of the formats {', '.join(formats)}"
    state = safe_load(path, advice=advice, expected=expected, trust=trust)
    if not isinstance(state, dict) or state.get("format") not in formats:
        found = repr(state.get("format") if isinstance(state, dict) else type(state).__name__)
        if isinstance(state, dict) and "format" not in state:
            found = "a dict without a format (an original repository's checkpoint?)"
            expected += "; import an original checkpoint with 'python -m pipeline.models import --backbone NAME FILE'"
        raise CheckpointError(f"{where} holds {found}, not a model or checkpoint of this project; {expected}")
    if state["format"] == CHECKPOINT_FORMAT:
        for dotted, kind in _CHECKPOINT_FIELDS.items():
            field(state, dotted, kind, where)
    return state


def safe_load(path: Path, *, advice: str, expected: str, trust: bool = False) -> Any:
    """``torch.load`` of ``path`` onto the CPU, unpickling tensors and plain containers only (unless ``trust``).

    A file that needs more is refused with :class:`CheckpointError` naming it, followed by
    ``advice``; a truncated or foreign file gets one line ending in ``expected``.
    """
    try:
        return torch.load(path, map_location="cpu", weights_only=not trust)
    except pickle.UnpicklingError as err:  # weights_only refuses anything but tensors and plain containers
        raise CheckpointError(f"{path} refused: unpickling it would need more than tensors and plain data "
                              f"({one_line(err)}); {advice}") from err
    except Exception as err:  # torch raises several types for a truncated or foreign file
        raise CheckpointError(f"{path} could not be read ({type(err).__name__}: {one_line(err)}); {expected}") from err


# What a resumed run may take from the new command (how long, and where things are);
# everything else is the run's own config.
RESUME_KEYS = ("train.epochs", "run_dir", "dataset.root", "device", "progress", "threads", "train.loader_workers",
               "dataset.decoded_cache")


def resumed_config(command: DictConfig, saved: dict[str, Any]) -> DictConfig:
    """The run's saved config, with only ``RESUME_KEYS`` taken from the command (``--epochs 20 --resume``).

    A run must go on as it started: today's defaults (a new reweighting policy, say) or a changed
    flag would otherwise rebuild different networks under the saved weights. What the command
    asks for and cannot change is printed, not silently dropped. Keys the run was saved without
    (options added since) take the command's value: there is no other.
    """
    cfg = saved_config(saved)
    was, asked = (flatten(OmegaConf.to_container(c, resolve=True)) for c in (cfg, command))
    for key in RESUME_KEYS:
        OmegaConf.update(cfg, key, OmegaConf.select(command, key))
    for key in asked.keys() - was.keys():
        OmegaConf.update(cfg, key, asked[key])
    ignored = [f"{k}={asked[k]!r} (the run has {was[k]!r})"
               for k in asked if k not in RESUME_KEYS and k in was and asked[k] != was[k]]
    if ignored:
        print("resume keeps the run's own config; ignored from this command: " + ", ".join(ignored))
    return cfg
