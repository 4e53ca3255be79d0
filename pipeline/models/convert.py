"""Turning a pickled model file of earlier versions into ``model.safetensors`` + ``card.json``.

    python -m pipeline.models convert models/ffanet/v2/model.pt
    python -m pipeline.models convert downloaded/model.pt --out models/ffanet/v9 --trust

Takes a promoted ``model.pt`` (``bild-model/1``) or a training ``checkpoint.pt`` (its backbone
alone is kept). The file is read with the safe loader, which unpickles tensors and plain
data only. A file that needs more is refused, unless ``trust`` (``--trust``) is given: then it
is unpickled without torch's weights-only guard, which RUNS whatever code the file holds. Use it only
on files from a source you trust; once converted, the model loads without unpickling.

A card.json beside an old model.pt (its provenance: source trial, scores, config) is kept in
the new card. The old file is left where it was.
"""

from __future__ import annotations

import os
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from ..checkpoints import CHECKPOINT_FORMAT, load_checkpoint
from .store import (CARD_FILE, LEGACY_MODEL_FORMAT, MODEL_FILE, build_backbone, file_sha256, read_card, read_weights,
                    save_model)

__all__ = ["convert"]

TRUST_ADVICE = "rerun with --trust only if you trust where the file came from (that runs the code inside it)"


def _provenance(file: Path, state: dict[str, Any], trusted: bool) -> dict[str, Any]:
    """The old card's fields (or a checkpoint's config and epoch), plus where and how the conversion ran."""
    old_card = file.parent / CARD_FILE
    if state["format"] == LEGACY_MODEL_FORMAT and old_card.is_file():
        provenance = {k: v for k, v in read_card(old_card).items() if k != "format"}
    elif state["format"] == CHECKPOINT_FORMAT:
        provenance = {"config": state.get("config"), "source": {"checkpoint": str(file), "epoch": state.get("epoch")}}
    else:
        provenance = {}
    provenance["converted"] = {
        "from": str(file), "format": state["format"], "sha256": file_sha256(file), "unsafe_unpickling": trusted,
        "at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    return provenance


def convert(path: str | os.PathLike, out_dir: str | os.PathLike | None = None, *, trust: bool = False) -> dict[str, Any]:
    """Write ``model.safetensors`` + ``card.json`` for the old model or checkpoint ``path`` into ``out_dir``
    (default: beside it); returns the card plus ``path`` (the folder)."""
    file = Path(path)
    if not file.is_file():
        raise FileNotFoundError(f"{file} does not exist; expected an older model.pt or a training checkpoint.pt")
    state = load_checkpoint(file, (LEGACY_MODEL_FORMAT, CHECKPOINT_FORMAT), advice=TRUST_ADVICE, trust=trust)
    backbone, weights = read_weights(file, state)
    build_backbone(file, backbone, weights)  # refuse weights that do not fit before writing anything
    out = file.parent if out_dir is None else Path(out_dir)
    if (out / MODEL_FILE).exists():
        raise FileExistsError(f"{out / MODEL_FILE} already exists; pass another --out")
    card = save_model(out, backbone, weights, _provenance(file, state, trust))
    return {**card, "path": str(out)}
