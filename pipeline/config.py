"""Hydra composition for every entry point: one function, flags mapped onto config keys.

The groups ``backbone`` and ``policy`` live in ``pipeline/conf/``; ``datasets`` and
``search_spaces`` are the repository's top-level folders of the same names (each file
declares its own package: ``dataset`` and ``search_space``), so the descriptors a user
edits are the ones the pipeline reads.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from hydra import compose, initialize_config_dir
from hydra.errors import HydraException
from omegaconf import DictConfig, OmegaConf

__all__ = [
    "CONF_DIR", "REPO_ROOT", "ConfigError", "add_policy_flag", "compose_config", "group_options", "flag_overrides",
    "saved_config",
]

CONF_DIR = Path(__file__).resolve().parent / "conf"
REPO_ROOT = Path(__file__).resolve().parents[1]
_PACKAGE_GROUPS = ("backbone", "policy")  # groups shipped inside the package, under conf/


class ConfigError(ValueError):
    """A flag or override that does not fit the config; the message names it."""


def group_options(group: str) -> list[str]:
    """Names available in a config group (``backbone``, ``policy``, ``datasets``, ``search_spaces``)."""
    folder = CONF_DIR / group if group in _PACKAGE_GROUPS else REPO_ROOT / group
    return sorted(p.stem for p in folder.glob("*.yaml"))


def add_policy_flag(parser: argparse.ArgumentParser) -> None:
    """``--policy NAME``, one of the ``policy`` group's files; map it with ``"policy": "policy="``."""
    parser.add_argument("--policy", choices=group_options("policy"),
                        help="reweighting policy: default (KL barrier) | paper (entropy, tanh-bounded scores)")


def flag_overrides(flags: dict[str, Any], mapping: dict[str, str]) -> list[str]:
    """Turn argparse values into Hydra overrides: ``{flag: value}`` through ``{flag: key}``.

    Flags left as None keep the config's default. A mapping value ending in ``=`` names a
    group (``datasets=``), the rest are dotted keys.
    """
    overrides = []
    for flag, key in mapping.items():
        value = flags.get(flag)
        if value is None:
            continue
        if key.endswith("="):
            overrides.append(f"{key}{value}")
        else:
            overrides.append(f"{key}={_hydra_value(value)}")
    return overrides


def _hydra_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str) and any(c in value for c in " ,=[]{}'\""):
        return "'" + value.replace("'", "\\'") + "'"
    return str(value)


def _check_group_choice(overrides: list[str]) -> None:
    for item in overrides:
        key, _, value = item.partition("=")
        if key in (*_PACKAGE_GROUPS, "datasets", "search_spaces") and value not in group_options(key):
            hint = " (or pass a path to a search-space YAML)" if key == "search_spaces" else ""
            raise ConfigError(
                f"unknown {key.rstrip('s')} {value!r}; expected one of: {', '.join(group_options(key))}{hint}"
            )


def compose_config(overrides: list[str] | None = None) -> DictConfig:
    """Compose ``pipeline/conf/config.yaml`` with ``overrides`` (Hydra ``key=value`` strings)."""
    overrides = list(overrides or [])
    _check_group_choice(overrides)
    search_path = f"hydra.searchpath=[file://{REPO_ROOT}]"
    try:
        with initialize_config_dir(str(CONF_DIR), version_base=None):
            cfg = compose("config", overrides=[search_path, *overrides])
    except HydraException as err:
        raise ConfigError(f"bad config override: {err}") from err
    OmegaConf.set_struct(cfg, True)
    return cfg


def saved_config(saved: Any) -> DictConfig:
    """A config read back from a checkpoint or an experiment, as the run was trained.

    Runs saved before the reweighting-policy keys existed (``bild.regulariser``,
    ``score_bound``, ``reweighter_norm``, ``pair_consistency``) trained the paper's policy, the
    only one there was: the keys they lack come from ``policy/paper.yaml``, not from today's
    default, so they rebuild the networks their weights belong to.
    """
    cfg = OmegaConf.create(saved)
    for key, value in OmegaConf.load(CONF_DIR / "policy" / "paper.yaml").items():
        if key not in cfg.bild:
            cfg.bild[key] = value
    return cfg
