"""Dehaze image files of any size with a trained or promoted model.

    python -m pipeline.dehaze photo.jpg folder/ --model models/ffanet --out dehazed/
    python -m pipeline.dehaze big.JPG --model models/ffanet/v2 --out dehazed/ --strategy resize --tile 1024

A folder stands for its PNG, JPEG and BMP files (any case; not recursive). Each output
keeps its input's name and format under --out (JPEG at quality 95). A file that cannot be
read or written is reported on stderr and skipped; the rest are done.
Exit status: 0 all done, 1 some skipped, 2 none done (or bad usage).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from tqdm import tqdm

from .data import DataError
from .data.images import IMAGE_EXTENSIONS, decode_image, is_image_file
from .inference import STRATEGIES, add_inference_flags, dehaze_image, resolve_device
from .models import load_model

__all__ = ["collect_inputs", "dehaze_paths", "main"]

JPEG_QUALITY = 95


def collect_inputs(inputs: Sequence[str | os.PathLike]) -> tuple[list[Path], list[tuple[str, str]]]:
    """(image files to do, [(input, reason)] for inputs that are missing or not images)."""
    files: list[Path] = []
    failed: list[tuple[str, str]] = []
    for item in map(Path, inputs):
        if item.is_dir():
            files += sorted(p for p in item.iterdir() if is_image_file(p))
        elif not item.exists():
            failed.append((str(item), "does not exist"))
        elif item.suffix.lower() not in IMAGE_EXTENSIONS:
            failed.append((str(item), f"not an image file name; expected one ending in {', '.join(IMAGE_EXTENSIONS)}"))
        else:
            files.append(item)
    return files, failed


def _save(image: np.ndarray, path: Path) -> None:
    """Write under a temporary name and rename: an interrupted run never leaves half an image."""
    fmt = Image.registered_extensions()[path.suffix.lower()]
    tmp = path.with_name(f".{path.name}.tmp")
    Image.fromarray(image).save(tmp, format=fmt, **({"quality": JPEG_QUALITY} if fmt == "JPEG" else {}))
    os.replace(tmp, path)


def _target(src: Path, out_dir: Path, taken: dict[Path, Path]) -> Path:
    dst = out_dir / src.name
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
    progress: bool = True,
) -> dict[str, list[Any]]:
    """Dehaze files and folders into ``out_dir``; returns ``{"done": [output paths], "failed": [(input, reason)]}``."""
    if strategy not in STRATEGIES:
        raise ValueError(f"--strategy {strategy!r}; expected one of {', '.join(STRATEGIES)}")
    model, _ = load_model(model_path)
    dev = resolve_device(device)
    model = model.to(dev)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    files, failed = collect_inputs(inputs)
    done: list[str] = []
    taken: dict[Path, Path] = {}
    for src in tqdm(files, desc="dehaze", unit="img", disable=not progress):
        try:
            dst = _target(src, out, taken)
            _save(dehaze_image(model, decode_image(src), dev, strategy=strategy, tile=tile), dst)
        # RuntimeError: torch on an image the network cannot take (too small, out of memory).
        except (DataError, ValueError, OSError, RuntimeError) as err:
            failed.append((str(src), str(err)))
            continue
        done.append(str(dst))
    return {"done": done, "failed": failed}


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m pipeline.dehaze", description=__doc__.split("\n\n")[0])
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="image files and/or folders of images")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder (created if missing)")
    add_inference_flags(p)
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        result = dehaze_paths(args.inputs, args.model, args.out, strategy=args.strategy, tile=args.tile,
                              device=args.device)
    except (FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    for path, reason in result["failed"]:
        print(f"skipped {path}: {reason}", file=sys.stderr)
    print(f"dehazed {len(result['done'])} image(s) into {args.out}; skipped {len(result['failed'])}")
    if not result["done"]:
        return 2
    return 1 if result["failed"] else 0


if __name__ == "__main__":
    raise SystemExit(main())
