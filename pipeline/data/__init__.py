"""Data: native benchmark layouts, the shared pair index, scene-disjoint splits, crops, built-in data.

Conventions, everywhere in the pipeline:

- Colour is RGB (grayscale and RGBA files are converted on reading).
- A dataset is a `PairIndex` (names, pairing, scenes, sizes: no pixels); a pair is read
  when asked for, as uint8 numpy arrays of shape (H, W, 3).
- Tensors are float32 in [0, 1], shaped (N, 3, H, W); `to_tensor` and `to_uint8`
  convert between the two.
- Splits are by scene, never by image (a scene rendered with several hazes must
  not straddle two sets).

`load_dataset(layout, root)` is the one door: "builtin" for the generated
default data, a native layout name (see `LAYOUTS`) or "auto" for a folder.
"""

from .builtin import load_builtin
from .crops import CropSampler, CropSpec, crops_to_tensor, cut_crops, to_tensor, to_uint8
from .decoded import decoded_cache_dir
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
from .index import PairIndex
from .layouts import LAYOUTS, detect_layout, read_index
from .load import load_dataset
from .loader import CropLoader, StepSpec
from .splits import Splits, rotation_folds, select_subset, split_by_scene, split_train_val

__all__ = [
    "PairIndex",
    "read_index",
    "decoded_cache_dir",
    "detect_layout",
    "LAYOUTS",
    "load_builtin",
    "load_dataset",
    "inspect_dataset",
    "Splits",
    "split_by_scene",
    "split_train_val",
    "rotation_folds",
    "select_subset",
    "CropSampler",
    "CropSpec",
    "CropLoader",
    "StepSpec",
    "cut_crops",
    "crops_to_tensor",
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
