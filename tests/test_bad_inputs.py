"""Bad input gets one error line naming the file, flag or key, or is handled correctly: images of every
mode and bit depth, dehaze and train flags, search-space ranges, damaged result files, wrong output paths.
"""

from __future__ import annotations

import shutil
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipeline import analyze, dehaze, evaluate, train
from pipeline.data.images import decode_image
from pipeline.tune.space import SearchSpaceError, load_search_space

TINY_TRAIN = ["--backbone", "aodnet", "--preset", "tiny", "--steps", "2", "progress=false", "dataset.crop=32"]


def _png16(path: Path, samples: np.ndarray) -> Path:
    """A 16-bit PNG written byte by byte (grey for HxW, RGB for HxWx3): Pillow cannot write 16-bit RGB."""
    h, w = samples.shape[:2]
    rows = b"".join(b"\x00" + samples[r].astype(">u2").tobytes() for r in range(h))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", w, h, 16, 2 if samples.ndim == 3 else 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows))
                     + chunk(b"IEND", b""))
    return path


RGB = np.random.default_rng(0).integers(0, 256, (20, 24, 3), dtype=np.uint8)


@pytest.mark.parametrize("mode", ["1", "L", "LA", "P", "RGB", "RGBA", "I;16", "RGB16"])
def test_every_mode_and_bit_depth_becomes_the_right_8_bit_rgb(mode: str, tmp_path: Path) -> None:
    grey = RGB.mean(axis=2).round().astype(np.uint8)
    if mode == "RGB16":
        path, expected = _png16(tmp_path / "x.png", RGB.astype(np.uint16) * 257), RGB
    elif mode == "I;16":
        path, expected = _png16(tmp_path / "x.png", grey.astype(np.uint16) * 257), np.repeat(grey[..., None], 3, 2)
    else:
        image = Image.fromarray(RGB).convert(mode)
        path = tmp_path / "x.png"
        image.save(path)
        expected = np.asarray(image.convert("RGB"))
    decoded = decode_image(path)
    assert decoded.dtype == np.uint8 and decoded.shape == (20, 24, 3)
    assert np.abs(decoded.astype(int) - expected.astype(int)).max() <= 1  # 16 -> 8 bits rounds


def test_a_16_bit_grey_photo_is_not_read_as_white(tmp_path: Path) -> None:
    ramp = np.linspace(0, 65535, 20 * 24).reshape(20, 24).astype(np.uint16)
    decoded = decode_image(_png16(tmp_path / "ramp.png", ramp))
    assert decoded.min() == 0 and decoded.max() == 255 and 120 < decoded.mean() < 135


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--tile", "32"], "--tile 32 is too small"),
        (["--tile", "64"], "--tile 64 is too small"),
        (["--tile", "-5"], "argument --tile: got -5"),
        (["--tile", "0"], "argument --tile: got 0"),
    ],
)
def test_dehaze_tile_flags(flags: list[str], message: str, model_dir: Path, tmp_path: Path,
                           capsys: pytest.CaptureFixture) -> None:
    photo = tmp_path / "in.png"
    Image.fromarray(np.full((80, 80, 3), 128, np.uint8)).save(photo)
    try:
        code = dehaze.main([str(photo), "--model", str(model_dir), "--out", str(tmp_path / "out"), *flags])
    except SystemExit as done:  # argparse's own refusal
        code = done.code
    assert code == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out" / "in.png").exists()


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--val-fraction", "0"], "train.val_fraction=0 (--val-fraction): mode bild holds out"),
        (["--epochs", "-2"], "train.epochs=-2: expected an integer in [1, inf)"),
        (["--steps", "0"], "train.steps_per_epoch=0: expected an integer"),
        (["train.inner_lr=abc"], "train.inner_lr='abc': expected a number in (0, 1]"),
        (["--inner-lr", "1e38"], "train.inner_lr=1e+38: expected a number in (0, 1]"),
        (["--batch-size", "0"], "train.batch_size=0: expected an integer"),
    ],
)
def test_train_values_out_of_range_get_one_line(argv: list[str], message: str, tmp_path: Path,
                                                capsys: pytest.CaptureFixture) -> None:
    assert train.main([*TINY_TRAIN, "--epochs", "1", "--run-dir", str(tmp_path), *argv]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "checkpoint.pt").exists()


def test_a_search_space_reaching_an_impossible_learning_rate_is_refused(tmp_path: Path) -> None:
    space = tmp_path / "space.yaml"
    space.write_text("space:\n  inner_lr: {key: train.inner_lr, type: float, low: 1.0e-4, high: 1.0e6, log: true}\n")
    from pipeline.config import compose_config

    with pytest.raises(SearchSpaceError, match=r"space\.yaml: space\.inner_lr\.high: train\.inner_lr=1000000\.0: expected a number in \(0, 1\]"):
        load_search_space(str(space), compose_config([]))
    space.write_text("trials: 2\nsampler: tpe\nsed: 3\nspace:\n  alpha: {key: bild.alpha, type: float, low: 0.1, high: 1}\n")
    with pytest.raises(SearchSpaceError, match=r"unknown top-level key\(s\) \['sed'\]"):
        load_search_space(str(space))


def test_a_damaged_results_file_is_named(search_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    run = tmp_path / "run"
    shutil.copytree(search_run, run)
    damaged = sorted((run / "results" / "trials").glob("*.parquet"))[0]
    damaged.write_bytes(damaged.read_bytes()[:40])
    assert analyze.main([str(run)]) == 2
    err = capsys.readouterr().err
    assert f"results file {damaged} is damaged" in err and "Traceback" not in err


def test_output_paths_of_the_wrong_kind_fail_before_the_work(model_dir: Path, make_dataset, tmp_path: Path,
                                                             capsys: pytest.CaptureFixture) -> None:
    root = make_dataset(["a.png", "b.png", "c.png"], ["a.png", "b.png", "c.png"], size=(32, 32))
    folder = tmp_path / "rows"
    folder.mkdir()
    assert evaluate.main(["--model", str(model_dir), "--dataset", "generic", "--data-root", str(root),
                          "--out", str(folder)]) == 2
    assert f"--out {folder} is a folder" in capsys.readouterr().err
    assert not list(folder.iterdir())
    a_file = tmp_path / "taken.txt"
    a_file.write_text("x")
    assert dehaze.main([str(root / "hazy"), "--model", str(model_dir), "--out", str(a_file)]) == 2
    assert f"--out {a_file} is a file" in capsys.readouterr().err
