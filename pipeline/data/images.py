"""Decoding image files into uint8 HxWx3 RGB arrays, and shrinking them."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from .errors import UnreadableImageError

__all__ = ["IMAGE_EXTENSIONS", "is_image_file", "decode_image", "fit_max_side"]

# Compared lower-cased: benchmarks and phone photos ship ".JPG", ".Png" and the like.
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp")


def is_image_file(path: Path) -> bool:
    """True for a visible file with a PNG, JPEG or BMP extension (any case)."""
    return path.is_file() and not path.name.startswith(".") and path.suffix.lower() in IMAGE_EXTENSIONS


# Pillow's integer modes wider than 8 bits: 16-bit grayscale PNGs open as one of these.
_WIDE_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I")


def _to_rgb8(im: Image.Image, path: Path) -> np.ndarray:
    """Any mode Pillow reads -> uint8 HxWx3 RGB, scaling 16-bit values instead of clipping them.

    ``convert("RGB")`` clips a 16-bit grayscale image at 255 (a normal photo comes out white);
    16-bit RGB PNGs already open as 8-bit RGB. Floating-point images have no agreed range and
    are refused by name.
    """
    if im.mode in _WIDE_MODES:
        wide = np.asarray(im, dtype=np.float64)
        if wide.min() < 0 or wide.max() > 65535:
            raise UnreadableImageError(f"{path}: {im.mode} values outside 0-65535; expected 8- or 16-bit samples")
        grey = np.round(wide / 257).astype(np.uint8)  # 65535 -> 255, exactly as 16 -> 8 bits
        return np.repeat(grey[..., None], 3, axis=2)
    if im.mode == "F":
        raise UnreadableImageError(f"{path}: floating-point image (mode F); expected 8- or 16-bit samples")
    return np.asarray(im.convert("RGB"), dtype=np.uint8)


def decode_image(path: Path) -> np.ndarray:
    """Decode `path` fully into uint8 HxWx3 RGB; grayscale (8 or 16 bit), palette and RGBA become RGB (alpha dropped)."""
    try:
        with Image.open(path) as im:
            # exif_transpose: phone photos are stored sideways with an orientation tag.
            # The conversion forces a full decode, so a truncated file fails here, not later.
            return _to_rgb8(ImageOps.exif_transpose(im), path)
    except UnreadableImageError:
        raise
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        raise UnreadableImageError(
            f"cannot decode {path}: {err}; expected a PNG, JPEG or BMP image"
        ) from err


def fit_max_side(img: np.ndarray, max_side: int | None) -> np.ndarray:
    """Shrink `img` so its longer side is at most `max_side` (area resampling); smaller images are returned as is.

    The target size depends only on the input size, so a hazy image and its clear
    image of the same size shrink to the same size.
    """
    if max_side is None:
        return img
    if max_side < 1:
        raise ValueError(f"max_side must be a positive number of pixels, got {max_side}")
    h, w = img.shape[:2]
    scale = max_side / max(h, w)
    if scale >= 1:
        return img
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    return np.asarray(Image.fromarray(img).resize(size, Image.Resampling.BOX))
