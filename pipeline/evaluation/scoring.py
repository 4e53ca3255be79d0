"""Scoring a model on a whole dataset in its native layout, beside two references.

Every image gets one row per method: the hazy input itself (the floor a dehazer must
clear), the dark channel prior (pipeline.baselines: no training) and the model, labelled
with its version or run (pipeline.models.model_label). PSNR and SSIM are computed at full
resolution against the ground truth (pipeline.metrics). Images of more pixels than a
``--tile`` square go through the model in overlapping tiles (``tile``, the default) or
downsampled and upsampled back (``resize``), so the model's memory stays bounded.

Pairs are read one at a time. The hazy and DCP rows do not depend on the model: they are
kept in the node's cache by the dataset's fingerprint (pipeline.evaluation.references) and
computed once per dataset. With an output file ``OUT.parquet``, rows reach disk as the run
goes, ``PART_IMAGES`` images per part file in ``OUT.parquet.parts/`` (each written
atomically); at the end the parts are merged into ``OUT.parquet`` and removed. A run that
is killed keeps its parts, and the same command resumes it: images that already have a
row for this model (in the file or its parts) are not scored again. One file may so
collect the rows of several models, one hazy and one DCP row per image.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import polars as pl
import torch

from ..data import PairIndex, read_index, to_tensor
from ..files import atomic_write
from ..hardware import resolve_precision
from ..models import load_model, model_label, resolve_model_file
from ..progress import progress_bar
from .baselines import dark_channel_prior
from .inference import STRATEGIES, dehaze_tensor, resolve_device
from .metrics import psnr, ssim
from .references import ReferenceScores

__all__ = ["PART_IMAGES", "ROW_SCHEMA", "RowFile", "evaluate", "summarize"]

ROW_SCHEMA = {
    "image": pl.String,
    "scene": pl.String,
    "method": pl.String,
    "psnr": pl.Float64,
    "ssim": pl.Float64,
    "height": pl.Int32,
    "width": pl.Int32,
    "seconds": pl.Float64,
}
REFERENCES = ("hazy", "dcp")  # the methods whose rows depend on the data only
PART_IMAGES = 25  # images per part file: a killed run loses at most this many images' rows

Method = Callable[[np.ndarray, torch.Tensor], torch.Tensor]  # (hazy uint8 HxWx3, hazy tensor) -> (1,3,H,W)


def _spread(count: int, max_images: int | None) -> list[int]:
    """At most ``max_images`` of ``count`` pairs, evenly spaced: the index is grouped by scene, so its head is one scene."""
    if max_images is None or max_images >= count:
        return list(range(count))
    if max_images < 1:
        raise ValueError(f"--max-images must be at least 1, got {max_images}")
    return np.linspace(0, count - 1, max_images).round().astype(int).tolist()


def _methods(model: torch.nn.Module, label: str, device: torch.device, strategy: str, tile: int,
             precision: str) -> dict[str, Method]:
    def run_model(_: np.ndarray, x: torch.Tensor) -> torch.Tensor:
        return dehaze_tensor(model, x.to(device), strategy=strategy, tile=tile, precision=precision).cpu()

    def run_dcp(image: np.ndarray, _: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(dark_channel_prior(image)).permute(2, 0, 1)[None]

    return {"hazy": lambda _, x: x, "dcp": run_dcp, label: run_model}


class RowFile:
    """The rows of ``OUT.parquet`` and its ``.parts/`` folder; None keeps the rows in memory only."""

    def __init__(self, out: str | os.PathLike | None) -> None:
        self.out = Path(out) if out is not None else None
        if self.out is not None and self.out.is_dir():
            raise ValueError(f"--out {self.out} is a folder; expected a file name such as rows.parquet")
        self.parts = self.out.with_name(self.out.name + ".parts") if self.out is not None else None
        self.frame = self._read()
        self.keys = set(zip(self.frame["image"].to_list(), self.frame["method"].to_list()))

    def _files(self) -> list[Path]:
        if self.out is None:
            return []
        return ([self.out] if self.out.is_file() else []) + sorted(self.parts.glob("part-*.parquet"))

    def _read(self) -> pl.DataFrame:
        frames = [pl.read_parquet(f) for f in self._files()]
        merged = pl.concat(frames) if frames else pl.DataFrame(schema=ROW_SCHEMA)
        # A merge that died after writing OUT but before removing the parts reads them twice.
        return merged.unique(subset=["image", "method"], keep="first", maintain_order=True)

    def has(self, image: str, method: str) -> bool:
        return (image, method) in self.keys

    def scored(self, method: str) -> set[str]:
        """Images that already have a row for ``method``."""
        return {image for image, m in self.keys if m == method}

    def append(self, rows: list[dict]) -> None:
        """Keep ``rows``, written at once as the next part file."""
        new = pl.DataFrame(rows, schema=ROW_SCHEMA)
        self.frame = pl.concat([self.frame, new])
        self.keys |= {(r["image"], r["method"]) for r in rows}
        if self.parts is not None:
            number = len(list(self.parts.glob("part-*.parquet")))
            atomic_write(self.parts / f"part-{number:05d}.parquet", new.write_parquet)

    def finish(self) -> None:
        """Merge the parts into ``OUT`` (atomically) and remove them."""
        if self.out is None or not self.parts.is_dir():
            return
        atomic_write(self.out, self.frame.write_parquet)
        shutil.rmtree(self.parts)


def _score_image(index: PairIndex, i: int, methods: dict[str, Method], refs: ReferenceScores,
                 rows: RowFile) -> tuple[list[dict], list[dict]]:
    """(rows to write, new reference rows to cache) for pair ``i``; cached or written references are not redone."""
    name, image = str(index.hazy[i]), str(index.hazy_path(i))
    hazy_img, clear_img = index.pair(i)
    hazy, clear = to_tensor(hazy_img), to_tensor(clear_img)
    base = {"image": image, "scene": str(index.scenes[i]), "height": hazy.shape[2], "width": hazy.shape[3]}
    out, new_refs = [], []
    for method, run in methods.items():
        if method in REFERENCES and rows.has(image, method):
            continue
        cached = refs.get(name, method) if method in REFERENCES else None
        if cached is None:
            start = time.perf_counter()
            result = run(hazy_img, hazy)
            seconds = time.perf_counter() - start
            cached = {"psnr": float(psnr(result, clear)[0]), "ssim": float(ssim(result, clear)[0]), "seconds": seconds}
            if method in REFERENCES:
                new_refs.append({"image": name, "method": method, **cached})
        out.append({**base, "method": method, "psnr": cached["psnr"], "ssim": cached["ssim"],
                    "seconds": cached["seconds"]})
    return out, new_refs


def evaluate(
    model_path: str | os.PathLike,
    layout: str,
    root: str | os.PathLike,
    *,
    strategy: str = "tile",
    tile: int = 512,
    max_images: int | None = None,
    device: str = "auto",
    precision: str = "auto",
    progress: bool = False,
    out: str | os.PathLike | None = None,
) -> pl.DataFrame:
    """Per-image rows (image, scene, method, psnr, ssim, height, width, seconds) for hazy, dcp and the model.

    With ``out``, rows are appended to ``out`` as they are computed and a killed run resumes
    (see the module's docstring); the rows returned are those of the chosen images for hazy,
    dcp and this model, including any scored by an earlier run.
    """
    if strategy not in STRATEGIES:
        raise ValueError(f"--strategy {strategy!r}; expected one of {', '.join(STRATEGIES)}")
    rows = RowFile(out)
    model, meta = load_model(model_path)
    label = model_label(meta, resolve_model_file(model_path))
    dev = resolve_device(device)
    methods = _methods(model.to(dev), label, dev, strategy, tile, resolve_precision(precision, dev))
    index = read_index(root, layout)
    refs = ReferenceScores(index.fingerprint, None)
    picks = _spread(len(index), max_images)
    done = rows.scored(label)
    todo = [i for i in picks if str(index.hazy_path(i)) not in done]
    bar = progress_bar(total=len(todo), enabled=progress, desc=f"evaluate {label}", unit="img")
    for start in range(0, len(todo), PART_IMAGES):
        part, new_refs = [], []
        for i in todo[start:start + PART_IMAGES]:
            image_rows, image_refs = _score_image(index, i, methods, refs, rows)
            part += image_rows
            new_refs += image_refs
            bar.update()
        if new_refs:
            refs.add(new_refs)
        rows.append(part)
    bar.close()
    rows.finish()
    images = [str(index.hazy_path(i)) for i in picks]
    return rows.frame.filter(pl.col("image").is_in(images) & pl.col("method").is_in([*REFERENCES, label]))


def summarize(rows: pl.DataFrame) -> pl.DataFrame:
    """Mean PSNR, SSIM and seconds per method, in the order the methods first appear (references first)."""
    return rows.group_by("method", maintain_order=True).agg(
        images=pl.len(), psnr=pl.col("psnr").mean(), ssim=pl.col("ssim").mean(), seconds=pl.col("seconds").mean()
    )
