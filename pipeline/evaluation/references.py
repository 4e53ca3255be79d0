"""Scores that do not depend on the model, computed once per dataset and kept in the node's cache.

The hazy input's own PSNR/SSIM (the bar a dehazer must clear) and the dark channel
prior's are the same for every trial, epoch and evaluation of a dataset. They are kept per
image in ``<cache>/references-v<VERSION>/<fingerprint>-<crop>.parquet`` under
``$BILD_CACHE`` (pipeline.files.default_cache_dir): ``fingerprint`` is the dataset index's
(pipeline.data.index: file names, sizes and modification times, so an edited dataset gets
new rows), ``crop`` says how images were cut before scoring (``full``, or ``centre<N>`` for
``dataset.eval_max_side``). Only images missing from the file are scored.

Several processes may add rows at once (concurrent trials): each rewrites the file
atomically with the union of what is on disk and what it scored, so at worst a row is
computed twice, never lost or half-written.
"""

from __future__ import annotations

import math
from pathlib import Path

import polars as pl
import torch

from ..data import PairIndex
from ..files import atomic_write, default_cache_dir
from .inference import score_pairs

__all__ = ["REFERENCE_SCHEMA", "ReferenceScores", "hazy_reference"]

VERSION = 1  # bump when a metric's definition changes: older rows must not be read back
REFERENCE_SCHEMA = {"image": pl.String, "method": pl.String, "psnr": pl.Float64, "ssim": pl.Float64,
                    "seconds": pl.Float64}
Key = tuple[str, str]  # (image path relative to the dataset root, method)


class ReferenceScores:
    """The cached reference rows of one dataset and crop; ``get`` one, ``add`` new ones."""

    def __init__(self, fingerprint: str, max_side: int | None, cache_dir: str | Path | None = None) -> None:
        crop = "full" if max_side is None else f"centre{max_side}"
        folder = Path(cache_dir or default_cache_dir()) / f"references-v{VERSION}"
        self.path = folder / f"{fingerprint}-{crop}.parquet"
        self.rows = self._read()

    def _read(self) -> dict[Key, dict[str, float]]:
        try:
            frame = pl.read_parquet(self.path)
        except Exception:  # absent, or damaged on disk: it is only a cache, score again
            return {}
        return {(r["image"], r["method"]): r for r in frame.to_dicts()}

    def get(self, image: str, method: str) -> dict[str, float] | None:
        """The row of ``image`` (relative path) for ``method``, or None when it was never scored."""
        return self.rows.get((image, method))

    def add(self, rows: list[dict[str, float | str]]) -> None:
        """Keep ``rows`` (image, method, psnr, ssim, seconds) with every row on disk now, atomically."""
        merged = {**self._read(), **self.rows, **{(r["image"], r["method"]): r for r in rows}}
        self.rows = merged
        frame = pl.DataFrame(list(merged.values()), schema=REFERENCE_SCHEMA)
        atomic_write(self.path, frame.write_parquet)


def hazy_reference(index: PairIndex, indices: list[int], device: torch.device, *,
                   max_side: int | None = None) -> dict[str, float]:
    """Mean PSNR/SSIM of the hazy inputs of ``indices`` against their ground truth, scoring only uncached images."""
    cache = ReferenceScores(index.fingerprint, max_side)
    names = [str(index.hazy[i]) for i in indices]
    missing = [i for i, name in zip(indices, names) if cache.get(name, "hazy") is None]
    if missing:
        scores = score_pairs(None, index, missing, device, max_side=max_side)
        cache.add([{"image": str(index.hazy[i]), "method": "hazy", "psnr": p, "ssim": s, "seconds": math.nan}
                   for i, p, s in zip(missing, scores["psnr"], scores["ssim"])])
    rows = [cache.get(name, "hazy") for name in names]
    return {"hazy_psnr": sum(r["psnr"] for r in rows) / len(rows), "hazy_ssim": sum(r["ssim"] for r in rows) / len(rows)}
