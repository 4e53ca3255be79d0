"""Model and checkpoint files that cannot run code: a crafted pickle is refused by every command
that loads one, damaged files get one line naming them, older files convert."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest
import torch

from conftest import write_image
from pipeline import evaluate, promote
from pipeline.checkpoints import CheckpointError, load_checkpoint
from pipeline.models import load_model
from pipeline.models.__main__ import main as models_main
from pipeline.models.convert import convert
from pipeline.models.promotion import best_trial
from pipeline.models.promotion import promote as promote_run
from pipeline.models.store import LEGACY_MODEL_FORMAT
from pipeline.results import read_table, write_trial_row

pytestmark = pytest.mark.usefixtures("one_torch_thread")

REPO = Path(__file__).resolve().parents[1]


class Evil:
    """Unpickling this runs ``touch MARKER``: what a crafted model file from the internet can do."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return os.system, (f"touch {self.marker}",)


def _evil_file(path: Path, marker: Path, fmt: str = LEGACY_MODEL_FORMAT) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"format": fmt, "x": Evil(marker)}, path)
    return path


def _truncated(src: Path, dst: Path) -> Path:
    dst.parent.mkdir(parents=True, exist_ok=True)
    dst.write_bytes(src.read_bytes()[: src.stat().st_size // 2])
    return dst


def _run(module: str, *argv: str | Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", module, *map(str, argv)], cwd=REPO, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=300)


def _one_error_line(stderr: str, file: Path) -> str:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and str(file) in lines[0], stderr
    return lines[0]


@pytest.fixture(scope="module")
def promoted(search_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A promoted tiny AOD-Net version folder: model.safetensors + card.json."""
    return Path(promote_run(search_run, tmp_path_factory.mktemp("models"), device="cpu")["path"])


@pytest.fixture
def image(tmp_path: Path) -> Path:
    return write_image(tmp_path / "in" / "hazy.png", (40, 32))


# --- the crafted pickle: nothing it asks for happens ------------------------------------------------


def test_dehaze_refuses_a_crafted_model_pt(tmp_path: Path, image: Path) -> None:
    marker = tmp_path / "pwned"
    evil = _evil_file(tmp_path / "downloaded" / "model.pt", marker)
    for model in (evil, evil.parent):  # the file, and the folder holding it
        done = _run("pipeline.dehaze", image, "--model", model, "--out", tmp_path / "out")
        assert done.returncode == 2 and not marker.exists()
        line = _one_error_line(done.stderr, evil)
        assert "GLOBAL posix.system" in line and "python -m pipeline.models convert" in line and "--trust" in line
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_evaluate_refuses_a_crafted_model_pt(tmp_path: Path, make_dataset, capsys: pytest.CaptureFixture) -> None:
    marker = tmp_path / "pwned"
    evil = _evil_file(tmp_path / "model.pt", marker)
    root = make_dataset(["1_1.png"], ["1.png"])
    assert evaluate.main(["--model", str(evil), "--dataset", "sots-indoor", "--data-root", str(root)]) == 2
    assert not marker.exists()
    _one_error_line(capsys.readouterr().err, evil)


def test_promote_refuses_a_run_whose_best_checkpoint_is_crafted(search_run: Path, tmp_path: Path,
                                                               capsys: pytest.CaptureFixture) -> None:
    run, marker = tmp_path / "exp1", tmp_path / "pwned"
    shutil.copytree(search_run / "results", run / "results")
    best = best_trial(search_run)
    evil = _evil_file(run / best["trial_id"] / "checkpoint_000001" / "checkpoint.pt", marker, "bild-checkpoint/1")
    row = read_table([search_run], "trials").filter(pl.col("trial_id") == best["trial_id"]).row(0, named=True)
    write_trial_row(run, {**row, "best_checkpoint_path": str(evil)})
    assert best_trial(run)["checkpoint"] == str(evil)  # the crafted file is the one promote must read
    assert promote.main([str(run), "--models", str(tmp_path / "models"), "--device", "cpu"]) == 2
    assert not marker.exists() and not (tmp_path / "models").exists()
    _one_error_line(capsys.readouterr().err, evil)


def test_train_resume_refuses_a_crafted_checkpoint(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    evil = _evil_file(tmp_path / "run" / "checkpoint.pt", marker, "bild-checkpoint/1")
    done = _run("pipeline.train", "--backbone", "aodnet", "--preset", "tiny", "--run-dir", evil.parent, "--resume")
    assert done.returncode == 2 and not marker.exists()
    assert "GLOBAL posix.system" in _one_error_line(done.stderr, evil)


def test_the_crafted_file_is_real_and_only_trust_runs_it(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    # Without this, the tests above could pass on a file that was never dangerous.
    marker = tmp_path / "pwned"
    evil = _evil_file(tmp_path / "model.pt", marker)
    assert models_main(["convert", str(evil)]) == 2 and not marker.exists()
    assert "rerun with --trust" in _one_error_line(capsys.readouterr().err, evil)
    with pytest.raises(CheckpointError, match="backbone.name is missing"):
        convert(evil, trust=True)  # documented: --trust unpickles the file, running its code
    assert marker.exists()
    assert not (tmp_path / "model.safetensors").exists()


# --- damaged files: one line naming the file, never a KeyError traceback ------------------------------


def test_truncated_safetensors_and_card(promoted: Path, tmp_path: Path, image: Path) -> None:
    folder = tmp_path / "v1"
    shutil.copytree(promoted, folder)
    _truncated(promoted / "model.safetensors", folder / "model.safetensors")
    done = _run("pipeline.dehaze", image, "--model", folder, "--out", tmp_path / "out")
    assert done.returncode == 2 and "sha256" in _one_error_line(done.stderr, folder / "model.safetensors")

    shutil.copy(promoted / "model.safetensors", folder / "model.safetensors")
    _truncated(promoted / "card.json", folder / "card.json")
    with pytest.raises(CheckpointError, match=r"card\.json is not valid JSON"):
        load_model(folder)
    card = json.loads((promoted / "card.json").read_text())
    del card["kwargs"]
    (folder / "card.json").write_text(json.dumps(card))
    with pytest.raises(CheckpointError, match=r"card\.json is malformed: kwargs is missing"):
        load_model(folder)
    (folder / "card.json").unlink()
    with pytest.raises(CheckpointError, match="has no card.json beside it"):
        load_model(folder / "model.safetensors")


def test_truncated_and_malformed_pickles(search_run: Path, tmp_path: Path, make_dataset,
                                         capsys: pytest.CaptureFixture) -> None:
    ckpt = Path(best_trial(search_run)["checkpoint"])
    cut = _truncated(ckpt, tmp_path / "cut" / "model.pt")
    root = make_dataset(["1_1.png"], ["1.png"])
    assert evaluate.main(["--model", str(cut), "--dataset", "sots-indoor", "--data-root", str(root)]) == 2
    assert "could not be read" in _one_error_line(capsys.readouterr().err, cut)
    bare = tmp_path / "bare" / "model.pt"  # the right format tag, nothing else
    bare.parent.mkdir()
    torch.save({"format": LEGACY_MODEL_FORMAT}, bare)
    with pytest.raises(CheckpointError, match="backbone.name is missing"):
        load_model(bare)
    state = load_checkpoint(ckpt)
    state["models"]["backbone"] = {"k_estimation.0.weight": torch.zeros(2, 2)}  # weights of another network
    torch.save(state, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="does not build a 'aodnet' backbone"):
        load_model(tmp_path / "other.pt")
    run = tmp_path / "run"
    _truncated(ckpt, run / "checkpoint.pt")
    done = _run("pipeline.train", "--backbone", "aodnet", "--preset", "tiny", "--run-dir", run, "--resume")
    assert done.returncode == 2 and "could not be read" in _one_error_line(done.stderr, run / "checkpoint.pt")
    del state["config"]  # the right format tag and weights, a key every reader needs gone
    torch.save(state, run / "checkpoint.pt")
    done = _run("pipeline.train", "--backbone", "aodnet", "--preset", "tiny", "--run-dir", run, "--resume")
    assert done.returncode == 2 and "config is missing" in _one_error_line(done.stderr, run / "checkpoint.pt")


# --- older model.pt files convert -----------------------------------------------------------------------


def test_convert_an_older_model_pt_keeps_its_card_and_outputs(search_run: Path, tmp_path: Path,
                                                              capsys: pytest.CaptureFixture) -> None:
    state = load_checkpoint(best_trial(search_run)["checkpoint"])
    old = tmp_path / "aodnet" / "v3"
    old.mkdir(parents=True)
    torch.save({"format": LEGACY_MODEL_FORMAT, "backbone": state["backbone"],
                "state_dict": state["models"]["backbone"]}, old / "model.pt")
    old_card = {"format": "bild-model-card/1", "backbone": "aodnet", "preset": "tiny", "version": "v3",
                "test": {"psnr": 21.5}}
    (old / "card.json").write_text(json.dumps(old_card))
    x = torch.rand(1, 3, 40, 36)
    before = load_model(old / "model.pt")[0](x)

    assert models_main(["convert", str(old / "model.pt")]) == 0
    assert "model.safetensors" in capsys.readouterr().out
    model, card = load_model(old)  # the folder now resolves to the safetensors file
    assert torch.equal(model(x), before)
    assert card["format"] == "bild-model-card/2" and card["test"] == {"psnr": 21.5} and card["version"] == "v3"
    assert card["converted"]["from"] == str(old / "model.pt") and card["converted"]["unsafe_unpickling"] is False
    assert models_main(["convert", str(old / "model.pt")]) == 2  # never overwrites a converted model
    assert "already exists" in capsys.readouterr().err
