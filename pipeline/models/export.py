"""Promoted models that leave the project: the backbone as ONNX or TorchScript, any image size.

    python -m pipeline.export models/ffanet --format onnx --out ffanet.onnx
    python -m pipeline.export models/aodnet/v2 --format torchscript --out aodnet.torchscript.pt

The exported graph takes ``hazy``, a float32 (N, 3, H, W) RGB batch in [0, 1], and returns
``clear`` of the same shape (not clamped: clamp to [0, 1] before writing 8-bit images). N, H
and W are dynamic.

ONNX goes through ``torch.onnx.export(dynamo=False)``, the TorchScript-based exporter: the
dynamo exporter (torch's default since 2.9) needs the ``onnxscript`` package, which the
``export`` extra does not pull in. TorchScript is ``torch.jit.trace``.

Tracing records the shapes a forward computes in Python as constants: a backbone that pads
to a multiple of its stride in Python (MSBDN, GridDehazeNet) or sizes its dark channel from the
image (DehazeNet) traces to a graph of one image size. So an export is checked before it is
kept: the written file is run at a second size and batch, and compared with PyTorch; a
difference above 1e-4 (or a failure) refuses the export and leaves nothing behind. The card
of a promoted model records each export that passed (format, file, sha256, check).
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..checkpoints import one_line
from ..files import atomic_write
from ..storage import Location
from .store import CARD_FILE, file_sha256, load_model, model_origin, read_card, write_card

__all__ = ["FORMATS", "ONNX_OPSET", "TOLERANCE", "ExportError", "export_model"]

FORMATS = ("onnx", "torchscript")
ONNX_OPSET = 17
TOLERANCE = 1e-4  # max |exported - PyTorch| on the check inputs
TRACE_SHAPE = (1, 3, 64, 96)
CHECK_SHAPE = (2, 3, 45, 71)  # another batch and odd sizes: a graph fixed to the tracing shape fails here
AXES = {0: "batch", 2: "height", 3: "width"}
SHAPE_HINT = "a forward that computes sizes in Python traces to a graph of one image size"

Runner = Callable[[torch.Tensor], np.ndarray]


class ExportError(ValueError):
    """A model that does not export, or whose export does not reproduce PyTorch; the message says which."""


def _onnx_runner(path: Path) -> Runner:
    try:
        import onnxruntime as ort
    except ImportError as err:
        raise ExportError("checking an ONNX export needs onnxruntime: pip install 'bild-dehaze[export]'") from err
    options = ort.SessionOptions()
    options.log_severity_level = 4  # a failing check is reported as one ExportError, not also as onnxruntime's log
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return lambda x: session.run(["clear"], {"hazy": x.numpy()})[0]


def _write_onnx(model: nn.Module, example: torch.Tensor, path: Path) -> Runner:
    with warnings.catch_warnings():
        # The TorchScript-based exporter announces its deprecation and its constant folding on every
        # call, and tracing warns of shapes it fixes: the check after export is what decides.
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.filterwarnings("ignore", category=UserWarning, module=r"torch\.onnx")
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        torch.onnx.export(model, (example,), str(path), dynamo=False, opset_version=ONNX_OPSET,
                          input_names=["hazy"], output_names=["clear"],
                          dynamic_axes={"hazy": AXES, "clear": AXES})
    return _onnx_runner(path)


def _write_torchscript(model: nn.Module, example: torch.Tensor, path: Path) -> Runner:
    with warnings.catch_warnings():
        # torch 2.13 marks TorchScript deprecated in favour of torch.export; a TorchScript file still
        # runs in torch and in libtorch (C++) without this package, which is what the export is for.
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        traced = torch.jit.trace(model, (example,), check_trace=False)  # the check below runs a harder case
        torch.jit.save(traced, str(path))
        loaded = torch.jit.load(str(path), map_location="cpu")

    def run(x: torch.Tensor) -> np.ndarray:
        with torch.no_grad():
            return loaded(x).numpy()

    return run


WRITERS: dict[str, Callable[[nn.Module, torch.Tensor, Path], Runner]] = {
    "onnx": _write_onnx, "torchscript": _write_torchscript,
}


def _write(fmt: str, model: nn.Module, example: torch.Tensor, path: Path, name: str) -> Runner:
    try:
        return WRITERS[fmt](model, example, path)
    except ExportError:
        raise
    except Exception as err:  # tracing runs the whole forward: any error type a backbone can raise
        raise ExportError(f"{name} could not be exported to {fmt} ({type(err).__name__}: {one_line(err)}); "
                          f"{SHAPE_HINT}") from err


def _check(model: nn.Module, run: Runner, name: str, fmt: str) -> list[dict[str, Any]]:
    """Run the written file at the tracing shape and another; refuse it unless it matches PyTorch."""
    generator = torch.Generator().manual_seed(0)
    checks = []
    for shape in (TRACE_SHAPE, CHECK_SHAPE):
        x = torch.rand(shape, generator=generator)
        with torch.no_grad():
            expected = model(x).numpy()
        where = f"{name} exported to {fmt} does not reproduce PyTorch at input {tuple(shape)}"
        try:
            got = run(x)
        except Exception as err:  # onnxruntime and the TorchScript interpreter raise their own types
            raise ExportError(f"{where}: it fails there ({one_line(err)[:200]}); {SHAPE_HINT}") from err
        if got.shape != expected.shape:
            raise ExportError(f"{where}: output shape {got.shape}, expected {expected.shape}")
        diff = float(np.abs(got - expected).max())
        if not diff <= TOLERANCE:
            raise ExportError(f"{where}: max |difference| {diff:.3g} > {TOLERANCE}")
        checks.append({"shape": list(shape), "max_abs_diff": diff})
    return checks


def _record(card_file: Location, out: Path, fmt: str, checks: list[dict[str, Any]]) -> None:
    """Add (or replace, for the same file) this export in the card, written atomically."""
    card = read_card(card_file)
    entry = {"format": fmt, "file": str(out.resolve()), "sha256": file_sha256(out), "input": "hazy",
             "output": "clear", "dynamic_axes": list(AXES.values()), "checked": checks, "tolerance": TOLERANCE,
             "torch": torch.__version__, "exported_at": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    if fmt == "onnx":
        entry["opset"] = ONNX_OPSET
    card["exports"] = [e for e in card.get("exports", []) if e.get("file") != entry["file"]] + [entry]
    write_card(card_file.parent, card)


def export_model(model_path: str | os.PathLike, fmt: str, out: str | os.PathLike) -> dict[str, Any]:
    """Export the backbone of a promoted model (any form ``load_model`` takes) to ``out``; returns
    {format, out, backbone, preset, checks, card (the card.json it was recorded in, or None)}."""
    if fmt not in FORMATS:
        raise ValueError(f"--format {fmt!r}; expected one of {', '.join(FORMATS)}")
    out = Path(out)
    if out.is_dir():
        raise ValueError(f"--out {out} is a folder; expected a file name such as model.{fmt}")
    origin = model_origin(model_path)  # a model in an object store is read from the cache, its card updated there
    model, meta = load_model(origin)
    # channels_last is the CPU inference layout load_model picks; exported graphs take plain NCHW.
    model = model.to(memory_format=torch.contiguous_format)
    example = torch.rand(TRACE_SHAPE, generator=torch.Generator().manual_seed(0))
    checks: list[dict[str, Any]] = []

    def write(tmp: Path) -> None:
        checks.extend(_check(model, _write(fmt, model, example, tmp, meta["backbone"]), meta["backbone"], fmt))

    atomic_write(out, write)  # a refused export leaves no file
    # Only a promoted model.safetensors owns its card; an older model.pt's card is left as it was.
    card_file = origin.parent / CARD_FILE if origin.name.endswith(".safetensors") else None
    if card_file is not None:
        _record(card_file, out, fmt, checks)
    return {"format": fmt, "out": str(out), "backbone": meta["backbone"], "preset": meta.get("preset"),
            "checks": checks, "card": str(card_file) if card_file else None}
