"""Hydra composition for every entry point, and configs read back from saved runs.

The groups ``backbone`` and ``policy`` live in ``pipeline/conf/``. ``datasets`` (each file
declares its package, ``dataset``) and ``search_spaces`` (read by ``pipeline.tune.space``, not
part of the training config) are the repository's top-level folders of those names, so the
descriptors a user edits are the ones the pipeline reads. Which copy is read:

1. run from a checkout (the package's parent folder holds this project's pyproject.toml):
   the checkout's top-level ``datasets/`` and ``search_spaces/``;
2. installed from a wheel (``pip install .``): the copies the build put into
   ``pipeline/conf/datasets/`` and ``pipeline/conf/search_spaces/`` (setup.py).

A search space may always be given as a path to any YAML file instead of a name.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hydra import compose, initialize_config_dir
from hydra.errors import HydraException
from omegaconf import DictConfig, OmegaConf

__all__ = ["ADDED_KEYS", "CONF_DIR", "PAPER_STEP", "REPO_ROOT", "RENAMED_KEYS", "ConfigError", "compose_config",
           "flatten", "group_dir", "group_options", "paper_step_overrides", "saved_config"]

CONF_DIR = Path(__file__).resolve().parent / "conf"
REPO_ROOT = Path(__file__).resolve().parents[1]
_PACKAGE_GROUPS = ("backbone", "policy")  # groups that live inside the package, under conf/
_TOP_LEVEL_GROUPS = ("datasets", "search_spaces")  # a checkout's top-level folders, packaged copies in a wheel


def _in_checkout() -> bool:
    """Whether the package runs from a checkout of this project (else: installed, e.g. in site-packages)."""
    project = REPO_ROOT / "pyproject.toml"
    return project.is_file() and 'name = "bild-dehaze"' in project.read_text(encoding="utf-8")


def _top_level_root() -> Path:
    """The folder holding ``datasets/`` and ``search_spaces/``: the checkout, else the packaged ``conf/``."""
    return REPO_ROOT if _in_checkout() else CONF_DIR


class ConfigError(ValueError):
    """A flag or override that does not fit the config; the message names it."""


def group_dir(group: str) -> Path:
    """The folder of a config group (``backbone``, ``policy``, ``datasets``, ``search_spaces``)."""
    if group in _TOP_LEVEL_GROUPS:
        return _top_level_root() / group
    return CONF_DIR / group


def group_options(group: str) -> list[str]:
    """Names available in a config group."""
    return sorted(p.stem for p in group_dir(group).glob("*.yaml"))


def _check_group_choice(overrides: list[str]) -> None:
    for item in overrides:
        key, _, value = item.partition("=")
        if key in (*_PACKAGE_GROUPS, "datasets") and value not in group_options(key):
            raise ConfigError(f"unknown {key.rstrip('s')} {value!r}; expected one of: {', '.join(group_options(key))}")


def compose_config(overrides: list[str] | None = None) -> DictConfig:
    """Compose ``pipeline/conf/config.yaml`` with ``overrides`` (Hydra ``key=value`` strings)."""
    overrides = list(overrides or [])
    _check_group_choice(overrides)
    search_path = f"hydra.searchpath=[file://{_top_level_root()}]"
    try:
        with initialize_config_dir(str(CONF_DIR), version_base=None):
            cfg = compose("config", overrides=[search_path, *overrides])
    except HydraException as err:
        raise ConfigError(f"bad config override: {err}") from err
    OmegaConf.set_struct(cfg, True)
    return cfg


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Dotted key -> leaf value of a plain nested dict (``{"train": {"epochs": 3}}`` -> ``{"train.epochs": 3}``)."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


# Keys renamed since runs were first saved: old dotted key -> today's.
RENAMED_KEYS = {"bild.entropy_coef": "bild.alpha"}
# The paper's BILD step, whatever today's defaults are: the policy's weights unmixed, a fixed D_v.
PAPER_STEP = {"bild.mix": 1.0, "train.val_rotation": False}
# Training options added since runs were first saved -> the value that trains as those runs did.
ADDED_KEYS = {**PAPER_STEP, "bild.ess_floor": 0.0, "train.bild_warmup_steps": 0, "train.precision": "fp32",
              "train.compile": False, "train.init": None, "train.init_sha256": None}


def paper_step_overrides() -> list[str]:
    """``PAPER_STEP`` as Hydra overrides, for studies of the paper's step (``bild.mix=1.0``, ...)."""
    return [f"{key}={str(value).lower()}" for key, value in PAPER_STEP.items()]


def saved_config(saved: Any) -> DictConfig:
    """A config read back from a checkpoint or an experiment, as the run was trained.

    Keys saved under an older name (``RENAMED_KEYS``) are read under today's. Runs saved
    before the reweighting-policy keys existed (``bild.regulariser``, ``score_bound``,
    ``reweighter_norm``, ``pair_consistency``) trained the paper's policy, the only one there
    was: the keys they lack come from ``policy/paper.yaml``, not from today's default, so they
    rebuild the networks their weights belong to. Training options added since (``ADDED_KEYS``:
    the guard rail, the ESS floor, the rotating validation fold, the warm-up, the precision) take
    the value that trains as those runs did; ``train.amp`` is read as ``train.precision``.
    """
    cfg = OmegaConf.create(saved)
    for old, new in RENAMED_KEYS.items():
        value = OmegaConf.select(cfg, old)
        if value is not None and OmegaConf.select(cfg, new) is None:
            parent, _, leaf = old.rpartition(".")
            OmegaConf.update(cfg, new, value)
            del cfg[parent][leaf]
    for key, value in OmegaConf.load(CONF_DIR / "policy" / "paper.yaml").items():
        if key not in cfg.bild:
            cfg.bild[key] = value
    if "train" in cfg and "amp" in cfg.train:  # train.amp (bf16 autocast or none) became train.precision
        cfg.train.setdefault("precision", "bf16" if cfg.train.amp else "fp32")
        del cfg.train["amp"]
    for key, value in ADDED_KEYS.items():
        block, _, leaf = key.partition(".")
        if block in cfg and leaf not in cfg[block]:
            cfg[block][leaf] = value
    return cfg
