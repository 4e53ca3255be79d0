"""Decoding image files into uint8 HxWx3 RGB arrays, shrinking them, and their sizes from headers alone."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import ExifTags, Image, ImageOps

from .errors import UnreadableImageError

__all__ = ["FORMATS_READ", "IMAGE_EXTENSIONS", "is_image_file", "decode_image", "header_size", "fitted_size",
           "fit_max_side", "skip_reason"]

# Formats Pillow recognises by extension but cannot decode by itself (stubs needing a handler, Ghostscript,
# Windows, or a video decoder): their files are reported as skipped, not read.
_UNDECODABLE = ("BUFR", "GRIB", "HDF5", "EPS", "MPEG", "WMF")


def _readable_extensions() -> tuple[str, ...]:
    """Every file extension this Pillow opens and decodes: PNG, JPEG, BMP, WebP, TIFF, GIF (first frame), ..."""
    Image.init()
    return tuple(sorted(ext for ext, fmt in Image.registered_extensions().items()
                        if fmt in Image.OPEN and fmt not in _UNDECODABLE))


# Compared lower-cased: benchmarks and phone photos ship ".JPG", ".Png" and the like.
IMAGE_EXTENSIONS = _readable_extensions()
FORMATS_READ = "an image Pillow decodes (PNG, JPEG, BMP, WebP, TIFF, GIF's first frame, ...)"

_UNREADABLE = (OSError, SyntaxError, ValueError, Image.DecompressionBombError)
# EXIF orientations that store the picture turned by 90 degrees: decode_image swaps its sides.
_SIDEWAYS = (5, 6, 7, 8)


def is_image_file(path: Path) -> bool:
    """True for a visible file with an extension of a format Pillow decodes (any case)."""
    return path.is_file() and not path.name.startswith(".") and path.suffix.lower() in IMAGE_EXTENSIONS


def skip_reason(path: Path) -> str | None:
    """Why a visible file in an image folder is not read (None for an image, a hidden file or a folder)."""
    if path.name.startswith(".") or not path.is_file() or is_image_file(path):
        return None
    suffix = path.suffix.lower() or "no extension"
    return f"{suffix} is not {FORMATS_READ}"


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
    """Decode `path` fully into uint8 HxWx3 RGB; grayscale (8 or 16 bit), palette and RGBA become RGB (alpha dropped).

    A multi-frame file (an animated GIF or WebP, a TIFF stack) gives its first frame.
    """
    try:
        with Image.open(path) as im:
            # exif_transpose: phone photos are stored sideways with an orientation tag.
            # The conversion forces a full decode, so a truncated file fails here, not later.
            return _to_rgb8(ImageOps.exif_transpose(im), path)
    except UnreadableImageError:
        raise
    except _UNREADABLE as err:
        raise UnreadableImageError(
            f"cannot decode {path}: {err}; expected {FORMATS_READ}"
        ) from err


def header_size(path: Path) -> tuple[int, int]:
    """(height, width) that `decode_image` will return, read from the file's header without decoding pixels.

    The EXIF orientation counts as `decode_image` applies it. Only the metadata parsed with
    the header is consulted (PIL's own PNG `getexif` would decode the whole file to look for
    a late eXIf chunk): a tag found only after the pixels shows up as a size mismatch at the
    first decode (`PairIndex` checks every decode against the index).
    """
    try:
        with Image.open(path) as im:
            w, h = im.size
            orientation = Image.Image.getexif(im).get(ExifTags.Base.Orientation, 1)
    except _UNREADABLE as err:
        raise UnreadableImageError(
            f"cannot read the header of {path}: {err}; expected {FORMATS_READ}"
        ) from err
    return (w, h) if orientation in _SIDEWAYS else (h, w)


def fitted_size(height: int, width: int, max_side: int | None) -> tuple[int, int]:
    """(height, width) of an image of that size after `fit_max_side(img, max_side)`."""
    if max_side is None:
        return height, width
    if max_side < 1:
        raise ValueError(f"max_side must be a positive number of pixels, got {max_side}")
    scale = max_side / max(height, width)
    if scale >= 1:
        return height, width
    return max(1, round(height * scale)), max(1, round(width * scale))


def fit_max_side(img: np.ndarray, max_side: int | None) -> np.ndarray:
    """Shrink `img` so its longer side is at most `max_side` (area resampling); smaller images are returned as is.

    The target size depends only on the input size, so a hazy image and its clear
    image of the same size shrink to the same size.
    """
    h, w = fitted_size(*img.shape[:2], max_side)
    if (h, w) == img.shape[:2]:
        return img
    return np.asarray(Image.fromarray(img).resize((w, h), Image.Resampling.BOX))
