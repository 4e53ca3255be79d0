"""Dehazing image files of any size with a trained or promoted model.

A folder stands for its image files of any format Pillow decodes (any case; not recursive;
a GIF's first frame); its other visible files are reported as skipped. Each output keeps its
input's name and format under --out (JPEG at quality 95; a format Pillow cannot write becomes
``<name>.png``). A file that cannot be read or written is reported on stderr and skipped; the
rest are done.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from ..data import DataError
from ..data.images import FORMATS_READ, decode_image, is_image_file, skip_reason
from ..files import atomic_write
from ..hardware import resolve_precision
from ..models import load_model
from ..progress import progress_bar
from .inference import STRATEGIES, dehaze_image, resolve_device

__all__ = ["collect_inputs", "dehaze_paths"]

JPEG_QUALITY = 95


def collect_inputs(inputs: Sequence[str | os.PathLike]) -> tuple[list[Path], list[tuple[str, str]]]:
    """(image files to do, [(input, reason)] for inputs that are missing or not images)."""
    files: list[Path] = []
    failed: list[tuple[str, str]] = []
    for item in map(Path, inputs):
        if item.is_dir():
            listed = sorted(item.iterdir())
            files += [p for p in listed if is_image_file(p)]
            failed += [(str(p), reason) for p in listed if (reason := skip_reason(p))]
        elif not item.exists():
            failed.append((str(item), "does not exist"))
        elif not is_image_file(item):
            failed.append((str(item), f"not an image file name; expected {FORMATS_READ}"))
        else:
            files.append(item)
    return files, failed


def _output_path(path: Path) -> Path:
    """Where an input's result goes: its own name, or ``<name>.png`` for a format Pillow reads but cannot write."""
    fmt = Image.registered_extensions().get(path.suffix.lower())
    return path if fmt in Image.SAVE else path.with_name(path.name + ".png")


def _save(image: np.ndarray, path: Path) -> None:
    """Write atomically: an interrupted run never leaves half an image."""
    fmt = Image.registered_extensions()[path.suffix.lower()]
    options = {"quality": JPEG_QUALITY} if fmt == "JPEG" else {}
    atomic_write(path, lambda tmp: Image.fromarray(image).save(tmp, format=fmt, **options))


def _target(src: Path, out_dir: Path, taken: dict[Path, Path]) -> Path:
    dst = _output_path(out_dir / src.name)
    if dst.resolve() == src.resolve():
        raise ValueError(f"writing {dst} would overwrite the input; choose another --out")
    if dst in taken:
        raise ValueError(f"{taken[dst]} already writes {dst}; inputs from different folders share this name")
    taken[dst] = src
    return dst


def dehaze_paths(
    inputs: Sequence[str | os.PathLike],
    model_path: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    strategy: str = "tile",
    tile: int = 512,
    device: str = "auto",
    precision: str = "auto",
    progress: bool = True,
) -> dict[str, list[Any]]:
    """Dehaze files and folders into ``out_dir``; returns ``{"done": [output paths], "failed": [(input, reason)]}``."""
    if strategy not in STRATEGIES:
        raise ValueError(f"--strategy {strategy!r}; expected one of {', '.join(STRATEGIES)}")
    model, _ = load_model(model_path)
    dev = resolve_device(device)
    precision = resolve_precision(precision, dev)
    model = model.to(dev)
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} is a file; expected a folder for the dehazed images")
    out.mkdir(parents=True, exist_ok=True)
    files, failed = collect_inputs(inputs)
    done: list[str] = []
    taken: dict[Path, Path] = {}
    for src in progress_bar(files, enabled=progress, desc="dehaze", unit="img"):
        try:
            dst = _target(src, out, taken)
            _save(dehaze_image(model, decode_image(src), dev, strategy=strategy, tile=tile, precision=precision), dst)
        # RuntimeError: torch on an image the network cannot take (too small, out of memory).
        except (DataError, ValueError, OSError, RuntimeError) as err:
            failed.append((str(src), str(err)))
            continue
        done.append(str(dst))
    return {"done": done, "failed": failed}
