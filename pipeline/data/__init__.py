"""Data: native benchmark layouts, the shared pair store, scene-disjoint splits, crops, built-in data.

Conventions, everywhere in the pipeline:

- Colour is RGB (grayscale and RGBA files are converted on reading).
- Decoded images are uint8 numpy arrays of shape (H, W, 3), held in a `PairStore`.
- Tensors are float32 in [0, 1], shaped (N, 3, H, W); `to_tensor` and `to_uint8`
  convert between the two.
- Splits are by scene, never by image (a scene rendered with several hazes must
  not straddle two sets).

`load_dataset(layout, root)` is the one door: "builtin" for the generated
default data, a native layout name (see `LAYOUTS`) or "auto" for a folder.
"""

from .builtin import load_builtin
from .crops import CropSampler, to_tensor, to_uint8
from .errors import (
    CropTooLargeError,
    DataError,
    MissingFolderError,
    MissingGroundTruthError,
    SizeMismatchError,
    SplitError,
    UnknownLayoutError,
    UnmatchedFileError,
    UnreadableImageError,
)
from .inspect import inspect_dataset
from .layouts import LAYOUTS, detect_layout, read_pairs
from .load import load_dataset
from .splits import Splits, rotation_folds, split_by_scene, split_train_val
from .store import PairStore

__all__ = [
    "PairStore",
    "read_pairs",
    "detect_layout",
    "LAYOUTS",
    "load_builtin",
    "load_dataset",
    "inspect_dataset",
    "Splits",
    "split_by_scene",
    "split_train_val",
    "rotation_folds",
    "CropSampler",
    "to_tensor",
    "to_uint8",
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
