"""Shared fixtures: small image folders written on the fly, and the real benchmark images if present."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

# Real images live beside the repository (../shared/realdata); a fresh clone has none.
REALDATA = Path(__file__).resolve().parents[2] / "shared" / "realdata"


def write_image(path: Path, size: tuple[int, int] = (24, 20), mode: str = "RGB", seed: int = 0) -> Path:
    """Write a random `size` (W, H) image in `mode`; PIL picks the format from the extension, any case."""
    w, h = size
    pixels = np.random.default_rng(seed).integers(0, 256, (h, w, 4), dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels, "RGBA").convert(mode).save(path)
    return path


@pytest.fixture
def make_dataset(tmp_path: Path) -> Callable[..., Path]:
    """Factory: `make_dataset(hazy_names, clear_names, hazy_dir="hazy", clear_dir="clear", name="ds")` -> root.

    The first hazy image is grayscale and the first clear image RGBA when it is a PNG,
    so every reader also exercises the conversion to RGB.
    """

    def make(hazy: list[str], clear: list[str], *, hazy_dir: str = "hazy", clear_dir: str = "clear",
             name: str = "ds", size: tuple[int, int] = (24, 20)) -> Path:
        root = tmp_path / name
        for k, file in enumerate(hazy):
            write_image(root / hazy_dir / file, size, "L" if k == 0 else "RGB", seed=k)
        for k, file in enumerate(clear):
            rgba = k == 0 and file.lower().endswith(".png")
            write_image(root / clear_dir / file, size, "RGBA" if rgba else "RGB", seed=100 + k)
        return root

    return make


@pytest.fixture(scope="session")
def one_torch_thread() -> None:
    """One intra-op thread: these tests run tiny models beside other jobs, where extra threads only contend."""
    import torch

    torch.set_num_threads(1)


@pytest.fixture(scope="session")
def search_run(tmp_path_factory: pytest.TempPathFactory, one_torch_thread: None) -> Path:
    """A finished search made the real way without Ray (tests/helpers.py): 2 plain + 2 bild trials, 1 errored."""
    from helpers import build_search_run  # imported here: only the after-the-search tests pay for training

    return build_search_run(tmp_path_factory.mktemp("runs") / "exp1")


@pytest.fixture(scope="session")
def failed_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A search whose every trial errored."""
    from helpers import build_failed_run

    return build_failed_run(tmp_path_factory.mktemp("runs") / "all-failed")


@pytest.fixture(scope="session")
def model_dir(search_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A promoted tiny AOD-Net: models/aodnet (LATEST -> v1)."""
    from pipeline.models.promotion import promote

    models = tmp_path_factory.mktemp("models")
    promote(search_run, models, device="cpu")
    return models / "aodnet"
