"""Native benchmark layouts: which files pair up, and indexing a folder into a `PairIndex`.

Each layout is data (a `Layout` row): a pattern for the hazy file stem with a
`scene` group, and the stem of that scene's clear image. Every layout lives in a
root folder with a `hazy/` subfolder and a `clear/` or `GT/` subfolder (any case);
files may be in any format Pillow decodes (PNG, JPEG, BMP, WebP, TIFF, the first frame
of a GIF, ...) with extensions of any case. Other visible files are skipped and listed
(`Listing.skipped`), never dropped in silence.

| layout | hazy | clear |
|---|---|---|
| its | hazy/<scene>_<k>_<beta>.png | clear/<scene>.png |
| ots | hazy/<scene>_<A>_<beta>.jpg | clear/<scene>.jpg (or .png) |
| sots-outdoor | hazy/<scene>_<A>_<beta>.jpg | clear/<scene>.png (or .jpg) |
| sots-indoor | hazy/<scene>_<k>.png | clear/<scene>.png |
| o-haze | hazy/<NN>_outdoor_hazy.jpg | GT/<NN>_outdoor_GT.jpg |
| nh-haze | hazy/<NN>_hazy.png | GT/<NN>_GT.png |
| dense-haze | hazy/<NN>_hazy.png | GT/<NN>_GT.png |
| generic | hazy/<name>.* | clear/<name>.* (scene = name) |

Some layouts share file names (ots and sots-outdoor; nh-haze and dense-haze) and
read identically; detection tells ots from sots-outdoor by the extensions each
benchmark ships, and reports nh-haze for both NH-HAZE and Dense-Haze folders.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import (
    DataError,
    MissingFolderError,
    MissingGroundTruthError,
    SizeMismatchError,
    UnknownLayoutError,
    UnmatchedFileError,
)
from .images import FORMATS_READ, decode_image, fit_max_side, is_image_file, skip_reason
from .index import PairIndex, PairRef, index_pairs

__all__ = [
    "LAYOUTS",
    "Layout",
    "PairRef",
    "Listing",
    "LoadedPair",
    "detect_layout",
    "get_layout",
    "list_pairs",
    "load_pairs",
    "read_index",
]

_NUM = r"\d*\.?\d+"


@dataclass(frozen=True)
class Layout:
    """How one benchmark names its files."""

    name: str
    hazy: str  # regex for the whole hazy stem, with a `scene` group
    clear: str  # clear stem as a format string of `scene`
    ships: tuple[str, str]  # (hazy, clear) extension the benchmark ships; only breaks detection ties
    pattern: str  # human-readable, for messages and docs

    def scene_of(self, stem: str) -> str | None:
        """The scene id in a hazy file stem, or None when the stem fits no pattern of this layout."""
        match = re.fullmatch(self.hazy, stem, flags=re.IGNORECASE)
        return match["scene"] if match else None

    def clear_stem(self, scene: str) -> str:
        return self.clear.format(scene=scene)


# Order matters only for ties in detection: earlier wins; generic (which fits any name) is last.
_SPECS = (
    Layout("its", rf"(?P<scene>[^_]+)_\d+_{_NUM}", "{scene}", ("png", "png"),
           "hazy/<scene>_<k>_<beta>.png with clear/<scene>.png"),
    Layout("ots", rf"(?P<scene>[^_]+)_{_NUM}_{_NUM}", "{scene}", ("jpg", "jpg"),
           "hazy/<scene>_<A>_<beta>.jpg with clear/<scene>.jpg or .png"),
    Layout("sots-outdoor", rf"(?P<scene>[^_]+)_{_NUM}_{_NUM}", "{scene}", ("jpg", "png"),
           "hazy/<scene>_<A>_<beta>.jpg with clear/<scene>.png or .jpg"),
    Layout("sots-indoor", r"(?P<scene>[^_]+)_\d+", "{scene}", ("png", "png"),
           "hazy/<scene>_<k>.png with clear/<scene>.png"),
    Layout("o-haze", r"(?P<scene>\d+)_outdoor_hazy", "{scene}_outdoor_GT", ("jpg", "jpg"),
           "hazy/<NN>_outdoor_hazy.jpg with GT/<NN>_outdoor_GT.jpg"),
    Layout("nh-haze", r"(?P<scene>\d+)_hazy", "{scene}_GT", ("png", "png"),
           "hazy/<NN>_hazy.png with GT/<NN>_GT.png"),
    Layout("dense-haze", r"(?P<scene>\d+)_hazy", "{scene}_GT", ("png", "png"),
           "hazy/<NN>_hazy.png with GT/<NN>_GT.png"),
    Layout("generic", r"(?P<scene>.+)", "{scene}", ("", ""),
           "hazy/<name>.* with clear/<name>.* (scene = name)"),
)
_BY_NAME = {spec.name: spec for spec in _SPECS}
LAYOUTS: tuple[str, ...] = tuple(_BY_NAME)

_HAZY_DIRS = ("hazy",)
_CLEAR_DIRS = ("clear", "gt")


@dataclass
class Listing:
    """The pairs a folder holds under one layout, and the names that did not pair."""

    root: Path
    layout: str
    pairs: list[PairRef]
    problems: list[DataError]
    skipped: list[str]  # "<file>: skipped, <why>" for visible files that are not images Pillow decodes


@dataclass
class LoadedPair:
    """A decoded, checked pair (uint8 HxWx3 each, same size)."""

    ref: PairRef
    hazy: np.ndarray
    clear: np.ndarray


def get_layout(name: str) -> Layout:
    """The `Layout` called `name`; the error lists the valid names."""
    try:
        return _BY_NAME[name]
    except KeyError:
        raise UnknownLayoutError(
            f"unknown layout {name!r}; expected one of: auto, {', '.join(LAYOUTS)}"
        ) from None


def _subfolder(root: Path, names: tuple[str, ...]) -> Path:
    found = [p for p in root.iterdir() if p.is_dir() and p.name.lower() in names]
    if len(found) == 1:
        return found[0]
    expected = "a 'hazy' subfolder and a 'clear' or 'GT' subfolder (any case)"
    if not found:
        present = sorted(p.name for p in root.iterdir() if p.is_dir())
        raise MissingFolderError(
            f"{root} has no {' or '.join(repr(n) for n in names)} subfolder; expected {expected}, "
            f"found subfolders {present}"
        )
    candidates = sorted(p.name for p in found)
    raise MissingFolderError(f"{root} has several candidate folders {candidates}; expected {expected}")


def _images(folder: Path) -> list[Path]:
    files = sorted(p for p in folder.iterdir() if is_image_file(p))
    if not files:
        raise MissingFolderError(f"{folder} holds no images; expected files that are {FORMATS_READ}")
    return files


def _skipped(*folders: Path) -> list[str]:
    """Why each visible non-image file in ``folders`` is left out."""
    return [f"{p}: skipped, {reason}" for folder in folders for p in sorted(folder.iterdir())
            if (reason := skip_reason(p))]


def _check_root(root: Path, what: str = "dataset folder") -> None:
    """Refuse a path that is missing, or a file where a folder is expected, saying which."""
    expected = "expected a folder with 'hazy' and 'clear' (or 'GT') subfolders"
    if root.exists() and not root.is_dir():
        raise MissingFolderError(f"{what} {root} is a file, not a folder; {expected}")
    if not root.is_dir():
        raise MissingFolderError(f"{what} {root} does not exist; {expected}")


def _folders(root: str | Path) -> tuple[Path, list[Path], list[Path], list[str]]:
    """(root, hazy files, clear files, skipped files); raises when the folders are missing or empty."""
    root = Path(root)
    _check_root(root)
    hazy_dir, clear_dir = _subfolder(root, _HAZY_DIRS), _subfolder(root, _CLEAR_DIRS)
    return root, _images(hazy_dir), _images(clear_dir), _skipped(hazy_dir, clear_dir)


def _clear_index(files: list[Path]) -> dict[str, list[Path]]:
    # Keyed by lower-cased stem so '01_gt.PNG' still pairs with '01_hazy.png'.
    index: dict[str, list[Path]] = {}
    for f in files:
        index.setdefault(f.stem.lower(), []).append(f)
    return index


def _ext(path: Path) -> str:
    return path.suffix.lower().lstrip(".").replace("jpeg", "jpg")


def _score(spec: Layout, hazy: list[Path], clear: dict[str, list[Path]]) -> tuple[int, int, int]:
    """(pairs found, names parsed, files with the shipped extension): higher fits better."""
    paired = parsed = shipped = 0
    for h in hazy:
        scene = spec.scene_of(h.stem)
        if scene is None:
            continue
        parsed += 1
        match = clear.get(spec.clear_stem(scene).lower())
        if match:
            paired += 1
            shipped += (_ext(h) == spec.ships[0]) + (_ext(match[0]) == spec.ships[1])
    if spec.name == "generic":
        parsed = paired  # generic parses every name; count only names that found a partner
    return paired, parsed, shipped


def detect_layout(root: str | Path) -> str:
    """The layout whose names fit the files in `root` best (ties go to the earlier of `LAYOUTS`)."""
    _, hazy, clear, _ = _folders(root)
    index = _clear_index(clear)
    scores = [(_score(spec, hazy, index), -i, spec.name) for i, spec in enumerate(_SPECS)]
    best_score, _, name = max(scores)
    if best_score[1] == 0:
        raise UnknownLayoutError(
            f"no layout fits the file names in {root} (e.g. {hazy[0].name}); expected one of: "
            + "; ".join(f"{s.name}: {s.pattern}" for s in _SPECS)
        )
    return name


def list_pairs(root: str | Path, layout: str = "auto") -> Listing:
    """Pair the hazy and clear files of `root` by `layout` ("auto": `detect_layout`), decoding nothing."""
    name = detect_layout(root) if layout == "auto" else get_layout(layout).name
    spec = _BY_NAME[name]
    root, hazy, clear, skipped = _folders(root)
    index = _clear_index(clear)
    pairs: list[PairRef] = []
    problems: list[DataError] = []
    for h in hazy:
        scene = spec.scene_of(h.stem)
        if scene is None:
            problems.append(UnmatchedFileError(f"{h}: file name fits no {name} pattern; expected {spec.pattern}"))
            continue
        candidates = index.get(spec.clear_stem(scene).lower(), [])
        if len(candidates) == 1:
            pairs.append(PairRef(h, candidates[0], scene))
        elif not candidates:
            problems.append(MissingGroundTruthError(
                f"{h}: no ground truth for scene {scene!r}; expected {clear[0].parent / spec.clear_stem(scene)}"
                f" as {FORMATS_READ}"
            ))
        else:
            problems.append(UnmatchedFileError(
                f"{h}: several ground truths {[c.name for c in candidates]} for scene {scene!r}; expected one"
            ))
    # Grouping by scene keeps the pairs sharing a clear image together (see load_pairs).
    pairs.sort(key=lambda p: (p.scene, p.hazy.name))
    return Listing(root, name, pairs, problems, skipped)


def load_pairs(pairs: list[PairRef], max_side: int | None = None) -> Iterator[LoadedPair | DataError]:
    """Decode and check each pair in turn, yielding the pair or the error it raised (decoding goes on)."""
    cached: tuple[Path, np.ndarray | DataError] | None = None  # pairs come grouped by clear image
    for ref in pairs:
        if cached is None or cached[0] != ref.clear:
            try:
                cached = (ref.clear, decode_image(ref.clear))
            except DataError as err:
                cached = (ref.clear, err)
        clear = cached[1]
        if isinstance(clear, DataError):
            yield clear
            continue
        try:
            hazy = decode_image(ref.hazy)
        except DataError as err:
            yield err
            continue
        if hazy.shape != clear.shape:
            yield SizeMismatchError(
                f"{ref.hazy} is {hazy.shape[1]}x{hazy.shape[0]} but its ground truth {ref.clear} is "
                f"{clear.shape[1]}x{clear.shape[0]}; expected the same size"
            )
            continue
        yield LoadedPair(ref, fit_max_side(hazy, max_side), fit_max_side(clear, max_side))


def read_index(
    root: str | Path, layout: str = "auto", *, skip_bad: bool = False, max_side: int | None = None,
    cache_dir: str | None = None,
) -> PairIndex:
    """Index every pair of `root` from file names and headers, decoding no pixels.

    Raises the first `DataError` found (a name fitting no pattern, a missing ground
    truth, an unreadable header, a size mismatch), or with `skip_bad` leaves the bad pairs
    out and warns once (raising if nothing is left). A file whose header reads but whose
    pixels do not fails when the pair is first read; `python -m pipeline.data inspect`
    decodes everything up front. `max_side` shrinks large pairs as they are read;
    `cache_dir` is the decoded-image cache (pipeline.data.decoded).
    """
    listing = list_pairs(root, layout)
    if listing.skipped:
        warnings.warn(f"left out {len(listing.skipped)} file(s) of {listing.root}: {'; '.join(listing.skipped)}",
                      stacklevel=2)
    if listing.problems and not skip_bad:
        raise listing.problems[0]
    index, bad = index_pairs(listing.root, listing.pairs, name=listing.root.resolve().name, layout=listing.layout,
                             max_side=max_side, cache_dir=cache_dir)
    if bad and not skip_bad:
        raise bad[0]
    bad = [*listing.problems, *bad]
    if index is None:
        raise DataError(f"no usable pairs in {listing.root}: all {len(bad)} hazy images were bad; first: {bad[0]}")
    if bad:
        shown = "; ".join(str(err) for err in bad[:3])
        warnings.warn(f"skipped {len(bad)} bad pair(s) in {listing.root}: {shown}{' ...' if len(bad) > 3 else ''}",
                      stacklevel=2)
    return index
