"""PairIndex, the decoded cache, scene-disjoint splits, aligned crops and their loader, the built-in dataset."""

from __future__ import annotations

import dataclasses
import os
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import write_image
from pipeline.data import (
    CropLoader,
    CropSampler,
    CropTooLargeError,
    DataError,
    PairIndex,
    SizeMismatchError,
    SplitError,
    StepSpec,
    UnreadableImageError,
    cut_crops,
    load_builtin,
    load_dataset,
    read_index,
    select_subset,
    split_by_scene,
    split_train_val,
    to_tensor,
    to_uint8,
)
from pipeline.data import builtin
from pipeline.data.decoded import read_image
from pipeline.data.images import header_size
from pipeline.data.index import PairRef, index_pairs


def _write(path: Path, pixels: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)
    return path


def synthetic_index(root: Path, n_scenes: int = 20, per_scene: int = 3, size: int = 8, seed: int = 0) -> PairIndex:
    """`n_scenes` random clear images written under `root`, each with `per_scene` hazy ones, indexed."""
    rng = np.random.default_rng(seed)
    refs = []
    for c in range(n_scenes):
        clear = _write(root / "clear" / f"s{c:02d}.png", rng.integers(0, 256, (size, size, 3), dtype=np.uint8))
        for k in range(per_scene):
            hazy = _write(root / "hazy" / f"s{c:02d}_{k}.png", rng.integers(0, 256, (size, size, 3), dtype=np.uint8))
            refs.append(PairRef(hazy, clear, f"s{c:02d}"))
    index, problems = index_pairs(root, refs, name="synthetic", layout="generic")
    assert not problems
    return index


@pytest.fixture
def small_index(tmp_path: Path) -> PairIndex:
    return synthetic_index(tmp_path / "small", n_scenes=4, per_scene=2)


# --- PairIndex ------------------------------------------------------------------------------


def test_index_basics_and_fingerprint(small_index: PairIndex, tmp_path: Path) -> None:
    index = small_index
    assert len(index) == 8 and index.scene_ids() == ["s00", "s01", "s02", "s03"]
    assert index.clear_path(3) == index.clear_path(2) == Path(index.root) / "clear" / "s01.png"
    hazy, clear = index.pair(3)
    assert hazy.shape == clear.shape == (8, 8, 3) and index.size(3) == (8, 8)
    assert np.array_equal(clear, np.asarray(Image.open(index.clear_path(3))))
    assert pickle.loads(pickle.dumps(index)).fingerprint == index.fingerprint
    folder = read_index(tmp_path / "small", "sots-indoor")  # the same files, listed from the folder
    assert folder.fingerprint == read_index(tmp_path / "small", "sots-indoor").fingerprint != index.fingerprint
    shutil.copytree(tmp_path / "small", tmp_path / "moved", copy_function=shutil.copy2)  # keeps the mtimes
    assert read_index(tmp_path / "moved", "sots-indoor").fingerprint == folder.fingerprint
    os.utime(index.hazy_path(5), ns=(10**9, 10**9))  # the same pixels, touched: the file changed
    assert read_index(tmp_path / "small", "sots-indoor").fingerprint != folder.fingerprint
    assert read_index(tmp_path / "moved", "sots-indoor", max_side=4).fingerprint != folder.fingerprint


def test_index_holds_no_pixels(tmp_path: Path) -> None:
    # What goes into the object store must not grow with the images: a few bytes per pair.
    small = synthetic_index(tmp_path / "a", n_scenes=3, per_scene=2, size=8)
    large = synthetic_index(tmp_path / "b", n_scenes=3, per_scene=2, size=200)
    assert abs(len(pickle.dumps(small)) - len(pickle.dumps(large))) < 64
    assert len(pickle.dumps(large)) < 4096


def test_index_rejects_inconsistent_lists(small_index: PairIndex) -> None:
    with pytest.raises(ValueError, match="clear_of"):
        PairIndex(small_index.root, small_index.hazy, small_index.clear, np.array([0, 5, 0, 0, 0, 0, 0, 0]),
                  small_index.scenes, small_index.sizes, "x", "generic", "fp")


