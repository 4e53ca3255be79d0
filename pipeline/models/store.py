"""Promoted models on disk, and the one loader that evaluation, dehazing and export share.

A promoted model is the backbone alone (the reweighter only ever exists in training), in
files that hold no pickle, so loading one never runs code from it:

    models/<backbone>/v<N>/model.safetensors  the weights (safetensors: tensors only, as Hugging Face and timm store them)
    models/<backbone>/v<N>/card.json          architecture (backbone, preset, constructor kwargs), the weights' sha256,
                                              where the model came from, how well it did, which exports exist
    models/<backbone>/LATEST                  the newest version's folder name, e.g. "v3"
    models/index.parquet                      one row per promoted model

:func:`load_model` also reads a training checkpoint (``bild-checkpoint/1``), so a run can be
evaluated before it is promoted, and a promoted ``model.pt`` of earlier versions
(``bild-model/1``), both through the safe ``torch.load`` of ``pipeline.checkpoints``. An old
file that needs more than that is refused with the command that converts it
(``python -m pipeline.models convert``, see ``pipeline.models.convert``).

Every path here may be a storage URI too (``s3://bucket/models/aodnet``, see pipeline/storage.py):
promotion writes there, and a reader fetches the weights into the local cache, under the
sha256 its card records (a checkpoint without a card: under its ETag), so an unchanged
model is never downloaded twice.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save
from torch import nn

from ..backbones import build_from_kwargs
from ..checkpoints import CHECKPOINT_FORMAT, CheckpointError, field, load_checkpoint, one_line, optional_field
from ..files import default_cache_dir
from ..storage import Location, fetch, location

__all__ = [
    "CARD_FILE",
    "CARD_FORMAT",
    "LATEST_FILE",
    "LEGACY_MODEL_FILE",
    "LEGACY_MODEL_FORMAT",
    "MODEL_FILE",
    "MODEL_FORMAT",
    "build_backbone",
    "convert_advice",
    "file_sha256",
    "init_weights",
    "load_model",
    "model_label",
    "model_origin",
    "read_card",
    "read_weights",
    "resolve_model_file",
    "save_model",
    "write_card",
]

MODEL_FILE = "model.safetensors"
MODEL_FORMAT = "bild-model/2"  # in the safetensors header, so the file says what it is to any tool
CARD_FILE = "card.json"
CARD_FORMAT = "bild-model-card/2"
LATEST_FILE = "LATEST"
LEGACY_MODEL_FILE = "model.pt"  # one torch.save of {"format", "backbone", "state_dict"}
LEGACY_MODEL_FORMAT = "bild-model/1"


def convert_advice(path: str | os.PathLike) -> str:
    """What to do with an old model file the safe loader refuses."""
    return (f"if you trust where it came from, convert it once with "
            f"'python -m pipeline.models convert {path} --trust' (that runs the code inside it)")


def file_sha256(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# --- the card -------------------------------------------------------------------------------------


# A card's provenance fields that readers use, each optional: a card written by an import, a conversion
# or by hand has neither version nor source. Present, each must have its kind.
PROVENANCE_FIELDS = {"version": str, "source": dict, "source.checkpoint": str, "epoch": int}


def read_card(path: str | os.PathLike | Location) -> dict[str, Any]:
    """A card.json as a dict; a truncated or foreign file, or a malformed provenance field, is a one-line
    error naming the file (and the field)."""
    path = location(path)
    try:
        card = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CheckpointError(f"{path} is not valid JSON ({err}); expected a model card") from err
    if not isinstance(card, dict):
        raise CheckpointError(f"{path} holds a JSON {type(card).__name__}; expected a model card (an object)")
    for dotted, kind in PROVENANCE_FIELDS.items():
        optional_field(card, dotted, kind, path)
    return card


def write_card(folder: str | os.PathLike | Location, card: dict[str, Any]) -> Location:
    target = location(folder) / CARD_FILE
    target.write_text(json.dumps(card, indent=2, allow_nan=False) + "\n")
    return target


def save_model(folder: str | os.PathLike | Location, backbone: dict[str, Any], state_dict: dict[str, torch.Tensor],
               provenance: dict[str, Any]) -> dict[str, Any]:
    """Write ``model.safetensors`` then ``card.json`` into ``folder``; returns the card.

    ``backbone`` is {name, preset, kwargs} as in a training checkpoint; ``provenance`` is the
    rest of the card (where the model came from, its scores). The card goes last, so a card
    on disk always has its weights beside it.
    """
    folder = location(folder)
    # safetensors stores dense row-major tensors: channels_last weights are copied, not refused.
    weights = {k: v.detach().cpu().contiguous() for k, v in state_dict.items()}
    data = save(weights, metadata={"format": MODEL_FORMAT})  # bytes: save_file would create the file owner-only (0600)
    (folder / MODEL_FILE).write_bytes(data)
    card = {"format": CARD_FORMAT, "backbone": backbone["name"], "preset": backbone["preset"],
            "kwargs": backbone["kwargs"], "weights": {"file": MODEL_FILE, "sha256": hashlib.sha256(data).hexdigest()}}
    card.update({k: v for k, v in provenance.items() if k not in card})
    write_card(folder, card)
    return card


# --- finding and reading --------------------------------------------------------------------------


def _weights_in(folder: Location) -> Location | None:
    """A version folder's weights: model.safetensors, else an older model.pt."""
    return next((folder / f for f in (MODEL_FILE, LEGACY_MODEL_FILE) if (folder / f).is_file()), None)


