"""The built-in dataset: photographs bundled with scikit-image, hazed synthetically.

Needs no download. Five colour photographs that ship inside scikit-image
(astronaut, chelsea, coffee, rocket and the left view of stereo_motorcycle) are
resized to a short side of 288 px and cut into non-overlapping 96x96 tiles; each
tile is a scene (e.g. `astronaut_r1c2`) and gets two hazy renderings with the
atmospheric scattering model

    I = J t + A (1 - t),   t = exp(-beta(x) d(x)),   beta(x) = beta0 m(x),

where m is a smooth random field in [0.3, 1.7] (haze that is thicker in places,
unlike RESIDE's uniform beta), beta0 is drawn per rendering, and A is a slightly
coloured airlight in about [0.7, 1.0]. The motorcycle's depth comes from its
ground-truth stereo disparity (depth proportional to 1/disparity); the other
photos get a pseudo-depth (a vertical gradient, far at the top, plus a smooth
random field). Depth is scaled to [0.5, 3].

Generation is deterministic from `SEED` and takes a few seconds; the tiles are written
once as PNG files under `builtin-v{VERSION}/` in `$BILD_CACHE` (default
`~/.cache/bild-dehaze/`): `hazy/<scene>_<k>.png` and `clear/<scene>.png`, and
`pairs.json`, written last, lists the pairs in generation order. From then on the data is
indexed and read like any folder (pipeline.data.index). The files get a fixed
modification time, so the index's fingerprint is the same in every cache folder. Bump
`VERSION` whenever the recipe changes.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage
from skimage import data as skdata

from ..files import atomic_write, atomic_write_text, default_cache_dir
from .errors import DataError
from .index import PairIndex, PairRef, index_pairs

__all__ = ["load_builtin", "default_cache_dir", "VERSION"]

VERSION = 2  # 1 was an .npz of decoded arrays
SEED = 2024
TILE = 96
SHORT_SIDE = 288  # 3 tiles high: 57 scenes, 114 pairs
RENDERINGS = 2
DEPTH_RANGE = (0.5, 3.0)
BETA0_RANGE = (0.2, 0.6)
HAZE_FIELD_RANGE = (0.3, 1.7)
AIRLIGHT_RANGE = (0.7, 1.0)


def _smooth_field(shape: tuple[int, int], rng: np.random.Generator, cells: int = 4) -> np.ndarray:
    """A smooth random field of `shape`, normalised to [0, 1]: coarse noise, upsampled and blurred."""
    h, w = shape
    coarse = rng.standard_normal((cells, max(2, round(cells * w / h))))
    field = np.asarray(Image.fromarray(coarse.astype(np.float32)).resize((w, h), Image.Resampling.BICUBIC))
    field = ndimage.gaussian_filter(field, sigma=min(h, w) / (2 * cells))
    return (field - field.min()) / (np.ptp(field) + 1e-12)


def _rescale(x: np.ndarray, lo: float, hi: float) -> np.ndarray:
    return lo + (hi - lo) * (x - x.min()) / (np.ptp(x) + 1e-12)


def _motorcycle() -> tuple[np.ndarray, np.ndarray]:
    """The left stereo view and its depth from the ground-truth disparity, holes filled from the nearest valid pixel."""
    left, _, disparity = skdata.stereo_motorcycle()
    invalid = ~np.isfinite(disparity) | (disparity <= 0)
    nearest = ndimage.distance_transform_edt(invalid, return_distances=False, return_indices=True)
    disparity = disparity[tuple(nearest)]
    return left, 1.0 / disparity


def _pseudo_depth(photo: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    # Far at the top, near at the bottom, as in most outdoor photos, with smooth random relief.
    h, w = photo.shape[:2]
    gradient = np.linspace(1.0, 0.0, h)[:, None] * np.ones((1, w))
    return 0.6 * gradient + 0.4 * _smooth_field((h, w), rng)


PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "motorcycle")


def _photo_and_depth(name: str, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    if name == "motorcycle":
        return _motorcycle()
    photo = getattr(skdata, name)()
    return photo, _pseudo_depth(photo, rng)


def _resize_short_side(photo: np.ndarray, depth: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    h, w = photo.shape[:2]
    size = (round(w * SHORT_SIDE / min(h, w)), round(h * SHORT_SIDE / min(h, w)))
    photo = np.asarray(Image.fromarray(photo).resize(size, Image.Resampling.BOX))
    depth = np.asarray(Image.fromarray(depth.astype(np.float32)).resize(size, Image.Resampling.BOX))
    return photo, _rescale(depth, *DEPTH_RANGE)


def _haze(clear: np.ndarray, depth: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One rendering of the scattering model with non-uniform haze; uint8 in and out."""
    j = clear.astype(np.float64) / 255
    beta = rng.uniform(*BETA0_RANGE) * _rescale(_smooth_field(depth.shape, rng), *HAZE_FIELD_RANGE)
    t = np.exp(-beta * depth)[..., None]
    airlight = np.clip(rng.uniform(*AIRLIGHT_RANGE) + rng.uniform(-0.05, 0.05, size=3), 0, 1)
    return np.round(255 * (j * t + airlight * (1 - t))).astype(np.uint8)