def test_pairs_are_read_only_when_asked_for(small_index: PairIndex) -> None:
    # Indexing read headers only: damage done afterwards shows at the first read of that pair, naming the file.
    path = small_index.hazy_path(2)
    path.write_bytes(path.read_bytes()[:60])  # the header still parses, the pixels do not
    small_index.pair(1)
    with pytest.raises(UnreadableImageError, match="s01_0.png"):
        small_index.pair(2)
    write_image(small_index.hazy_path(4), size=(8, 6))  # replaced by a smaller image since indexing
    with pytest.raises(SizeMismatchError, match=r"s02_0.png decodes to 8x6 but its header said 8x8"):
        small_index.pair(4)


def test_header_size_follows_the_exif_orientation(tmp_path: Path) -> None:
    # A phone photo stored 24 wide, 20 high, tagged "rotate 90": decode_image turns it to 20 wide, 24 high.
    exif = Image.Exif()
    exif[0x0112] = 6
    path = tmp_path / "sideways.jpg"
    Image.fromarray(np.zeros((20, 24, 3), np.uint8)).save(path, exif=exif.tobytes())
    assert header_size(path) == (24, 20)
    assert read_image(path, None, None).shape == (24, 20, 3)


def test_decoded_cache_is_written_once_and_follows_the_file(small_index: PairIndex, tmp_path: Path) -> None:
    cache = str(tmp_path / "decoded")
    path = small_index.hazy_path(0)
    first = read_image(path, None, cache)
    entries = list(Path(cache).rglob("*.npy"))
    assert len(entries) == 1 and isinstance(first, np.ndarray)
    again = read_image(path, None, cache)
    assert isinstance(again, np.memmap) and not again.flags.writeable and np.array_equal(again, first)
    assert np.array_equal(read_image(path, 4, cache), read_image(path, 4, None))  # its own entry per max_side
    write_image(path, size=(8, 8), seed=99)  # edited: a new size or mtime means a new entry, never the stale one
    assert np.array_equal(read_image(path, None, cache), np.asarray(Image.open(path).convert("RGB")))
    assert len(list(Path(cache).rglob("*.npy"))) == 3


def test_index_reads_through_the_decoded_cache(small_index: PairIndex, tmp_path: Path) -> None:
    cached = dataclasses.replace(small_index, cache_dir=str(tmp_path / "decoded"))
    for i in range(len(cached)):
        assert all(np.array_equal(a, b) for a, b in zip(cached.pair(i), small_index.pair(i)))
    assert all(isinstance(a, np.memmap) for a in cached.pair(0))


# --- splits ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def index20(tmp_path_factory: pytest.TempPathFactory) -> PairIndex:
    return synthetic_index(tmp_path_factory.mktemp("index20"))


def _scenes(index: PairIndex, indices: list[int]) -> set[str]:
    return {str(index.scenes[i]) for i in indices}


def test_split_by_scene_is_disjoint_complete_and_seeded(index20: PairIndex) -> None:
    index = index20
    splits = split_by_scene(index, seed=3)
    parts = [splits.train_pool, splits.select, splits.test]
    assert all(parts)
    assert sorted(i for part in parts for i in part) == list(range(len(index)))
    scene_sets = [_scenes(index, part) for part in parts]
    assert all(not (a & b) for k, a in enumerate(scene_sets) for b in scene_sets[k + 1:])
    assert [len(s) for s in scene_sets] == [14, 3, 3]
    assert split_by_scene(index, seed=3) == splits
    assert split_by_scene(index, seed=4) != splits


def test_split_by_scene_needs_three_scenes(tmp_path: Path) -> None:
    splits = split_by_scene(synthetic_index(tmp_path / "3", n_scenes=3), select_fraction=0.01, test_fraction=0.6)
    assert all([splits.train_pool, splits.select, splits.test])
    with pytest.raises(SplitError, match="2 scene.*at least 3"):
        split_by_scene(synthetic_index(tmp_path / "2", n_scenes=2))
    with pytest.raises(SplitError, match="select_fraction"):
        split_by_scene(synthetic_index(tmp_path / "3", n_scenes=3), select_fraction=0)


def test_split_train_val(index20: PairIndex) -> None:
    index = index20
    pool = split_by_scene(index).train_pool
    train, val = split_train_val(index, pool, 0.2, seed=1)
    assert sorted(train + val) == sorted(pool) and not (_scenes(index, train) & _scenes(index, val))
    assert (train, val) == split_train_val(index, pool, 0.2, seed=1)
    assert (train, val) != split_train_val(index, pool, 0.2, seed=2)
    tiny_train, tiny_val = split_train_val(index, pool, 0.001, seed=1)
    assert len(_scenes(index, tiny_val)) == 1 and tiny_train
    assert split_train_val(index, pool, 0.0, seed=1) == (sorted(pool), [])
    with pytest.raises(SplitError, match="at least 2"):
        split_train_val(index, [0, 1, 2], 0.5, seed=0)  # one scene