def _local_copy(file: Location) -> Path:
    """A local file with ``file``'s bytes: itself on disk; from an object store, a cached copy.

    Promoted weights are cached with their card under the sha256 the card records; other
    files (checkpoints) under their ETag (``pipeline.storage.fetch``).
    """
    if file.is_local:
        return file.local
    if file.name != MODEL_FILE:
        return fetch(file)
    card_text = (file.parent / CARD_FILE).read_text()
    sha = field(read_card(file.parent / CARD_FILE), "weights.sha256", str, file.parent / CARD_FILE)
    folder = default_cache_dir() / "models" / sha
    if not (folder / MODEL_FILE).is_file():  # never fetched again while the card names the same weights
        location(folder / MODEL_FILE).write_bytes(file.read_bytes())
    location(folder / CARD_FILE).write_text(card_text)
    return folder / MODEL_FILE


def model_origin(path: str | os.PathLike | Location) -> Location:
    """Where the weights behind ``path`` (a path or a storage URI; see :func:`_resolve`) are, before any fetch."""
    return _resolve(location(path, "--model"))


def _resolve(path: Location) -> Location:
    """The weights file behind ``path``: a file as is (model.safetensors, an older model.pt, a
    training checkpoint.pt), a version folder's weights, or those of a backbone folder's LATEST."""
    if path.is_file():
        return path
    if not path.is_dir():
        raise FileNotFoundError(f"model {path} does not exist; expected models/<backbone>[/v<N>], {MODEL_FILE}, "
                                f"an older {LEGACY_MODEL_FILE} or a training checkpoint.pt")
    found = _weights_in(path)
    if found is not None:
        return found
    if (path / LATEST_FILE).is_file():
        version = (path / LATEST_FILE).read_text().strip()
        found = _weights_in(path / version) if version else None
        if found is None:
            raise FileNotFoundError(f"{path / LATEST_FILE} points at {version!r}, but {path / version} holds no "
                                    f"{MODEL_FILE}")
        return found
    raise FileNotFoundError(f"{path} holds neither {MODEL_FILE} nor {LATEST_FILE}; "
                            "expected models/<backbone>/v<N>/ or models/<backbone>/")


def resolve_model_file(path: str | os.PathLike | Location) -> Path:
    """The local weights file behind ``path`` (a path or a storage URI; see :func:`_resolve`), fetched if remote."""
    return _local_copy(model_origin(path))


def _from_safetensors(file: Path) -> tuple[dict[str, Any], dict[str, torch.Tensor], dict[str, Any]]:
    """(backbone {name, preset, kwargs}, weights, card) of a model.safetensors and the card beside it."""
    card_file = file.parent / CARD_FILE
    if not card_file.is_file():
        raise CheckpointError(f"{file} has no {CARD_FILE} beside it; the card holds the model's architecture")
    card = read_card(card_file)
    backbone = {"name": field(card, "backbone", str, card_file), "preset": card.get("preset"),
                "kwargs": field(card, "kwargs", dict, card_file)}
    if file_sha256(file) != field(card, "weights.sha256", str, card_file):
        raise CheckpointError(f"{file} does not match the sha256 recorded in {card_file}: "
                              "the weights were damaged or replaced since the card was written")
    try:
        weights = load_file(file)
    except SafetensorError as err:
        raise CheckpointError(f"{file} could not be read ({one_line(err)}); expected a safetensors file") from err
    return backbone, weights, card


def read_weights(file: Path, state: dict[str, Any]) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """(backbone {name, preset, kwargs}, backbone weights) of a loaded ``bild-model/1`` or checkpoint dict."""
    field(state, "backbone.name", str, file)  # checked here: build_backbone then gets a usable description
    field(state, "backbone.kwargs", dict, file)
    key = "state_dict" if state["format"] == LEGACY_MODEL_FORMAT else "models.backbone"
    return state["backbone"], field(state, key, dict, file)


