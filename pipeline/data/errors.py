"""Errors raised on bad input data: one class per kind of problem, all `DataError`s.

Every message names the file, folder or value at fault and says what was expected,
so a user can fix the dataset without reading the code.
"""

__all__ = [
    "DataError",
    "MissingFolderError",
    "UnknownLayoutError",
    "UnmatchedFileError",
    "UnreadableImageError",
    "MissingGroundTruthError",
    "SizeMismatchError",
    "CropTooLargeError",
    "SplitError",
]


class DataError(ValueError):
    """Base class of every data problem (a `ValueError`, so callers may catch either)."""


class MissingFolderError(DataError):
    """The dataset folder, or a subfolder it needs, is missing or holds no images."""


class UnknownLayoutError(DataError):
    """A layout name that is not one of `LAYOUTS`, or a folder no layout fits."""


class UnmatchedFileError(DataError):
    """An image whose file name fits no pattern of the layout (or is ambiguous)."""


class UnreadableImageError(DataError):
    """A file that cannot be decoded as an image Pillow reads."""


class MissingGroundTruthError(DataError):
    """A hazy image whose clear (ground-truth) image is not there."""


class SizeMismatchError(DataError):
    """A hazy image and its clear image differ in size."""


class CropTooLargeError(DataError):
    """A training crop larger than one of the images it is cut from."""


class SplitError(DataError):
    """Too few scenes, or bad fractions, for a scene-disjoint split."""