Tile = tuple[str, np.ndarray, list[np.ndarray]]  # (scene, clear tile, its hazy renderings)
MANIFEST = "pairs.json"
FILE_TIME_NS = 1_700_000_000 * 10**9  # every file's mtime: the fingerprint must not depend on when it was made


def _tiles() -> Iterator[Tile]:
    rng = np.random.default_rng(SEED)
    for name in PHOTOS:
        photo, depth = _resize_short_side(*_photo_and_depth(name, rng))
        rows, cols = photo.shape[0] // TILE, photo.shape[1] // TILE
        for r in range(rows):
            for c in range(cols):
                window = (slice(r * TILE, (r + 1) * TILE), slice(c * TILE, (c + 1) * TILE))
                hazy = [_haze(photo[window], depth[window], rng) for _ in range(RENDERINGS)]
                yield f"{name}_r{r}c{c}", photo[window], hazy


def _write_png(path: Path, image: np.ndarray) -> None:
    atomic_write(path, lambda tmp: Image.fromarray(image).save(tmp, format="PNG"))
    os.utime(path, ns=(FILE_TIME_NS, FILE_TIME_NS))


def _generate(folder: Path) -> None:
    """Write every tile into ``folder``, then the manifest that marks the folder complete."""
    pairs = []
    for scene, clear, hazy in _tiles():
        _write_png(folder / "clear" / f"{scene}.png", clear)
        for k, image in enumerate(hazy):
            _write_png(folder / "hazy" / f"{scene}_{k}.png", image)
            pairs.append([f"hazy/{scene}_{k}.png", f"clear/{scene}.png", scene])
    atomic_write_text(folder / MANIFEST, json.dumps(pairs))


def _index(folder: Path, cache_dir: str | None) -> PairIndex:
    """The index of a complete folder, in generation order; DataError when a file is missing or damaged."""
    pairs = json.loads((folder / MANIFEST).read_text())
    refs = [PairRef(folder / hazy, folder / clear, scene) for hazy, clear, scene in pairs]
    index, problems = index_pairs(folder, refs, name="builtin", layout="builtin", cache_dir=cache_dir)
    if problems or index is None:
        raise problems[0]
    return index


def load_builtin(cache_dir: str | Path | None = None, *, decoded_cache: str | None = None) -> PairIndex:
    """The built-in dataset's index, its files generated on first use under ``cache_dir`` (default `default_cache_dir()`).

    ``decoded_cache`` is the decoded-image cache the index reads through (pipeline.data.decoded).
    """
    folder = Path(cache_dir or default_cache_dir()) / f"builtin-v{VERSION}"
    try:
        return _index(folder, decoded_cache)
    except (FileNotFoundError, ValueError, DataError):
        pass  # absent or damaged: generate it again (json's errors are ValueErrors)
    _generate(folder)
    return _index(folder, decoded_cache)
