"""PairStore, scene-disjoint splits, aligned crops, the built-in dataset and load_dataset."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline.data import (
    CropSampler,
    CropTooLargeError,
    DataError,
    PairStore,
    SplitError,
    load_builtin,
    load_dataset,
    split_by_scene,
    split_train_val,
    to_tensor,
    to_uint8,
)
from pipeline.data import builtin


def synthetic_store(n_scenes: int = 20, per_scene: int = 3, size: int = 8, seed: int = 0) -> PairStore:
    """`n_scenes` random clear images, each with `per_scene` hazy ones."""
    rng = np.random.default_rng(seed)
    clear = [rng.integers(0, 256, (size, size, 3), dtype=np.uint8) for _ in range(n_scenes)]
    clear_of = [c for c in range(n_scenes) for _ in range(per_scene)]
    return PairStore(
        hazy=[rng.integers(0, 256, (size, size, 3), dtype=np.uint8) for _ in clear_of],
        clear=clear,
        clear_of=clear_of,
        scenes=[f"s{c:02d}" for c in clear_of],
        hazy_paths=[f"hazy/s{c:02d}_{k}.png" for k, c in enumerate(clear_of)],
        clear_paths=[f"clear/s{c:02d}.png" for c in range(n_scenes)],
        name="synthetic",
        layout="generic",
    )


# --- PairStore ------------------------------------------------------------------------------


def test_store_basics_and_fingerprint() -> None:
    store = synthetic_store(n_scenes=4, per_scene=2)
    assert len(store) == 8 and store.scene_ids() == ["s00", "s01", "s02", "s03"]
    assert store.pair(3)[1] is store.clear[1]
    assert store.nbytes == 12 * 8 * 8 * 3
    again = pickle.loads(pickle.dumps(store))
    assert again.fingerprint() == store.fingerprint() == synthetic_store(n_scenes=4, per_scene=2).fingerprint()
    again.hazy[5][0, 0, 0] ^= 1
    assert again.fingerprint() != store.fingerprint()
    again = pickle.loads(pickle.dumps(store))
    again.scenes[0] = "other"
    assert again.fingerprint() != store.fingerprint()


def test_store_rejects_inconsistent_lists() -> None:
    store = synthetic_store(n_scenes=2, per_scene=1)
    with pytest.raises(ValueError, match="clear_of"):
        PairStore(store.hazy, store.clear, [0, 5], store.scenes, store.hazy_paths, store.clear_paths, "x", "generic")


# --- splits ---------------------------------------------------------------------------------


def _scenes(store: PairStore, indices: list[int]) -> set[str]:
    return {store.scenes[i] for i in indices}


def test_split_by_scene_is_disjoint_complete_and_seeded() -> None:
    store = synthetic_store()
    splits = split_by_scene(store, seed=3)
    parts = [splits.train_pool, splits.select, splits.test]
    assert all(parts)
    assert sorted(i for part in parts for i in part) == list(range(len(store)))
    scene_sets = [_scenes(store, part) for part in parts]
    assert all(not (a & b) for k, a in enumerate(scene_sets) for b in scene_sets[k + 1:])
    assert [len(s) for s in scene_sets] == [14, 3, 3]
    assert split_by_scene(store, seed=3) == splits
    assert split_by_scene(store, seed=4) != splits


def test_split_by_scene_needs_three_scenes() -> None:
    splits = split_by_scene(synthetic_store(n_scenes=3), select_fraction=0.01, test_fraction=0.6)
    assert all([splits.train_pool, splits.select, splits.test])
    with pytest.raises(SplitError, match="2 scene.*at least 3"):
        split_by_scene(synthetic_store(n_scenes=2))
    with pytest.raises(SplitError, match="select_fraction"):
        split_by_scene(synthetic_store(), select_fraction=0)


def test_split_train_val() -> None:
    store = synthetic_store()
    pool = split_by_scene(store).train_pool
    train, val = split_train_val(store, pool, 0.2, seed=1)
    assert sorted(train + val) == sorted(pool) and not (_scenes(store, train) & _scenes(store, val))
    assert (train, val) == split_train_val(store, pool, 0.2, seed=1)
    assert (train, val) != split_train_val(store, pool, 0.2, seed=2)
    tiny_train, tiny_val = split_train_val(store, pool, 0.001, seed=1)
    assert len(_scenes(store, tiny_val)) == 1 and tiny_train
    assert split_train_val(store, pool, 0.0, seed=1) == (sorted(pool), [])
    with pytest.raises(SplitError, match="at least 2"):
        split_train_val(store, [0, 1, 2], 0.5, seed=0)  # one scene


# --- crops ----------------------------------------------------------------------------------


def _mirror_store(size: int = 16) -> PairStore:
    """One pair whose clear image is the negative of the hazy one, columns numbered left to right."""
    hazy = np.broadcast_to(np.arange(size, dtype=np.uint8)[None, :, None] * 10, (size, size, 3)).copy()
    hazy[:, :, 1] = np.arange(size, dtype=np.uint8)[:, None] * 10  # rows too, so windows differ
    return PairStore([hazy], [255 - hazy], [0], ["s"], ["hazy/s.png"], ["clear/s.png"], "mirror", "generic")


@pytest.mark.parametrize("flips", [False, True])
def test_crops_are_aligned(flips: bool) -> None:
    sampler = CropSampler(_mirror_store(), [0], 5, flips=flips)
    hazy, clear = sampler.sample(64, np.random.default_rng(0))
    assert hazy.shape == clear.shape == (64, 3, 5, 5) and hazy.dtype == torch.float32
    assert 0 <= hazy.min() and hazy.max() <= 1
    torch.testing.assert_close(clear, 1 - hazy, atol=1e-6, rtol=0)  # same window, same flip
    column_step = hazy[:, 0, 0, 1] - hazy[:, 0, 0, 0]
    assert bool((column_step < 0).any()) == flips  # a flipped crop runs right to left
    assert len(set(hazy[:, 1, 0, 0].tolist())) > 1  # windows move


def test_crops_follow_the_generator_only() -> None:
    store = synthetic_store(n_scenes=3, size=12)
    sampler = CropSampler(store, [0, 4, 8], 6, flips=True)
    a = sampler.sample(4, np.random.default_rng(7))
    b = sampler.sample(4, np.random.default_rng(7))
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    rng = np.random.default_rng(7)
    sampler.sample(4, rng)
    assert not torch.equal(sampler.sample(4, rng)[0], a[0])


def test_crop_larger_than_an_image() -> None:
    store = synthetic_store(n_scenes=3, size=12)
    store.hazy[4] = store.hazy[4][:10]
    with pytest.raises(CropTooLargeError, match=r"crop 11x11 .*hazy/s01_4.png \(12x10\)"):
        CropSampler(store, [0, 4], 11)
    CropSampler(store, [0, 4], 10)


def test_tensor_round_trip() -> None:
    img = np.random.default_rng(0).integers(0, 256, (5, 7, 3), dtype=np.uint8)
    tensor = to_tensor(img)
    assert tensor.shape == (1, 3, 5, 7) and tensor.dtype == torch.float32
    assert np.array_equal(to_uint8(tensor), img)
    assert to_uint8(torch.full((3, 2, 2), 1.7)).max() == 255
    with pytest.raises(ValueError, match="uint8 HxWx3"):
        to_tensor(img.astype(np.float32))


# --- built-in dataset -----------------------------------------------------------------------


def test_builtin_is_deterministic_cached_and_hazy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    first = load_builtin(tmp_path / "a")
    second = load_builtin(tmp_path / "b")
    assert first.fingerprint() == second.fingerprint()
    assert (tmp_path / "a" / f"builtin-v{builtin.VERSION}.npz").is_file()

    def no_generation() -> None:
        raise AssertionError("the cache should have been read")

    monkeypatch.setattr(builtin, "_generate", no_generation)
    assert load_builtin(tmp_path / "a").fingerprint() == first.fingerprint()

    assert first.layout == first.name == "builtin"
    assert 80 <= len(first) <= 200 and len(first.scene_ids()) == len(first.clear) == len(first) // 2
    assert first.nbytes < 10 * 2**20 and first.hazy[0].shape == (96, 96, 3)
    hazy = torch.cat([to_tensor(h) for h in first.hazy])
    clear = torch.cat([to_tensor(first.clear[c]) for c in first.clear_of])
    mse = (hazy.double() - clear.double()).pow(2).mean(dim=(1, 2, 3))
    assert 10 < (10 * torch.log10(1 / mse)).mean() < 20  # hazy enough for a dehazer to beat
    splits = split_by_scene(first)
    assert all(len(part) % 2 == 0 for part in (splits.train_pool, splits.select, splits.test))


def test_builtin_cache_dir_from_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BILD_CACHE", str(tmp_path))
    assert builtin.default_cache_dir() == tmp_path


def test_load_dataset_is_the_single_door(make_dataset, tmp_path: Path) -> None:
    assert load_dataset("builtin", tmp_path / "cache").layout == "builtin"
    root = make_dataset(["a.png", "b.png"], ["a.png", "b.png"])
    store = load_dataset("auto", str(root), max_side=12)
    assert store.layout == "generic" and store.hazy[0].shape == (10, 12, 3)
    with pytest.raises(DataError, match="expected a dataset root"):
        load_dataset("sots-indoor", None)