def test_select_subset_is_fixed_and_spread_over_scenes(index20: PairIndex) -> None:
    index = index20
    select = split_by_scene(index, select_fraction=0.5, test_fraction=0.1).select  # 10 scenes x 3 pairs
    subset = select_subset(index, select, 12, seed=0)
    assert len(subset) == 12 and set(subset) <= set(select) and subset == sorted(subset)
    per_scene = [sum(str(index.scenes[i]) == s for i in subset) for s in _scenes(index, select)]
    assert sorted(per_scene) == [1] * 8 + [2] * 2  # every scene once before any twice
    assert select_subset(index, select, 12, seed=0) == subset != select_subset(index, select, 12, seed=1)
    assert select_subset(index, select, 7, seed=0) != select_subset(index, select, 7, seed=1)
    assert len(_scenes(index, select_subset(index, select, 7, seed=0))) == 7
    assert select_subset(index, select, None, seed=0) == select_subset(index, select, 99, seed=0) == select
    with pytest.raises(SplitError, match="select_images=0"):
        select_subset(index, select, 0, seed=0)


# --- crops ----------------------------------------------------------------------------------


def _mirror_index(root: Path, size: int = 16) -> PairIndex:
    """One pair whose clear image is the negative of the hazy one, columns numbered left to right."""
    hazy = np.broadcast_to(np.arange(size, dtype=np.uint8)[None, :, None] * 10, (size, size, 3)).copy()
    hazy[:, :, 1] = np.arange(size, dtype=np.uint8)[:, None] * 10  # rows too, so windows differ
    ref = PairRef(_write(root / "hazy" / "s.png", hazy), _write(root / "clear" / "s.png", 255 - hazy), "s")
    return index_pairs(root, [ref], name="mirror", layout="generic")[0]


@pytest.mark.parametrize("flips", [False, True])
def test_crops_are_aligned(flips: bool, tmp_path: Path) -> None:
    sampler = CropSampler(_mirror_index(tmp_path), [0], 5, flips=flips)
    hazy, clear = sampler.sample(64, np.random.default_rng(0))
    assert hazy.shape == clear.shape == (64, 3, 5, 5) and hazy.dtype == torch.float32
    assert 0 <= hazy.min() and hazy.max() <= 1
    torch.testing.assert_close(clear, 1 - hazy, atol=1e-6, rtol=0)  # same window, same flip
    column_step = hazy[:, 0, 0, 1] - hazy[:, 0, 0, 0]
    assert bool((column_step < 0).any()) == flips  # a flipped crop runs right to left
    assert len(set(hazy[:, 1, 0, 0].tolist())) > 1  # windows move


def test_crops_follow_the_generator_only(tmp_path: Path) -> None:
    sampler = CropSampler(synthetic_index(tmp_path, n_scenes=3, size=12), [0, 4, 8], 6, flips=True)
    a = sampler.sample(4, np.random.default_rng(7))
    b = sampler.sample(4, np.random.default_rng(7))
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    rng = np.random.default_rng(7)
    sampler.sample(4, rng)
    assert not torch.equal(sampler.sample(4, rng)[0], a[0])


def test_drawing_crops_uses_the_generator_as_cutting_them_did(tmp_path: Path) -> None:
    # The random stream of a crop batch: n pair picks, then n x (top, left, flip) uniforms.
    index = synthetic_index(tmp_path, n_scenes=3, size=12)
    spec = CropSampler(index, [0, 4, 8], 6, flips=True).draw(5, np.random.default_rng(3))
    rng = np.random.default_rng(3)
    picks, u = rng.integers(3, size=5), rng.random((5, 3))
    assert spec.pairs.tolist() == [[0, 4, 8][p] for p in picks]
    assert spec.tops.tolist() == [int(v * 7) for v in u[:, 0]] and spec.lefts.tolist() == [int(v * 7) for v in u[:, 1]]
    assert spec.flips.tolist() == (u[:, 2] < 0.5).tolist()


