"""Promoted models on disk, and the one loader that evaluation and dehazing share.

A promoted model is the backbone alone (the reweighter only ever exists in training):

    models/<backbone>/v<N>/model.pt     {"format": "bild-model/1", "backbone": {name, preset, kwargs}, "state_dict"}
    models/<backbone>/v<N>/card.json    where it came from and how well it did (written by pipeline.promote)
    models/<backbone>/LATEST            the newest version's folder name, e.g. "v3"
    models/index.parquet                one row per promoted model

:func:`load_model` also reads a raw training checkpoint (``bild-checkpoint/1``), so a run
can be evaluated before it is promoted.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..backbones import build_from_kwargs
from ..checkpoints import CHECKPOINT_FORMAT, load_checkpoint, save_checkpoint

__all__ = [
    "MODEL_FORMAT",
    "MODEL_FILE",
    "CARD_FILE",
    "LATEST_FILE",
    "save_model",
    "resolve_model_file",
    "load_model",
    "model_label",
]

MODEL_FORMAT = "bild-model/1"
MODEL_FILE = "model.pt"
CARD_FILE = "card.json"
LATEST_FILE = "LATEST"


def save_model(path: str | os.PathLike, backbone: dict[str, Any], state_dict: dict[str, torch.Tensor]) -> Path:
    """Write ``model.pt`` atomically: ``backbone`` is {name, preset, kwargs} as in a training checkpoint."""
    return save_checkpoint(path, {"format": MODEL_FORMAT, "backbone": backbone, "state_dict": state_dict})


def resolve_model_file(path: str | os.PathLike) -> Path:
    """The weights file behind ``path``: a file as is, a version folder's model.pt, a backbone folder's LATEST."""
    path = Path(path)
    if path.is_file():
        return path
    if not path.is_dir():
        raise FileNotFoundError(f"model {path} does not exist; expected a model folder, model.pt or checkpoint.pt")
    if (path / MODEL_FILE).is_file():
        return path / MODEL_FILE
    if (path / LATEST_FILE).is_file():
        version = (path / LATEST_FILE).read_text().strip()
        if not (path / version / MODEL_FILE).is_file():
            raise FileNotFoundError(
                f"{path / LATEST_FILE} points at {version!r}, but {path / version / MODEL_FILE} is missing"
            )
        return path / version / MODEL_FILE
    raise FileNotFoundError(
        f"{path} holds neither {MODEL_FILE} nor {LATEST_FILE}; expected models/<backbone>/v<N>/ or models/<backbone>/"
    )


def _meta(path: Path, state: dict[str, Any]) -> dict[str, Any]:
    """The card beside a promoted model, else what the file itself says about the model."""
    card = path.parent / CARD_FILE
    if state["format"] == MODEL_FORMAT and card.is_file():
        return json.loads(card.read_text())
    meta: dict[str, Any] = {"backbone": state["backbone"]["name"], "preset": state["backbone"]["preset"],
                            "source": {"checkpoint": str(path)}}
    if state["format"] == CHECKPOINT_FORMAT:
        meta.update(config=state["config"], epoch=state["epoch"])
    return meta


def load_model(path: str | os.PathLike) -> tuple[nn.Module, dict[str, Any]]:
    """(backbone in eval mode on the CPU, its card or metadata) from any form :func:`resolve_model_file` takes.

    The backbone comes in channels_last (NHWC) layout, whatever it trained in: whole-image
    inference on the CPU ran 1.25x (MSBDN) to 2.9x (DehazeNet) as fast, outputs equal to 1e-6
    (benchmarks/inference_layout.py).
    """
    file = resolve_model_file(path)
    state = load_checkpoint(file, (MODEL_FORMAT, CHECKPOINT_FORMAT))
    backbone = state["backbone"]
    model = build_from_kwargs(backbone["name"], backbone["kwargs"])
    weights = state["state_dict"] if state["format"] == MODEL_FORMAT else state["models"]["backbone"]
    model.load_state_dict(weights)
    return model.to(memory_format=torch.channels_last).eval(), _meta(file, state)


def model_label(meta: dict[str, Any]) -> str:
    """A short name for tables that tells two models of one backbone apart.

    ``aodnet/v2`` for a promoted model; ``aodnet@<run>:epoch3`` for a training checkpoint,
    where ``<run>`` is the folder of its run (``python -m pipeline.train``'s run_dir, or a
    search trial's folder); ``aodnet@<folder>`` for a model file without a card.
    """
    if "version" in meta:
        return f"{meta['backbone']}/{meta['version']}"
    folder = Path(meta["source"]["checkpoint"]).resolve().parent
    if re.fullmatch(r"checkpoint_\d+", folder.name):  # Ray Tune keeps <trial>/checkpoint_000004/checkpoint.pt
        folder = folder.parent
    if "epoch" in meta:
        return f"{meta['backbone']}@{folder.name}:epoch{meta['epoch']}"
    return f"{meta['backbone']}@{folder.name}"
