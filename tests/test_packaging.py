"""A wheel of the package carries the search spaces and dataset descriptors, and finds them outside a checkout."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# What a build reads: copying only these keeps the checkout free of build/ and *.egg-info folders.
SOURCES = ("pyproject.toml", "setup.py", "MANIFEST.in", "README.md", "pipeline", "search_spaces", "datasets")

PROBE = """
import json, pipeline
from pipeline.config import compose_config, group_dir
from pipeline.tune.space import load_search_space
cfg = compose_config(["datasets=its", "backbone=msbdn"])
space = load_search_space("msbdn", cfg)
print(json.dumps({"package": pipeline.__file__, "datasets": str(group_dir("datasets")),
                  "dataset": cfg.dataset.name, "select_images": cfg.dataset.select_images,
                  "space": space.source, "params": [p.name for p in space.params]}))
"""


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    src, out = tmp_path_factory.mktemp("src"), tmp_path_factory.mktemp("wheel")
    for name in SOURCES:
        copy = shutil.copytree if (REPO / name).is_dir() else shutil.copy2
        copy(REPO / name, src / name, **({"ignore": shutil.ignore_patterns("__pycache__", "local")}
                                         if (REPO / name).is_dir() else {}))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(out),
                    str(src)], check=True, capture_output=True, text=True, timeout=300)
    (built,) = out.glob("bild_dehaze-*.whl")
    return built


def test_the_wheel_ships_search_spaces_and_dataset_descriptors(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    for group in ("search_spaces", "datasets"):
        shipped = {f"pipeline/conf/{group}/{p.name}" for p in (REPO / group).glob("*.yaml")}
        assert shipped and shipped <= names, f"{group} missing from {wheel.name}"
    assert "pipeline/conf/config.yaml" in names and "pipeline/models/promotion.py" in names
    assert not any(n.startswith(("datasets/", "search_spaces/", "tests/")) for n in names)


def test_an_unpacked_wheel_finds_its_configs_outside_a_checkout(wheel: Path, tmp_path: Path) -> None:
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    done = subprocess.run([sys.executable, "-c", PROBE], cwd=elsewhere, env={"PYTHONPATH": str(site), "PATH": ""},
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    found = json.loads(done.stdout)
    assert Path(found["package"]).is_relative_to(site)
    assert Path(found["datasets"]) == site / "pipeline" / "conf" / "datasets"
    assert (found["dataset"], found["select_images"]) == ("its", 64)
    assert Path(found["space"]) == site / "pipeline" / "conf" / "search_spaces" / "msbdn.yaml" and found["params"]


def test_a_checkout_reads_its_own_folders() -> None:
    from pipeline.config import group_dir

    assert group_dir("datasets") == REPO / "datasets" and group_dir("search_spaces") == REPO / "search_spaces"
