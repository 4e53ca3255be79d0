"""`load_dataset`: the single door from a config's dataset block to a `PairStore`."""

from __future__ import annotations

from pathlib import Path

from .builtin import load_builtin
from .errors import DataError
from .layouts import read_pairs
from .store import PairStore

__all__ = ["load_dataset"]


def load_dataset(
    layout: str, root: str | Path | None, *, skip_bad: bool = False, max_side: int | None = None
) -> PairStore:
    """Load a dataset by layout name.

    "builtin" needs no files: `root`, when given, is the cache folder, and
    `max_side` is ignored (its tiles are 96 px). Any other layout (or "auto")
    reads the folder `root` with `read_pairs`.
    """
    if layout == "builtin":
        return load_builtin(root)
    if root is None:
        raise DataError(f"layout {layout!r} reads a folder; expected a dataset root, got none")
    return read_pairs(root, layout, skip_bad=skip_bad, max_side=max_side)
