"""pipeline.evaluate, pipeline.dehaze and the dark channel prior, on generated and (when present) real images."""

from __future__ import annotations

import copy
import csv
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import torch
from PIL import Image
from scipy import ndimage
from skimage import data as skdata

from conftest import REALDATA, write_image
from pipeline import dehaze, evaluate
from pipeline.evaluation import dehazing, scoring
from pipeline.evaluation.baselines import _box_mean, dark_channel, dark_channel_prior
from pipeline.config import REPO_ROOT
from pipeline.data import to_tensor
from pipeline.data.images import decode_image, fit_max_side
from pipeline.evaluation.inference import dehaze_tensor
from pipeline.evaluation.metrics import psnr
from pipeline.models import load_model

pytestmark = pytest.mark.usefixtures("one_torch_thread")


# --- the dark channel prior ---------------------------------------------------------------------------


def test_filters_match_their_definitions() -> None:
    x = np.random.default_rng(0).random((30, 41, 3))
    assert np.array_equal(dark_channel(x), ndimage.minimum_filter(x.min(axis=2), 15, mode="nearest"))
    plane, r = x[..., 0], 3
    brute = np.array([[plane[max(0, i - r): i + r + 1, max(0, j - r): j + r + 1].mean() for j in range(41)]
                      for i in range(30)])
    assert np.allclose(_box_mean(plane, r), brute)


def test_dcp_removes_synthetic_haze() -> None:
    clear = fit_max_side(skdata.astronaut(), 256)
    j = clear.astype(np.float64) / 255
    hazy = np.round(255 * (j * 0.45 + 0.9 * 0.55)).astype(np.uint8)  # t = 0.45, A = 0.9
    out = dark_channel_prior(hazy)
    assert out.shape == clear.shape and out.dtype == np.float32 and 0 <= out.min() and out.max() <= 1
    target = to_tensor(clear)
    gain = psnr(torch.from_numpy(out).permute(2, 0, 1)[None], target) - psnr(to_tensor(hazy), target)
    assert gain.item() > 3


# --- evaluate --------------------------------------------------------------------------------------------


def test_evaluate_generated_folder(make_dataset: Callable[..., Path], model_dir: Path, tmp_path: Path,
                                   capsys: pytest.CaptureFixture[str]) -> None:
    root = make_dataset(["1_1.png", "1_2.png", "2_1.png"], ["1.png", "2.png"], size=(48, 40))
    out = tmp_path / "rows" / "eval.parquet"
    argv = ["--model", str(model_dir), "--dataset", "sots-indoor", "--data-root", str(root), "--out", str(out),
            "--device", "cpu"]
    assert evaluate.main(argv) == 0
    summary = capsys.readouterr().out
    assert all(name in summary for name in ("hazy", "dcp", "aodnet/v1"))
    rows = pl.read_parquet(out)
    assert not (tmp_path / "rows" / "eval.parquet.parts").exists()  # merged into the file at the end
    assert rows.height == 9 and list(rows.columns) == list(scoring.ROW_SCHEMA)
    assert rows.group_by("method").len().sort("method")["len"].to_list() == [3, 3, 3]
    assert set(rows["scene"]) == {"1", "2"} and set(rows["height"]) == {40} and set(rows["width"]) == {48}
    first = rows.filter((pl.col("method") == "hazy") & pl.col("image").str.ends_with("1_1.png")).row(0, named=True)
    hazy, clear = decode_image(root / "hazy" / "1_1.png"), decode_image(root / "clear" / "1.png")
    assert first["psnr"] == pytest.approx(psnr(to_tensor(hazy), to_tensor(clear)).item())


