"""Reading a pair's images from disk, through an optional per-node cache of decoded pixels.

Decoding a 620x460 PNG costs 17-34 ms on the project's 2-core machine; reading the same
pixels back from an uncompressed ``.npy`` file costs about 1 ms, and a training crop touches
only the rows it cuts (docs/scale.md has the measurement). The cache keeps one ``.npy`` per
(image file, max_side), written atomically on its first decode and opened memory-mapped
after that, so every trial on a node reads the same pages from the page cache. It takes as
much disk as the decoded dataset (about 13 GB for RESIDE ITS), which is why it can be
turned off (``dataset.decoded_cache=false``).

A cache entry is keyed by the file's absolute path, size and modification time: an edited
or replaced image is decoded afresh, and a stale entry is never read.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

from ..files import atomic_write, default_cache_dir
from .images import decode_image, fit_max_side

__all__ = ["CACHE_VERSION", "decoded_cache_dir", "read_image"]

CACHE_VERSION = 1  # bump when what a cache entry holds changes


def decoded_cache_dir(enabled: bool) -> str | None:
    """The node's decoded-image cache folder when ``enabled`` (under `default_cache_dir`), else None."""
    return str(default_cache_dir() / f"decoded-v{CACHE_VERSION}") if enabled else None


def _entry(path: Path, max_side: int | None, cache_dir: str) -> Path:
    stat = path.stat()
    key = hashlib.sha1(f"{path.resolve()}\0{stat.st_size}\0{stat.st_mtime_ns}\0{max_side}".encode()).hexdigest()
    return Path(cache_dir) / key[:2] / f"{key}.npy"


def _write_npy(tmp: Path, image: np.ndarray) -> None:
    with open(tmp, "wb") as f:  # a file object: np.save would append ".npy" to the temporary name
        np.save(f, image, allow_pickle=False)


def read_image(path: Path, max_side: int | None, cache_dir: str | None) -> np.ndarray:
    """uint8 HxWx3 RGB pixels of ``path`` shrunk to ``max_side``; memory-mapped and read-only when cached.

    Without ``cache_dir`` the file is decoded every time.
    """
    if cache_dir is None:
        return fit_max_side(decode_image(path), max_side)
    entry = _entry(path, max_side, cache_dir)
    try:
        return np.load(entry, mmap_mode="r", allow_pickle=False)
    except (FileNotFoundError, ValueError):  # not cached yet, or an entry damaged on disk: decode again
        pass
    image = fit_max_side(decode_image(path), max_side)
    atomic_write(entry, lambda tmp: _write_npy(tmp, image))
    return image
