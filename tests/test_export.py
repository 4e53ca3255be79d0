"""python -m pipeline.export: a promoted backbone as ONNX / TorchScript that dehazes a real photo
like PyTorch does, at any size, and a backbone that cannot is refused."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from PIL import Image

from conftest import REALDATA
from pipeline.backbones import backbone_kwargs, create_backbone
from pipeline.data import load_builtin, to_tensor
from pipeline.data.images import decode_image
from pipeline.export import main
from pipeline.models import load_model
from pipeline.models.promotion import promote
from pipeline.models.store import file_sha256, save_model

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _untrained(folder: Path, name: str) -> Path:
    """A promoted-model folder for a backbone with its initial weights: export does not care how it trained."""
    torch.manual_seed(0)
    save_model(folder, {"name": name, "preset": "tiny", "kwargs": backbone_kwargs(name, "tiny")},
               create_backbone(name, "tiny").state_dict(), {"version": folder.name})
    (folder.parent / "LATEST").write_text(f"{folder.name}\n")
    return folder


@pytest.fixture(scope="module")
def models(search_run: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("models")
    aodnet = Path(promote(search_run, root, device="cpu")["path"])  # trained, as a user promotes it
    return {"aodnet": aodnet, "ffanet": _untrained(root / "ffanet" / "v1", "ffanet")}


@pytest.fixture(scope="module")
def photo(tmp_path_factory: pytest.TempPathFactory) -> torch.Tensor:
    """A hazy photo of the built-in data, written and read back as a user's PNG: (1, 3, 96, 96)."""
    path = tmp_path_factory.mktemp("photo") / "hazy.png"
    Image.fromarray(load_builtin().pair(0)[0]).save(path)
    return to_tensor(decode_image(path))


def _sizes(photo: torch.Tensor) -> list[torch.Tensor]:
    return [photo, photo[..., 5:86, 3:70].contiguous()]  # the whole photo and an odd-sized crop of it


def _onnx_runner(path: Path):
    ort = pytest.importorskip("onnxruntime")
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return lambda x: torch.from_numpy(session.run(None, {"hazy": x.numpy()})[0])


def _torchscript_runner(path: Path):
    scripted = torch.jit.load(str(path))
    return lambda x: scripted(x)


RUNNERS = {"onnx": _onnx_runner, "torchscript": _torchscript_runner}


@pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:DeprecationWarning")
@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
@pytest.mark.parametrize("backbone", ["aodnet", "ffanet"])
def test_export_dehazes_a_photo_like_pytorch(models: dict[str, Path], photo: torch.Tensor, tmp_path: Path,
                                             backbone: str, fmt: str, capsys: pytest.CaptureFixture) -> None:
    if fmt == "onnx":
        pytest.importorskip("onnxruntime")
    out = tmp_path / f"{backbone}.{fmt}"
    assert main([str(models[backbone].parent), "--format", fmt, "--out", str(out)]) == 0  # models/<backbone>
    assert "recorded in" in capsys.readouterr().out
    run = RUNNERS[fmt](out)
    model, _ = load_model(models[backbone])
    for x in _sizes(photo):
        with torch.no_grad():
            expected, got = model(x), run(x)
        assert got.shape == x.shape and (got - expected).abs().max().item() < 1e-4
    card = json.loads((models[backbone] / "card.json").read_text())
    entry = next(e for e in card["exports"] if e["file"] == str(out.resolve()))
    assert entry["format"] == fmt and entry["sha256"] == file_sha256(out)
    assert load_model(models[backbone])[1]["exports"]  # the card still loads after the export was recorded


@pytest.mark.skipif(not (REALDATA / "unpaired").is_dir(), reason="needs ../shared/realdata/unpaired")
def test_onnx_export_on_full_size_real_photos(models: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "aodnet.onnx"
    assert main([str(models["aodnet"]), "--format", "onnx", "--out", str(out)]) == 0
    run = _onnx_runner(out)
    model, _ = load_model(models["aodnet"])
    for name in ("aodtorch_canyon.png", "aodtorch_man.png"):  # 768x576 and 580x435
        x = to_tensor(decode_image(REALDATA / "unpaired" / name))
        with torch.no_grad():
            assert (run(x) - model(x)).abs().max().item() < 1e-4


def test_a_backbone_traced_to_one_size_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    # GridDehazeNet pads to a multiple of its stride in Python: traced, it only takes the tracing size.
    folder = _untrained(tmp_path / "griddehazenet" / "v1", "griddehazenet")
    out = tmp_path / "grid.pt"
    assert main([str(folder), "--format", "torchscript", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "griddehazenet exported to torchscript does not reproduce PyTorch" in err[0]
    assert not out.exists() and not list(tmp_path.glob(".grid.pt*"))
    assert "exports" not in json.loads((folder / "card.json").read_text())


def test_bad_arguments_name_the_problem(models: dict[str, Path], tmp_path: Path,
                                        capsys: pytest.CaptureFixture) -> None:
    assert main([str(tmp_path / "nomodel"), "--format", "torchscript", "--out", str(tmp_path / "m.pt")]) == 2
    assert "nomodel" in capsys.readouterr().err
    assert main([str(models["aodnet"]), "--format", "torchscript", "--out", str(tmp_path)]) == 2
    assert "is a folder" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main([str(models["aodnet"]), "--format", "tflite", "--out", str(tmp_path / "m")])
    assert "invalid choice: 'tflite'" in capsys.readouterr().err