def test_evaluate_errors_name_the_problem(model_dir: Path, tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    assert evaluate.main(["--model", str(model_dir), "--dataset", "auto", "--data-root", str(tmp_path / "none")]) == 2
    assert "none" in capsys.readouterr().err
    assert evaluate.main(["--model", str(tmp_path / "nomodel"), "--dataset", "auto", "--data-root", "x"]) == 2
    assert "nomodel" in capsys.readouterr().err


@pytest.fixture
def own_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("BILD_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def test_a_killed_evaluation_resumes_where_its_rows_end(make_dataset: Callable[..., Path], model_dir: Path,
                                                        tmp_path: Path, own_cache: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    root = make_dataset([f"{s}_{k}.png" for s in (1, 2, 3) for k in (1, 2)], ["1.png", "2.png", "3.png"],
                        size=(32, 24))
    out = tmp_path / "eval.parquet"
    monkeypatch.setattr(scoring, "PART_IMAGES", 2)
    real, scored = scoring._score_image, []

    def dies_at_the_fourth(index, i, *args):
        if len(scored) == 3:
            raise KeyboardInterrupt  # killed while scoring the fourth image: its part is never written
        scored.append(i)
        return real(index, i, *args)

    monkeypatch.setattr(scoring, "_score_image", dies_at_the_fourth)
    with pytest.raises(KeyboardInterrupt):
        scoring.evaluate(model_dir, "sots-indoor", root, device="cpu", out=out)
    assert not out.exists() and len(list((tmp_path / "eval.parquet.parts").glob("part-*.parquet"))) == 1
    monkeypatch.setattr(scoring, "_score_image", real)
    counted = []
    monkeypatch.setattr(scoring, "_score_image", lambda index, i, *a: counted.append(i) or real(index, i, *a))
    rows = scoring.evaluate(model_dir, "sots-indoor", root, device="cpu", out=out)
    assert counted == [2, 3, 4, 5]  # the first part's two images are not scored again
    assert rows.height == 18 and pl.read_parquet(out).height == 18 and not (tmp_path / "eval.parquet.parts").exists()
    assert rows.group_by("image").len()["len"].to_list() == [3] * 6


def test_reference_rows_are_computed_once_per_dataset(make_dataset: Callable[..., Path], model_dir: Path,
                                                      search_run: Path, own_cache: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    root = make_dataset(["1_1.png", "2_1.png"], ["1.png", "2.png"], size=(32, 24))
    first = scoring.evaluate(model_dir, "sots-indoor", root, device="cpu")
    assert len(list((own_cache).rglob("*.parquet"))) == 1

    def no_dcp(image: np.ndarray) -> np.ndarray:
        raise AssertionError("the DCP rows should come from the cache")

    monkeypatch.setattr(scoring, "dark_channel_prior", no_dcp)
    checkpoint = search_run / "t1-plain" / "checkpoint_000001" / "checkpoint.pt"
    second = scoring.evaluate(checkpoint, "sots-indoor", root, device="cpu")
    references = lambda rows: rows.filter(pl.col("method").is_in(["hazy", "dcp"])).sort("image", "method")  # noqa: E731
    assert references(first).equals(references(second))
    assert set(second["method"]) == {"hazy", "dcp", "aodnet@t1-plain:epoch2"}
    write_image(root / "hazy" / "2_1.png", size=(32, 24), seed=5)  # the data changed: its references are new
    with pytest.raises(AssertionError, match="from the cache"):
        scoring.evaluate(checkpoint, "sots-indoor", root, device="cpu")


def test_two_checkpoints_of_one_backbone_print_apart(make_dataset: Callable[..., Path], search_run: Path,
                                                     tmp_path: Path, own_cache: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    root = make_dataset(["1_1.png", "2_1.png"], ["1.png", "2.png"], size=(32, 24))
    out = tmp_path / "both.parquet"
    for trial in ("t0-plain", "t2-bild"):
        argv = ["--model", str(search_run / trial / "checkpoint_000001" / "checkpoint.pt"), "--dataset", "auto",
                "--data-root", str(root), "--out", str(out), "--device", "cpu"]
        assert evaluate.main(argv) == 0
    printed = capsys.readouterr().out
    assert "aodnet@t0-plain:epoch2" in printed and "aodnet@t2-bild:epoch2" in printed
    rows = pl.read_parquet(out)  # one file gathers both models, with one hazy and one DCP row per image
    assert rows.group_by("method").len().sort("method")["len"].to_list() == [2, 2, 2, 2]


@pytest.mark.skipif(not (REALDATA / "sots_indoor").is_dir(), reason="../shared/realdata/sots_indoor absent")
def test_evaluate_sots_indoor(model_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["--model", str(model_dir), "--dataset", "auto", "--data-root", str(REALDATA / "sots_indoor"),
            "--max-images", "6", "--device", "cpu"]
    assert evaluate.main(argv) == 0
    summary = capsys.readouterr().out
    with capsys.disabled():
        print(f"\nSOTS-indoor, 6 images spread over the scenes:\n{summary}")
    rows = scoring.evaluate(model_dir, "sots-indoor", REALDATA / "sots_indoor", max_images=2, device="cpu")
    means = scoring.summarize(rows).select("method", "psnr").rows_by_key("method", unique=True)
    assert rows["scene"].n_unique() == 2 and means["dcp"][0] > means["hazy"][0]  # DCP does dehaze real haze


def _large_image() -> np.ndarray:
    """An O-HAZE photo shrunk to 1500 px (or, without realdata, a generated 1500x1100 image)."""
    photo = REALDATA / "o_haze" / "hazy" / "27_outdoor_hazy.jpg"
    if photo.is_file():
        return fit_max_side(decode_image(photo), 1500)
    smooth = ndimage.gaussian_filter(np.random.default_rng(0).random((1100, 1500, 3)), (8, 8, 0))
    return np.round(255 * (smooth - smooth.min()) / np.ptp(smooth)).astype(np.uint8)


def test_tile_and_resize_on_a_large_image(model_dir: Path) -> None:
    model, _ = load_model(model_dir)
    x = to_tensor(_large_image())
    tiled = dehaze_tensor(model, x, strategy="tile", tile=512)
    resized = dehaze_tensor(model, x, strategy="resize", tile=512)
    assert tiled.shape == resized.shape == x.shape
    # On a window small enough to run whole, the blended tiles agree with the whole image; only
    # pixels near a tile edge (the network's zero padding) differ, and only by a fraction of a level.
    window = x[..., :700, :900]
    whole = dehaze_tensor(model, window, strategy="whole")
    pieces = dehaze_tensor(model, window, strategy="tile", tile=256)
    assert (pieces - whole).abs().max() < 2 / 255 and psnr(pieces, whole).item() > 60


def test_loaded_model_runs_channels_last_with_the_same_output(model_dir: Path) -> None:
    model, _ = load_model(model_dir)
    assert all(p.is_contiguous(memory_format=torch.channels_last) for p in model.parameters() if p.dim() == 4)
    x = to_tensor(_large_image())[..., :300, :400]
    nchw = copy.deepcopy(model).to(memory_format=torch.contiguous_format)
    assert (dehaze_tensor(model, x) - dehaze_tensor(nchw, x)).abs().max() < 1e-5


# --- dehaze ---------------------------------------------------------------------------------------------


def _unpaired_picks() -> list[Path]:
    """The smallest file of each kind in realdata/unpaired: .jpeg, .jpg, an upper-case .JPG, .png, .bmp."""
    with open(REALDATA / "unpaired" / "index.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    pixels = {r["file"]: int(r["size"].split("x")[0]) * int(r["size"].split("x")[1]) for r in rows}
    picks = []
    for kind in (".jpeg", ".jpg", ".JPG", ".png", ".bmp"):
        names = [n for n in pixels if Path(n).suffix == kind]
        picks.append(REALDATA / "unpaired" / min(names, key=pixels.get))
    return picks


@pytest.mark.skipif(not (REALDATA / "unpaired").is_dir(), reason="../shared/realdata/unpaired absent")
def test_dehaze_unpaired_keeps_names_and_skips_a_bad_file(model_dir: Path, tmp_path: Path,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    picks = _unpaired_picks()
    bad_dir = tmp_path / "bad"
    bad_dir.mkdir()
    (bad_dir / "broken.Jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    out = tmp_path / "out"
    code = dehaze.main([*map(str, picks), str(bad_dir), "--model", str(model_dir), "--out", str(out),
                        "--device", "cpu"])
    assert code == 1
    err = capsys.readouterr().err
    assert "broken.Jpg" in err and "cannot decode" in err
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in picks)
    for src in picks:
        with Image.open(out / src.name) as written, Image.open(src) as original:
            assert written.size == original.size
            assert written.format == {"jpeg": "JPEG", "jpg": "JPEG", "png": "PNG", "bmp": "BMP"}[src.suffix[1:].lower()]


def test_dehaze_paths_reports_each_failure(model_dir: Path, tmp_path: Path) -> None:
    folder = tmp_path / "in"
    write_image(folder / "a.png", (40, 30))
    write_image(folder / "b.JPEG", (30, 40))
    (folder / "notes.txt").write_text("reported: not an image name")
    (tmp_path / "c.heic").write_bytes(b"\0\0\0\x18ftypheic")  # a format this Pillow does not read
    (tmp_path / "d.gif").write_bytes(b"GIF89a")  # a readable format, cut short
    result = dehazing.dehaze_paths([folder, tmp_path / "missing.png", tmp_path / "c.heic", tmp_path / "d.gif"],
                                   model_dir, tmp_path / "out", device="cpu", progress=False)
    assert sorted(Path(p).name for p in result["done"]) == ["a.png", "b.JPEG"]
    reasons = dict(result["failed"])
    assert "does not exist" in reasons[str(tmp_path / "missing.png")]
    assert "not an image file name" in reasons[str(tmp_path / "c.heic")]
    assert "cannot" in reasons[str(tmp_path / "d.gif")]
    assert ".txt is not an image" in reasons[str(folder / "notes.txt")]  # a folder's other files are named too
    again = dehazing.dehaze_paths([folder], model_dir, folder, device="cpu", progress=False)
    assert not again["done"] and all("overwrite the input" in r for p, r in again["failed"] if not p.endswith(".txt"))


def test_dehaze_exit_codes(model_dir: Path, tmp_path: Path) -> None:
    assert dehaze.main([str(tmp_path / "missing.png"), "--model", str(model_dir), "--out", str(tmp_path)]) == 2
    assert dehaze.main([str(tmp_path), "--model", str(tmp_path / "nomodel"), "--out", str(tmp_path / "o")]) == 2


def test_python_dash_m_dehaze(model_dir: Path, tmp_path: Path) -> None:
    image = write_image(tmp_path / "in" / "photo.jpg", (64, 48))
    done = subprocess.run(
        [sys.executable, "-m", "pipeline.dehaze", str(image), "--model", str(model_dir), "--out", str(tmp_path / "out"),
         "--device", "cpu"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert decode_image(tmp_path / "out" / "photo.jpg").shape == (48, 64, 3)
