"""`PairIndex`: what trials share about a dataset, with no pixels in it.

An index holds the file names, which clear image each hazy image belongs to, the scene
ids and each pair's size, all read from file headers (`index_pairs`): nothing is decoded
before training starts, and nothing in it grows with the images' pixels. It is a few numpy
arrays and strings, so it pickles small and goes into Ray's object store once; trials on a
node read that one copy zero-copy, and its arrays then arrive read-only (how a trial tells
that its index came from the object store).

Pixels are read only when a pair is asked for (`PairIndex.pair`), one pair at a time,
through the per-node decoded cache when the index has one (pipeline.data.decoded).
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np

from .decoded import read_image
from .errors import DataError, SizeMismatchError
from .images import fitted_size, header_size

__all__ = ["PairIndex", "PairRef", "index_pairs"]


class PairRef(NamedTuple):
    """One hazy file, its clear file and its scene id."""

    hazy: Path
    clear: Path
    scene: str


@dataclass
class PairIndex:
    """Hazy/clear pairs of one dataset: paths relative to `root`, pairing, scenes and decoded sizes.

    Several hazy images may share one clear image (SOTS renders each clear scene 10 times),
    so clear files are listed once and `clear_of[i]` says which one belongs to pair `i`.
    `sizes[i]` is (height, width) of both images of pair `i` as `pair(i)` returns them,
    after shrinking to `max_side`.
    """

    root: str
    hazy: np.ndarray  # (N,) str
    clear: np.ndarray  # (C,) str
    clear_of: np.ndarray  # (N,) int64
    scenes: np.ndarray  # (N,) str
    sizes: np.ndarray  # (N, 2) int64
    name: str
    layout: str
    fingerprint: str  # see `fingerprint_of`: names, pairing, sizes and file stamps, never pixels
    max_side: int | None = None
    cache_dir: str | None = None  # decoded-image cache (pipeline.data.decoded); None decodes every time

    def __post_init__(self) -> None:
        n = len(self.hazy)
        if not (len(self.clear_of) == len(self.scenes) == len(self.sizes) == n):
            raise ValueError("hazy, clear_of, scenes and sizes must have one entry per pair")
        if n and (self.clear_of.min() < 0 or self.clear_of.max() >= len(self.clear)):
            raise ValueError("clear_of holds an index outside the clear images")

    def __len__(self) -> int:
        return len(self.hazy)

    def hazy_path(self, i: int) -> Path:
        return Path(self.root) / str(self.hazy[i])

    def clear_path(self, i: int) -> Path:
        """The clear file of pair `i`."""
        return Path(self.root) / str(self.clear[self.clear_of[i]])

    def size(self, i: int) -> tuple[int, int]:
        """(height, width) of pair `i` as decoded."""
        h, w = self.sizes[i]
        return int(h), int(w)

    def scene_ids(self) -> list[str]:
        """The distinct scene ids, sorted."""
        return sorted({str(s) for s in self.scenes})

    def pair(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """(hazy, clear) of pair `i`, uint8 HxWx3 each, read now (read-only views when cached)."""
        return self._read(self.hazy_path(i), i), self._read(self.clear_path(i), i)

    def _read(self, path: Path, i: int) -> np.ndarray:
        image = read_image(path, self.max_side, self.cache_dir)
        if image.shape[:2] != self.size(i):
            # The header said otherwise: an orientation tag stored after the pixels, or a file
            # replaced since the index was built.
            h, w = self.size(i)
            raise SizeMismatchError(
                f"{path} decodes to {image.shape[1]}x{image.shape[0]} but its header said {w}x{h}; "
                "expected the size the dataset was indexed with (re-run on an unchanged folder, or check its EXIF "
                "orientation with python -m pipeline.data inspect)"
            )
        return image


def fingerprint_of(entries: list[str]) -> str:
    """sha256 hex of the index's description lines (see `index_pairs`)."""
    h = hashlib.sha256()
    for line in entries:
        h.update(line.encode())
        h.update(b"\n")
    return h.hexdigest()


def _stamp(path: Path) -> str:
    stat = path.stat()
    return f"{stat.st_size}\0{stat.st_mtime_ns}"


def index_pairs(
    root: Path, refs: list[PairRef], *, name: str, layout: str, max_side: int | None = None,
    cache_dir: str | None = None,
) -> tuple[PairIndex | None, list[DataError]]:
    """Index `refs` from their headers: (the index of the good pairs or None, the problems of the others).

    A pair is bad when either header cannot be read or the two sizes differ. The
    fingerprint covers, per file, its path relative to `root`, size in bytes and
    modification time, plus the pairing, scenes, decoded sizes, layout and `max_side`: any
    change to the files changes it, and computing it reads no pixels.
    """
    sizes: dict[Path, tuple[int, int] | DataError] = {}

    def size_of(path: Path) -> tuple[int, int] | DataError:
        if path not in sizes:
            try:
                sizes[path] = header_size(path)
            except DataError as err:
                sizes[path] = err
        return sizes[path]

    kept: list[tuple[PairRef, tuple[int, int]]] = []
    problems: list[DataError] = []
    for ref in refs:
        clear, hazy = size_of(ref.clear), size_of(ref.hazy)
        if isinstance(clear, DataError) or isinstance(hazy, DataError):
            problems.append(clear if isinstance(clear, DataError) else hazy)
        elif hazy != clear:
            problems.append(SizeMismatchError(
                f"{ref.hazy} is {hazy[1]}x{hazy[0]} but its ground truth {ref.clear} is {clear[1]}x{clear[0]}; "
                "expected the same size"
            ))
        else:
            kept.append((ref, fitted_size(*hazy, max_side)))
    if not kept:
        return None, problems
    return _build(root, kept, name=name, layout=layout, max_side=max_side, cache_dir=cache_dir), problems


def _build(root: Path, kept: list[tuple[PairRef, tuple[int, int]]], *, name: str, layout: str,
           max_side: int | None, cache_dir: str | None) -> PairIndex:
    root = Path(os.path.abspath(root))  # trials may run in another working folder (Ray's trial folders)
    clear_index: dict[Path, int] = {}
    for ref, _ in kept:
        clear_index.setdefault(ref.clear, len(clear_index))
    rel = lambda p: os.path.relpath(p, root)  # noqa: E731
    hazy = [rel(ref.hazy) for ref, _ in kept]
    clear = [rel(p) for p in clear_index]
    clear_of = [clear_index[ref.clear] for ref, _ in kept]
    lines = [f"{layout}\0{max_side}"]
    lines += [f"{h}\0{ref.scene}\0{c}\0{s[0]}x{s[1]}\0{_stamp(ref.hazy)}"
              for h, c, (ref, s) in zip(hazy, clear_of, kept)]
    lines += [f"{c}\0{_stamp(p)}" for c, p in zip(clear, clear_index)]
    return PairIndex(
        root=str(root),
        hazy=np.array(hazy, dtype=str),
        clear=np.array(clear, dtype=str),
        clear_of=np.array(clear_of, dtype=np.int64),
        scenes=np.array([ref.scene for ref, _ in kept], dtype=str),
        sizes=np.array([s for _, s in kept], dtype=np.int64).reshape(-1, 2),
        name=name,
        layout=layout,
        fingerprint=fingerprint_of(lines),
        max_side=max_side,
        cache_dir=cache_dir,
    )
