"""`PairStore`: the one container of decoded image pairs that every trial shares.

It is a plain dataclass of numpy arrays, lists and strings (no open files, no
tensors), so it pickles cheaply and can be put into Ray's object store unchanged;
concurrent trials then read one copy of the decoded dataset.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np

__all__ = ["PairStore"]


@dataclass
class PairStore:
    """Decoded hazy/clear pairs, uint8 HxWx3 RGB.

    Several hazy images may share one clear image (SOTS renders each clear scene
    10 times), so clear images are stored once and `clear_of[i]` says which one
    belongs to pair `i`.
    """

    hazy: list[np.ndarray]
    clear: list[np.ndarray]
    clear_of: list[int]
    scenes: list[str]
    hazy_paths: list[str]
    clear_paths: list[str]
    name: str
    layout: str

    def __post_init__(self) -> None:
        n = len(self.hazy)
        if not (len(self.clear_of) == len(self.scenes) == len(self.hazy_paths) == n):
            raise ValueError("hazy, clear_of, scenes and hazy_paths must have one entry per pair")
        if len(self.clear_paths) != len(self.clear):
            raise ValueError("clear_paths must have one entry per clear image")
        if any(not 0 <= c < len(self.clear) for c in self.clear_of):
            raise ValueError("clear_of holds an index outside the clear images")

    def __len__(self) -> int:
        return len(self.hazy)

    def pair(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """(hazy, clear) of pair `i`, both uint8 HxWx3."""
        return self.hazy[i], self.clear[self.clear_of[i]]

    def scene_ids(self) -> list[str]:
        """The distinct scene ids, sorted."""
        return sorted(set(self.scenes))

    def fingerprint(self) -> str:
        """sha256 hex of the pixels, shapes, pairing and scene ids; equal stores give equal prints."""
        h = hashlib.sha256()
        for i in range(len(self)):
            h.update(f"{self.scenes[i]}\0{self.clear_of[i]}\0{self.hazy[i].shape}\0".encode())
            h.update(np.ascontiguousarray(self.hazy[i]).tobytes())
        for img in self.clear:
            h.update(f"{img.shape}\0".encode())
            h.update(np.ascontiguousarray(img).tobytes())
        return h.hexdigest()

    @property
    def nbytes(self) -> int:
        """Bytes held by the pixel arrays (hazy and clear)."""
        return sum(a.nbytes for a in self.hazy) + sum(a.nbytes for a in self.clear)
