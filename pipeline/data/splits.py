"""Scene-disjoint splits.

SOTS renders each clear scene 10 times, so splitting by image would leak a scene
across sets. Three fixed sets come from `split_by_scene` (docs/design.md, "Data splits"):
a train pool, a selection set (the metric the search ranks trials by) and a test
set (reported for promoted models only). Each trial then splits its train pool
into its own train and validation sets with `split_train_val`, since the
validation fraction is itself searched, or, cross-fitting, into k scene folds
(`rotation_folds`) of which each epoch holds out the next.

`select_subset` picks the fixed, scene-stratified part of the selection set that the
per-epoch metric scores (promotion and evaluation score the whole set).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .errors import SplitError
from .index import PairIndex

__all__ = ["Splits", "rotation_folds", "select_subset", "split_by_scene", "split_train_val"]


@dataclass
class Splits:
    """Pair indices of the three scene-disjoint sets, each sorted."""

    train_pool: list[int]
    select: list[int]
    test: list[int]


def _shuffled_scenes(index: PairIndex, indices: list[int], seed: int) -> list[str]:
    # Sorting first makes the order independent of how the folder was listed.
    scenes = sorted({index.scenes[i] for i in indices})
    return [scenes[j] for j in np.random.default_rng(seed).permutation(len(scenes))]


def _pairs_of(index: PairIndex, indices: list[int], scenes: list[str]) -> list[int]:
    wanted = set(scenes)
    return sorted(i for i in indices if index.scenes[i] in wanted)


def _check_fraction(name: str, value: float, *, allow_zero: bool) -> None:
    low_ok = value >= 0 if allow_zero else value > 0
    if not (low_ok and value < 1):
        bound = "[0, 1)" if allow_zero else "(0, 1)"
        raise SplitError(f"{name} must lie in {bound}, got {value}")


def split_by_scene(
    index: PairIndex, *, select_fraction: float = 0.15, test_fraction: float = 0.15, seed: int = 0
) -> Splits:
    """Split all pairs into train pool, selection and test sets by scene; deterministic from `seed`.

    Each set gets at least one scene, so at least 3 scenes are needed.
    """
    _check_fraction("select_fraction", select_fraction, allow_zero=False)
    _check_fraction("test_fraction", test_fraction, allow_zero=False)
    if select_fraction + test_fraction >= 1:
        raise SplitError(
            f"select_fraction + test_fraction must be below 1 to leave a train pool, got "
            f"{select_fraction} + {test_fraction}"
        )
    everything = list(range(len(index)))
    scenes = _shuffled_scenes(index, everything, seed)
    if len(scenes) < 3:
        raise SplitError(
            f"dataset {index.name!r} has {len(scenes)} scene(s); expected at least 3 for train pool, selection and test"
        )
    # At least one scene each, and rounding must never eat the whole train pool.
    n_test = min(max(1, round(test_fraction * len(scenes))), len(scenes) - 2)
    n_select = min(max(1, round(select_fraction * len(scenes))), len(scenes) - n_test - 1)
    return Splits(
        train_pool=_pairs_of(index, everything, scenes[n_test + n_select:]),
        select=_pairs_of(index, everything, scenes[n_test:n_test + n_select]),
        test=_pairs_of(index, everything, scenes[:n_test]),
    )


def split_train_val(
    index: PairIndex, train_pool: list[int], val_fraction: float, seed: int
) -> tuple[list[int], list[int]]:
    """Split `train_pool` into (train, val) pair indices by scene; val is empty when `val_fraction` is 0.

    With `val_fraction` > 0 each side gets at least one scene.
    """
    _check_fraction("val_fraction", val_fraction, allow_zero=True)
    if val_fraction == 0:
        return sorted(train_pool), []
    scenes = _shuffled_scenes(index, train_pool, seed)
    if len(scenes) < 2:
        raise SplitError(
            f"the train pool has {len(scenes)} scene(s); "
            f"expected at least 2 for a validation fraction of {val_fraction}"
        )
    n_val = min(max(1, round(val_fraction * len(scenes))), len(scenes) - 1)
    return _pairs_of(index, train_pool, scenes[n_val:]), _pairs_of(index, train_pool, scenes[:n_val])


def rotation_folds(index: PairIndex, train_pool: list[int], val_fraction: float, seed: int) -> list[list[int]]:
    """The train pool's pairs in k = round(1 / val_fraction) scene-disjoint folds (cross-fitting).

    Epoch e holds out fold e mod k as its validation split and trains on the rest, so over k
    epochs every scene is trained on, and within an epoch the outer loop still reads only
    scenes the inner step does not train on. k is clamped to [2, number of scenes].
    """
    _check_fraction("val_fraction", val_fraction, allow_zero=False)
    scenes = _shuffled_scenes(index, train_pool, seed)
    if len(scenes) < 2:
        raise SplitError(f"the train pool has {len(scenes)} scene(s); expected at least 2 to rotate a validation fold")
    k = min(max(2, round(1 / val_fraction)), len(scenes))
    return [_pairs_of(index, train_pool, scenes[j::k]) for j in range(k)]


def select_subset(index: PairIndex, select: list[int], size: int | None, seed: int) -> list[int]:
    """At most ``size`` pairs of ``select``, spread over its scenes as evenly as possible; sorted, fixed by ``seed``.

    Scenes take turns in a seeded order, each giving one pair (drawn in a seeded order
    within the scene) per turn, so every scene is in the subset before any gives a second
    pair. ``size`` None, or at least the set's size, keeps the whole set.
    """
    if size is None or size >= len(select):
        return sorted(select)
    if size < 1:
        raise SplitError(f"dataset.select_images={size}; expected a positive number of selection images, or null")
    rng = np.random.default_rng(seed)
    by_scene: dict[str, list[int]] = {}
    for i in sorted(select):
        by_scene.setdefault(str(index.scenes[i]), []).append(i)
    scenes = sorted(by_scene)
    queues = [[int(i) for i in rng.permutation(by_scene[scenes[j]])] for j in rng.permutation(len(scenes))]
    picked: list[int] = []
    for turn in range(max(len(q) for q in queues)):
        picked += [q[turn] for q in queues if turn < len(q)]
    return sorted(picked[:size])
