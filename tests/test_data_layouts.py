"""Native layouts: detection, indexing, every bad-input error, skip_bad, and the inspect CLI."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import REALDATA, write_image
from pipeline.data.__main__ import main as cli_main
from pipeline.data import (
    LAYOUTS,
    DataError,
    MissingFolderError,
    MissingGroundTruthError,
    SizeMismatchError,
    UnknownLayoutError,
    UnmatchedFileError,
    UnreadableImageError,
    detect_layout,
    inspect_dataset,
    read_index,
)

REPO = Path(__file__).resolve().parents[1]

# layout -> (hazy dir, clear dir, hazy files, clear files, pairs, scenes, detected as)
CASES = {
    "its": ("hazy", "clear", ["1_1_0.90179.png", "1_2_0.8.PNG", "2_1_0.85.png"], ["1.png", "2.Png"], 3, 2, "its"),
    "ots": ("hazy", "clear", ["0001_0.8_0.2.jpg", "0001_1_0.08.JPG", "0002_0.95_0.1.jpeg"],
            ["0001.jpg", "0002.JPG"], 3, 2, "ots"),
    "sots-outdoor": ("hazy", "GT", ["0001_0.8_0.2.jpg", "0001_0.9_0.16.jpg", "0002_0.85_0.2.JPG"],
                     ["0001.png", "0002.PNG"], 3, 2, "sots-outdoor"),
    "sots-indoor": ("hazy", "gt", ["1400_1.png", "1400_10.png", "1401_1.PNG"], ["1400.png", "1401.png"], 3, 2,
                    "sots-indoor"),
    "o-haze": ("hazy", "GT", ["27_outdoor_hazy.jpg", "35_outdoor_hazy.JPG"],
               ["27_outdoor_GT.jpg", "35_outdoor_GT.jpg"], 2, 2, "o-haze"),
    "nh-haze": ("HAZY", "GT", ["01_hazy.png", "02_hazy.bmp"], ["01_GT.png", "02_GT.BMP"], 2, 2, "nh-haze"),
    # Dense-Haze names its files exactly as NH-HAZE does: detection reports nh-haze.
    "dense-haze": ("hazy", "GT", ["01_hazy.png", "02_hazy.PNG", "03_hazy.png"],
                   ["01_GT.png", "02_GT.png", "03_GT.png"], 3, 3, "nh-haze"),
    "generic": ("hazy", "Clear", ["a.png", "b_1.jpg", "c.BMP"], ["a.png", "b_1.png", "c.bmp"], 3, 3, "generic"),
}


def test_every_layout_has_a_case() -> None:
    assert set(CASES) == set(LAYOUTS)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_layout_is_detected_and_read(make_dataset, layout: str) -> None:
    hazy_dir, clear_dir, hazy, clear, n_pairs, n_scenes, detected = CASES[layout]
    root = make_dataset(hazy, clear, hazy_dir=hazy_dir, clear_dir=clear_dir)
    assert detect_layout(root) == detected
    index = read_index(root, layout)
    assert (len(index), len(index.scene_ids()), len(index.clear)) == (n_pairs, n_scenes, len(clear))
    assert index.layout == layout and index.name == "ds"
    for i in range(len(index)):
        assert index.size(i) == (20, 24)
        for img in index.pair(i):
            assert img.dtype == np.uint8 and img.shape == (20, 24, 3)


def test_shared_clear_images_are_listed_once(make_dataset) -> None:
    root = make_dataset(["1400_1.png", "1400_2.png", "1401_1.png"], ["1400.png", "1401.png"])
    index = read_index(root)
    assert index.clear_of.tolist() == [0, 0, 1] and index.scenes.tolist() == ["1400", "1400", "1401"]
    assert index.clear.tolist() == ["clear/1400.png", "clear/1401.png"]


def test_max_side_shrinks_both_images_of_a_pair(make_dataset) -> None:
    root = make_dataset(["01_hazy.png"], ["01_GT.png"], clear_dir="GT", size=(80, 40))
    index = read_index(root, max_side=20)
    hazy, clear = index.pair(0)
    assert hazy.shape == clear.shape == (10, 20, 3) and index.size(0) == (10, 20)


@pytest.mark.skipif(not (REALDATA / "sots_indoor").is_dir(), reason="no ../shared/realdata/sots_indoor")
def test_real_sots_indoor() -> None:
    root = REALDATA / "sots_indoor"
    assert detect_layout(root) == "sots-indoor"
    index = read_index(root, max_side=64)
    assert (len(index), len(index.scene_ids()), len(index.clear)) == (250, 25, 25)
    assert max(index.size(0)) == 64 and index.pair(0)[0].shape[:2] == index.size(0)


@pytest.mark.skipif(not (REALDATA / "o_haze").is_dir(), reason="no ../shared/realdata/o_haze")
def test_real_o_haze() -> None:
    root = REALDATA / "o_haze"
    assert detect_layout(root) == "o-haze"
    index = read_index(root, max_side=512)
    assert len(index) == 3 and index.scene_ids() == ["27", "35", "41"]
    assert all(max(h.shape[:2]) == 512 and h.shape == c.shape for h, c in map(index.pair, range(3)))


# --- bad input: each error names the file or value and what was expected -----------------


def test_corrupt_file(make_dataset) -> None:
    root = make_dataset(["1400_1.png", "1400_2.png", "1401_1.png"], ["1400.png", "1401.png"])
    (root / "hazy" / "1401_1.png").write_bytes(b"not an image")  # no header: found while indexing
    with pytest.raises(UnreadableImageError, match="1401_1.png.*expected an image Pillow decodes"):
        read_index(root)
    (root / "hazy" / "1401_1.png").unlink()
    bad = root / "hazy" / "1400_2.png"
    bad.write_bytes(bad.read_bytes()[:60])  # truncated: the header parses, the pixels do not
    index = read_index(root)  # indexing reads headers only ...
    with pytest.raises(UnreadableImageError, match="1400_2.png.*expected an image Pillow decodes"):
        index.pair(1)  # ... the first read of the pair names the file


def test_hazy_without_ground_truth(make_dataset) -> None:
    root = make_dataset(["1400_1.png", "1401_1.png"], ["1400.png"])
    with pytest.raises(MissingGroundTruthError, match=r"1401_1.png.*scene '1401'.*expected .*1401"):
        read_index(root)


def test_size_mismatch(make_dataset) -> None:
    root = make_dataset(["1400_1.png"], ["1400.png"])
    write_image(root / "clear" / "1400.png", size=(30, 20))
    with pytest.raises(SizeMismatchError, match=r"1400_1.png is 24x20 .*1400.png is 30x20"):
        read_index(root)


def test_missing_and_empty_folders(make_dataset, tmp_path: Path) -> None:
    with pytest.raises(MissingFolderError, match="nowhere.*does not exist"):
        read_index(tmp_path / "nowhere")
    root = make_dataset(["a.png"], ["a.png"], clear_dir="targets")
    expected = r"no 'clear' or 'gt' subfolder.*'GT'.*found subfolders \['hazy', 'targets'\]"
    with pytest.raises(MissingFolderError, match=expected):
        read_index(root)
    (root / "targets").rename(root / "clear")
    (root / "hazy" / "a.png").unlink()
    with pytest.raises(MissingFolderError, match=r"hazy holds no images"):
        read_index(root)


def test_unknown_layout_lists_the_valid_names(make_dataset) -> None:
    root = make_dataset(["a.png"], ["a.png"])
    with pytest.raises(UnknownLayoutError, match="unknown layout 'sots'.*sots-indoor.*generic"):
        read_index(root, "sots")


def test_name_fitting_no_pattern(make_dataset) -> None:
    root = make_dataset(["1400_1.png", "notes.png"], ["1400.png"])
    with pytest.raises(UnmatchedFileError, match=r"notes.png.*sots-indoor.*expected hazy/<scene>_<k>.png"):
        read_index(root, "sots-indoor")


def test_skip_bad_warns_once_and_keeps_the_rest(make_dataset) -> None:
    root = make_dataset(["1400_1.png", "1400_2.png", "1401_1.png", "1402_1.png"], ["1400.png", "1401.png"])
    (root / "hazy" / "1400_2.png").write_bytes(b"not an image")
    with pytest.warns(UserWarning, match=r"skipped 2 bad pair\(s\).*1402_1.png.*1400_2.png") as record:
        index = read_index(root, skip_bad=True)
    assert len(record) == 1
    assert [Path(p).name for p in index.hazy] == ["1400_1.png", "1401_1.png"]


def test_skip_bad_raises_when_nothing_is_left(make_dataset) -> None:
    root = make_dataset(["1400_1.png"], ["1400.png"])
    (root / "clear" / "1400.png").write_bytes(b"")
    with pytest.raises(DataError, match="no usable pairs"):
        read_index(root, skip_bad=True)


# --- inspect --------------------------------------------------------------------------------


def test_inspect_finds_every_problem(make_dataset) -> None:
    root = make_dataset(["1400_1.png", "1400_2.png", "1401_1.png", "1402_1.png", "1403_1.png", "odd.png"],
                        ["1400.png", "1401.png", "1403.png"])
    (root / "hazy" / "1400_2.png").write_bytes(b"junk")
    write_image(root / "clear" / "1403.png", size=(10, 10))
    report = inspect_dataset(root)
    assert report["layout"] == "sots-indoor" and report["pairs"] == 2 and report["scenes"] == 2
    assert report["sizes"] == {"24x20": 2}
    found = "\n".join(report["problems"])
    assert len(report["problems"]) == 4
    for name in ("odd.png", "1402_1.png", "1400_2.png", "1403_1.png"):
        assert name in found


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pipeline.data", "inspect", *args],
                          cwd=REPO, capture_output=True, text=True, timeout=120)


def test_inspect_cli_exit_codes(make_dataset) -> None:
    good = make_dataset(["01_hazy.png", "02_hazy.png"], ["01_GT.png", "02_GT.png"], clear_dir="GT", name="good")
    out = _cli(str(good), "--json")
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    assert (report["layout"], report["pairs"], report["scenes"], report["problems"]) == ("nh-haze", 2, 2, [])
    assert report["sizes"] == {"24x20": 2}

    bad = make_dataset(["01_hazy.png", "02_hazy.png"], ["01_GT.png"], clear_dir="GT", name="bad")
    out = _cli(str(bad), "--json")
    assert out.returncode == 1
    assert "02_hazy.png" in json.loads(out.stdout)["problems"][0]



def test_inspect_cli_usage_errors(make_dataset, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # In-process: the exit codes come from main(); the subprocess test above covers the module entry point.
    assert cli_main(["inspect", str(tmp_path / "missing")]) == 2
    assert "does not exist" in capsys.readouterr().err
    good = make_dataset(["01_hazy.png"], ["01_GT.png"], clear_dir="GT")
    assert cli_main(["inspect", str(good)]) == 0
    assert "layout    nh-haze" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exit_info:
        cli_main(["inspect", str(good), "--layout", "nope"])
    assert exit_info.value.code == 2 and "sots-indoor" in capsys.readouterr().err


@pytest.mark.parametrize("module", ["pipeline.data", "pipeline.backbones"])
def test_output_into_a_closed_pipe_ends_quietly(module: str, make_dataset) -> None:
    # As `python -m MODULE ... | head -1` when head has gone: no BrokenPipeError traceback, exit 0.
    args = ["inspect", str(make_dataset(["a.png"], ["a.png"])), "--json"] if module == "pipeline.data" else ["--json"]
    proc = subprocess.Popen([sys.executable, "-m", module, *args], cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    proc.stdout.close()  # the reader is gone before the command writes anything
    err = proc.stderr.read()
    assert proc.wait(timeout=120) == 0 and err == ""
