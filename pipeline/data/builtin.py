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

Generation is deterministic from `SEED` and takes about a second; the result is
cached as `builtin-v{VERSION}.npz` under `$BILD_CACHE` (default
`~/.cache/bild-dehaze/`). Bump `VERSION` whenever the recipe changes.
"""

from __future__ import annotations

import os
import tempfile
import zipfile
from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage
from skimage import data as skdata

from .store import PairStore

__all__ = ["load_builtin", "default_cache_dir", "VERSION"]

VERSION = 1
SEED = 2024
TILE = 96
SHORT_SIDE = 288  # 3 tiles high: 57 scenes, 114 pairs
RENDERINGS = 2
DEPTH_RANGE = (0.5, 3.0)
BETA0_RANGE = (0.2, 0.6)
HAZE_FIELD_RANGE = (0.3, 1.7)
AIRLIGHT_RANGE = (0.7, 1.0)


def default_cache_dir() -> Path:
    """`$BILD_CACHE`, else `~/.cache/bild-dehaze`."""
    return Path(os.environ.get("BILD_CACHE") or Path.home() / ".cache" / "bild-dehaze")


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


def _generate() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(SEED)
    hazy, clear, clear_of, scenes, hazy_paths, clear_paths = [], [], [], [], [], []
    for name in PHOTOS:
        photo, depth = _resize_short_side(*_photo_and_depth(name, rng))
        rows, cols = photo.shape[0] // TILE, photo.shape[1] // TILE
        for r in range(rows):
            for c in range(cols):
                window = (slice(r * TILE, (r + 1) * TILE), slice(c * TILE, (c + 1) * TILE))
                scene = f"{name}_r{r}c{c}"
                clear_paths.append(f"builtin:{scene}")
                clear.append(photo[window])
                for k in range(RENDERINGS):
                    hazy.append(_haze(photo[window], depth[window], rng))
                    clear_of.append(len(clear) - 1)
                    scenes.append(scene)
                    hazy_paths.append(f"builtin:{scene}/haze{k}")
    return {
        "hazy": np.stack(hazy), "clear": np.stack(clear), "clear_of": np.array(clear_of),
        "scenes": np.array(scenes), "hazy_paths": np.array(hazy_paths), "clear_paths": np.array(clear_paths),
    }


def _to_store(arrays: dict[str, np.ndarray]) -> PairStore:
    return PairStore(
        hazy=list(arrays["hazy"]),
        clear=list(arrays["clear"]),
        clear_of=[int(i) for i in arrays["clear_of"]],
        scenes=[str(s) for s in arrays["scenes"]],
        hazy_paths=[str(s) for s in arrays["hazy_paths"]],
        clear_paths=[str(s) for s in arrays["clear_paths"]],
        name="builtin",
        layout="builtin",
    )


def _save(path: Path, arrays: dict[str, np.ndarray]) -> None:
    # Write to a temporary name and rename, so trials starting together never read half a file.
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".npz.tmp")
    with os.fdopen(fd, "wb") as f:
        np.savez(f, **arrays)
    os.chmod(tmp, 0o644)  # mkstemp makes it private; a cache is for every user of the machine
    os.replace(tmp, path)


def load_builtin(cache_dir: str | Path | None = None) -> PairStore:
    """The built-in dataset, generated on first use and then read from `cache_dir` (default `default_cache_dir()`)."""
    path = Path(cache_dir or default_cache_dir()) / f"builtin-v{VERSION}.npz"
    try:
        with np.load(path, allow_pickle=False) as npz:
            return _to_store({key: npz[key] for key in npz.files})
    except (FileNotFoundError, KeyError, ValueError, zipfile.BadZipFile):
        pass  # absent or damaged cache: generate it again
    arrays = _generate()
    _save(path, arrays)
    return _to_store(arrays)