@pytest.mark.parametrize("workers", [0, 2])
def test_loader_workers_cut_the_crops_the_training_process_would(workers: int, tmp_path: Path) -> None:
    index = dataclasses.replace(synthetic_index(tmp_path, n_scenes=4, size=12), cache_dir=str(tmp_path / "decoded"))
    train, val = CropSampler(index, list(range(6)), 5, flips=True), CropSampler(index, list(range(6, 12)), 5)
    rng = np.random.default_rng(0)
    steps = [StepSpec(train.draw(3, rng), val.draw(2, rng) if k % 2 else None) for k in range(5)]
    loader = CropLoader(index, 5, workers=workers)
    for epoch in range(2):  # workers persist from one epoch to the next
        got = list(loader.crops(steps))
        assert len(got) == 5
        for step, (hazy, clear, val_hazy, val_clear) in zip(steps, got):
            assert all(np.array_equal(a, b.numpy()) for a, b in zip(cut_crops(index, step.train, 5), (hazy, clear)))
            assert (val_hazy is None) == (step.val is None)
            if step.val is not None:
                assert np.array_equal(cut_crops(index, step.val, 5)[0], val_hazy.numpy())


def test_a_read_error_in_a_worker_is_raised_as_itself(tmp_path: Path) -> None:
    index = synthetic_index(tmp_path, n_scenes=3, size=12)
    index.hazy_path(1).write_bytes(b"broken")
    spec = CropSampler(index, [1], 5).draw(2, np.random.default_rng(0))
    with pytest.raises(UnreadableImageError, match="s00_1.png"):
        list(CropLoader(index, 5, workers=1).crops([StepSpec(spec)]))


def test_crop_larger_than_an_image(tmp_path: Path) -> None:
    index = synthetic_index(tmp_path, n_scenes=3, per_scene=1, size=12)
    write_image(index.hazy_path(1), size=(12, 10))
    write_image(index.clear_path(1), size=(12, 10))
    index = read_index(tmp_path, "sots-indoor")
    with pytest.raises(CropTooLargeError, match=r"crop 11x11 .*hazy/s01_0.png \(12x10\)"):
        CropSampler(index, [0, 1], 11)
    CropSampler(index, [0, 1], 10)


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
    assert first.fingerprint == second.fingerprint
    folder = tmp_path / "a" / f"builtin-v{builtin.VERSION}"
    assert (folder / "pairs.json").is_file() and len(list((folder / "hazy").glob("*.png"))) == len(first)

    def no_generation(folder: Path) -> None:
        raise AssertionError("the cached files should have been read")

    monkeypatch.setattr(builtin, "_generate", no_generation)
    assert load_builtin(tmp_path / "a").fingerprint == first.fingerprint

    assert first.layout == first.name == "builtin"
    assert 80 <= len(first) <= 200 and len(first.scene_ids()) == len(first.clear) == len(first) // 2
    assert first.size(0) == (96, 96)
    pairs = [first.pair(i) for i in range(len(first))]
    hazy = torch.cat([to_tensor(h) for h, _ in pairs])
    clear = torch.cat([to_tensor(c) for _, c in pairs])
    assert torch.equal(hazy[0], to_tensor(second.pair(0)[0])[0])
    mse = (hazy.double() - clear.double()).pow(2).mean(dim=(1, 2, 3))
    assert 10 < (10 * torch.log10(1 / mse)).mean() < 20  # hazy enough for a dehazer to beat
    splits = split_by_scene(first)
    assert all(len(part) % 2 == 0 for part in (splits.train_pool, splits.select, splits.test))


def test_builtin_is_generated_again_when_a_file_is_missing(tmp_path: Path) -> None:
    first = load_builtin(tmp_path)
    first.hazy_path(3).unlink()
    again = load_builtin(tmp_path)
    assert again.fingerprint == first.fingerprint and again.hazy_path(3).is_file()


def test_builtin_cache_dir_from_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BILD_CACHE", str(tmp_path))
    assert builtin.default_cache_dir() == tmp_path


def test_load_dataset_is_the_single_door(make_dataset, tmp_path: Path) -> None:
    assert load_dataset("builtin", tmp_path / "cache").layout == "builtin"
    root = make_dataset(["a.png", "b.png"], ["a.png", "b.png"])
    index = load_dataset("auto", str(root), max_side=12, decoded_cache=str(tmp_path / "decoded"))
    assert index.layout == "generic" and index.size(0) == (10, 12) and index.pair(0)[0].shape == (10, 12, 3)
    assert index.cache_dir == str(tmp_path / "decoded")
    with pytest.raises(DataError, match="expected a dataset root"):
        load_dataset("sots-indoor", None)