def _pickle_meta(origin: Location, state: dict[str, Any], backbone: dict[str, Any]) -> dict[str, Any]:
    """An older model.pt's card beside it, else what the file itself says about the model."""
    card = origin.parent / CARD_FILE
    if state["format"] == LEGACY_MODEL_FORMAT and card.is_file():
        return read_card(card)
    meta: dict[str, Any] = {"backbone": backbone["name"], "preset": backbone.get("preset"),
                            "source": {"checkpoint": str(origin)}}
    if state["format"] == CHECKPOINT_FORMAT:
        meta.update(config=state.get("config"), epoch=state.get("epoch"))
    return meta


def _from_pickle(file: Path, origin: Location) -> tuple[dict[str, Any], dict[str, torch.Tensor], dict[str, Any]]:
    """(backbone, weights, metadata) of an older model.pt or a training checkpoint, unpickled safely."""
    state = load_checkpoint(file, (LEGACY_MODEL_FORMAT, CHECKPOINT_FORMAT), advice=convert_advice(origin))
    backbone, weights = read_weights(file, state)
    return backbone, weights, _pickle_meta(origin, state, backbone)


def build_backbone(file: Path, backbone: dict[str, Any], weights: dict[str, torch.Tensor]) -> nn.Module:
    """The network ``backbone`` describes, holding ``weights``; one that does not fit is an error naming ``file``."""
    try:
        model = build_from_kwargs(backbone["name"], backbone["kwargs"])
        model.load_state_dict(weights)
    # An unknown backbone, kwargs its constructor does not take, or weights of another shape.
    except (TypeError, ValueError, RuntimeError) as err:
        raise CheckpointError(f"{file} does not build a {backbone['name']!r} backbone ({one_line(err)})") from err
    return model


def load_model(path: str | os.PathLike | Location) -> tuple[nn.Module, dict[str, Any]]:
    """(backbone in eval mode on the CPU, its card or metadata) from any form :func:`resolve_model_file` takes.

    The backbone comes in channels_last (NHWC) layout, whatever it trained in: whole-image
    inference on the CPU ran 1.25x (MSBDN) to 2.9x (DehazeNet) as fast, outputs equal to 1e-6
    (benchmarks/inference_layout.py).
    """
    origin = model_origin(path)
    file = _local_copy(origin)
    if file.suffix == ".safetensors":
        backbone, weights, meta = _from_safetensors(file)
    else:
        backbone, weights, meta = _from_pickle(file, origin)
    model = build_backbone(file, backbone, weights)
    return model.to(memory_format=torch.channels_last).eval(), meta


def init_weights(path: str | os.PathLike, name: str, preset: str, pinned_sha256: str | None = None
                 ) -> tuple[dict[str, Any], dict[str, torch.Tensor], str]:
    """(kwargs, weights, sha256 of the weights file) of the model training starts from (``train.init``).

    The model must be of backbone ``name`` at ``preset``; with ``pinned_sha256`` (a run's recorded
    ``train.init_sha256``) its file must still be the one the run started from.
    """
    file = resolve_model_file(path)
    backbone, weights, _ = _from_safetensors(file) if file.suffix == ".safetensors" else _from_pickle(file, location(file))
    if (backbone["name"], backbone.get("preset")) != (name, preset):
        raise CheckpointError(f"train.init={path} is a {backbone['name']} {backbone.get('preset')} model; "
                              f"expected a {name} {preset} model, the backbone and preset this run trains")
    sha256 = file_sha256(file)
    if pinned_sha256 is not None and sha256 != pinned_sha256:
        raise CheckpointError(f"train.init={path}: {file} has sha256 {sha256}, but the run started from "
                              f"{pinned_sha256} (train.init_sha256); expected the same model file")
    return backbone["kwargs"], weights, sha256


def model_label(meta: dict[str, Any], file: str | os.PathLike) -> str:
    """A short name for tables that tells two models of one backbone apart; ``file`` is the model's weights file.

    ``aodnet/v2`` for a promoted model; ``aodnet@<run>:epoch3`` for a training checkpoint,
    where ``<run>`` is the folder of its run (``python -m pipeline.train``'s run_dir, or a
    search trial's folder); ``aodnet@<folder>`` for any other model (imported, converted, written
    by hand), ``<folder>`` being the one that holds it.
    """
    if meta.get("version") is not None:
        return f"{meta['backbone']}/{meta['version']}"
    checkpoint = (meta.get("source") or {}).get("checkpoint")
    folder = location(checkpoint if checkpoint is not None else file).parent  # a path or a storage URI
    if re.fullmatch(r"checkpoint_\d+", folder.name):  # Ray Tune keeps <trial>/checkpoint_000004/checkpoint.pt
        folder = folder.parent
    if meta.get("epoch") is not None:
        return f"{meta['backbone']}@{folder.name}:epoch{meta['epoch']}"
    return f"{meta['backbone']}@{folder.name}"
