"""Importing an original repository's checkpoint into a model folder (model.safetensors + card.json).

    python -m pipeline.models import --backbone aodnet dehazer.pth
    python -m pipeline.models import --backbone ffanet its_train_ffa_3_19.pk --out models/ffanet/published

The file is read with the safe loader (tensors and plain containers only: nothing in it runs).
A state dict wrapped by the training script (``{'model': ...}``, ``{'state_dict': ...}``) is
unwrapped and wrapper prefixes (``module.`` from DataParallel, ``_orig_mod.`` from
torch.compile) are stripped. Every name is then mapped through the table the backbone
registers beside its network (``pipeline.backbones._original``), and every shape is checked:
the first missing, extra or misshapen tensor refuses the file, in one line, before anything is
written. The card records where the weights came from: the file's sha256, and the repository,
commit and file whose names the mapping follows.
"""

from __future__ import annotations

import os
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

from ..backbones import OriginalFormat, backbone_kwargs, build_from_kwargs, original_format, original_names
from ..checkpoints import CheckpointError, safe_load
from .store import MODEL_FILE, build_backbone, file_sha256, model_label, save_model

__all__ = ["expected_tensors", "import_original", "original_state_dict"]

WRAPPERS = ("model", "state_dict", "net")  # keys training scripts keep the state dict under
PREFIXES = ("module.", "_orig_mod.")  # DataParallel / DistributedDataParallel, torch.compile
ADVICE = ("nothing in it is run; a whole pickled model (MSBDN-DFF's model.pkl) imports as its state dict: "
          "torch.save(model.state_dict(), 'state.pth') where you trust the file and its code, then import state.pth")
EXPECTED = "expected a PyTorch state dict, or a dict holding one under 'model' or 'state_dict'"


def _is_state_dict(value: Any) -> bool:
    return (isinstance(value, dict) and bool(value)
            and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in value.items()))


def _strip(name: str) -> str:
    while name.startswith(PREFIXES):
        name = next(name.removeprefix(p) for p in PREFIXES if name.startswith(p))
    return name


def original_state_dict(file: Path) -> dict[str, torch.Tensor]:
    """The tensors of an original checkpoint under their original names, unwrapped and without prefixes."""
    loaded = safe_load(file, advice=ADVICE, expected=EXPECTED)
    if isinstance(loaded, dict) and not _is_state_dict(loaded):
        loaded = next((loaded[k] for k in WRAPPERS if _is_state_dict(loaded.get(k))), loaded)
    if not _is_state_dict(loaded):
        what = f"a dict with keys {', '.join(map(str, list(loaded)[:5]))}" if isinstance(loaded, dict) else (
            f"a {type(loaded).__name__}")
        raise CheckpointError(f"{file} holds {what}, not a state dict of tensors; {EXPECTED}")
    return {_strip(name): tensor for name, tensor in loaded.items()}


def expected_tensors(fmt: OriginalFormat, name: str, kwargs: dict[str, Any]
                     ) -> tuple[dict[str, str], dict[str, tuple]]:
    """(project name -> original name, original name -> shape) of backbone ``name`` built with ``kwargs``:
    what an original checkpoint of that network holds."""
    with torch.device("meta"):  # shapes only: no memory for a 31M-parameter network
        shapes = {k: tuple(v.shape) for k, v in build_from_kwargs(name, kwargs).state_dict().items()}
    names = original_names(fmt, list(shapes), kwargs)
    expected = {original: shapes[project] for project, original in names.items()}
    expected.update({p.name: p.shape(kwargs) for p in fmt.packed})
    return names, expected


def _check(file: Path, found: dict[str, torch.Tensor], expected: dict[str, tuple], what: str) -> None:
    """Refuse ``file`` naming the first missing, extra or misshapen tensor."""
    missing = next((k for k in expected if k not in found), None)
    if missing is not None:
        raise CheckpointError(f"{file} lacks tensor {missing!r} (shape {list(expected[missing])}); expected {what}")
    extra = next((k for k in found if k not in expected), None)
    if extra is not None:
        raise CheckpointError(f"{file} has tensor {extra!r}, which {what} does not have")
    wrong = next((k for k in expected if tuple(found[k].shape) != expected[k]), None)
    if wrong is not None:
        raise CheckpointError(f"{file}: tensor {wrong!r} has shape {list(found[wrong].shape)}, "
                              f"expected {list(expected[wrong])} for {what}")


def _as_float(t: torch.Tensor) -> torch.Tensor:
    return t.to(torch.float32) if t.is_floating_point() else t


def import_original(backbone: str, path: str | os.PathLike, out_dir: str | os.PathLike | None = None, *,
                    preset: str = "paper") -> dict[str, Any]:
    """Write ``model.safetensors`` + ``card.json`` for the original checkpoint ``path`` of ``backbone`` at
    ``preset`` into ``out_dir`` (default ``models/<backbone>/<file stem>``); returns the card plus ``path`` and
    ``label``."""
    file = Path(path)
    if not file.is_file():
        raise FileNotFoundError(f"{file} does not exist; expected an original {backbone} checkpoint")
    fmt = original_format(backbone)
    kwargs = backbone_kwargs(backbone, preset, **fmt.kwargs)
    found = original_state_dict(file)
    names, expected = expected_tensors(fmt, backbone, kwargs)
    _check(file, found, expected, f"the {backbone} {preset} network of {fmt.repository}")
    weights = {project: _as_float(found[original]) for project, original in names.items()}
    for packed in fmt.packed:
        weights.update({name: _as_float(found[packed.name][index]).clone()
                        for name, index in packed.slices(kwargs).items()})
    info = {"name": backbone, "preset": preset, "kwargs": kwargs}
    build_backbone(file, info, weights)
    out = Path("models") / backbone / file.stem if out_dir is None else Path(out_dir)
    if (out / MODEL_FILE).exists():
        raise FileExistsError(f"{out / MODEL_FILE} already exists; pass another --out")
    imported = {"from": str(file.resolve()), "sha256": file_sha256(file), "repository": fmt.repository, "commit": fmt.commit,
                "file": fmt.file, "notes": fmt.notes, "at": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    card = save_model(out, info, weights, {"provenance": "imported", "imported": imported})
    return {**card, "path": str(out), "label": model_label(card, out / MODEL_FILE)}
