"""`load_dataset`: the single door from a config's dataset block to a `PairIndex`."""

from __future__ import annotations

from pathlib import Path

from .builtin import load_builtin
from .errors import DataError
from .index import PairIndex
from .layouts import read_index

__all__ = ["load_dataset"]


def load_dataset(
    layout: str, root: str | Path | None, *, skip_bad: bool = False, max_side: int | None = None,
    decoded_cache: str | None = None,
) -> PairIndex:
    """Index a dataset by layout name, decoding nothing.

    "builtin" needs no files: `root`, when given, is the folder its generated files go
    to, and `max_side` is ignored (its tiles are 96 px). Any other layout (or "auto")
    indexes the folder `root` with `read_index`. `decoded_cache` is the decoded-image
    cache folder the index reads through (pipeline.data.decoded), None for none.
    """
    if layout == "builtin":
        return load_builtin(root, decoded_cache=decoded_cache)
    if root is None:
        raise DataError(f"layout {layout!r} reads a folder; expected a dataset root (--data-root DIR), got none")
    return read_index(root, layout, skip_bad=skip_bad, max_side=max_side, cache_dir=decoded_cache)
