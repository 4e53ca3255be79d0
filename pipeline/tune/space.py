"""Declarative search spaces (``search_spaces/*.yaml``) -> validated specs -> Optuna distributions.

A space file names the metric, mode, trial count, Optuna sampler and its seed and, per
hyperparameter, the config key it sets, its type and range. A parameter's name is its
config key's last part (``alpha`` sets ``bild.alpha``): one name from the file to the Parquet
column. Entries marked ``bild_only`` (alpha, the guard rail mix, the outer learning rate, the
validation fraction) mean nothing to plain training and are left out of plain searches. Any other
top-level key is an error, so a typo cannot silently fall back to a default.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
from omegaconf import DictConfig, OmegaConf

from ..config import ConfigError, group_dir
from ..results import METRICS
from ..trainer import TRAINING_BOUNDS, check_value

__all__ = [
    "SAMPLERS", "SearchSpaceError", "ParamSpec", "SearchSpace", "resolve_space_path", "load_search_space",
    "apply_params", "make_sampler",
]

_TYPES = ("float", "int", "categorical")
_TOP_KEYS = ("metric", "mode", "trials", "seed", "sampler", "space")
SAMPLERS = ("tpe", "random")


class SearchSpaceError(ValueError):
    """A malformed search-space file; the message names the file and the key."""


@dataclass(frozen=True)
class ParamSpec:
    name: str
    key: str  # dotted config key the value is written to, e.g. bild.entropy_coef
    type: str
    low: float | None = None
    high: float | None = None
    log: bool = False
    choices: tuple[Any, ...] = ()
    bild_only: bool = False

    def distribution(self) -> optuna.distributions.BaseDistribution:
        if self.type == "float":
            return optuna.distributions.FloatDistribution(self.low, self.high, log=self.log)
        if self.type == "int":
            return optuna.distributions.IntDistribution(int(self.low), int(self.high), log=self.log)
        return optuna.distributions.CategoricalDistribution(list(self.choices))


@dataclass(frozen=True)
class SearchSpace:
    source: str
    metric: str
    mode: str
    trials: int
    seed: int
    sampler: str
    params: tuple[ParamSpec, ...]

    def for_mode(self, mode: str) -> dict[str, optuna.distributions.BaseDistribution]:
        """The Optuna space one training mode searches (plain drops the bild-only entries)."""
        return {p.name: p.distribution() for p in self.params if mode != "plain" or not p.bild_only}

    def keys(self) -> dict[str, str]:
        return {p.name: p.key for p in self.params}


def resolve_space_path(name_or_path: str) -> Path:
    """A name in ``search_spaces/`` or a path to a YAML file."""
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml") or path.exists():
        if not path.is_file():
            raise SearchSpaceError(f"search space file {path} does not exist")
        return path
    named = group_dir("search_spaces") / f"{name_or_path}.yaml"
    if not named.is_file():
        known = ", ".join(sorted(p.stem for p in named.parent.glob("*.yaml")))
        raise SearchSpaceError(f"unknown search space {name_or_path!r}; expected one of: {known}, or a YAML path")
    return named


def _param(source: str, name: str, raw: Any, cfg: DictConfig | None) -> ParamSpec:
    where = f"{source}: space.{name}"
    if not isinstance(raw, dict):
        raise SearchSpaceError(f"{where} must be a mapping with key, type and range")
    if isinstance(raw.get("key"), str) and raw["key"].rpartition(".")[2] != name:
        raise SearchSpaceError(f"{where}: a parameter is named after the key it sets; expected "
                               f"{raw['key'].rpartition('.')[2]!r} for key {raw['key']!r}")
    unknown = set(raw) - {"key", "type", "low", "high", "log", "choices", "bild_only"}
    if unknown:
        raise SearchSpaceError(f"{where} has unknown field(s) {sorted(unknown)}")
    if "key" not in raw:
        raise SearchSpaceError(f"{where}.key is missing (the config key it sets, e.g. bild.alpha)")
    if cfg is not None and OmegaConf.select(cfg, raw["key"], default=None) is None:
        raise SearchSpaceError(f"{where}.key={raw['key']!r} is not a key of the training config")
    kind = raw.get("type")
    if kind not in _TYPES:
        raise SearchSpaceError(f"{where}.type={kind!r}; expected one of {', '.join(_TYPES)}")
    if kind == "categorical":
        choices = raw.get("choices")
        if not isinstance(choices, list) or not choices:
            raise SearchSpaceError(f"{where}.choices must be a non-empty list")
        return ParamSpec(name, raw["key"], kind, choices=tuple(choices), bild_only=bool(raw.get("bild_only")))
    try:
        low, high = float(raw["low"]), float(raw["high"])
    except (KeyError, TypeError, ValueError) as err:
        raise SearchSpaceError(f"{where} needs numeric low and high ({err})") from err
    if not low < high or (raw.get("log") and low <= 0):
        raise SearchSpaceError(f"{where}: expected 0 < low < high for log ranges and low < high otherwise, got {low}, {high}")
    if raw["key"] in TRAINING_BOUNDS:  # a range reaching where training cannot work (an lr of 1e6) is refused
        for end, value in (("low", low), ("high", high)):
            try:
                check_value(raw["key"], value)
            except ConfigError as err:
                raise SearchSpaceError(f"{where}.{end}: {err}") from None
    return ParamSpec(name, raw["key"], kind, low, high, bool(raw.get("log")), bild_only=bool(raw.get("bild_only")))


def load_search_space(name_or_path: str, cfg: DictConfig | None = None) -> SearchSpace:
    """Read and validate a space; with ``cfg``, every key must exist in the training config."""
    path = resolve_space_path(name_or_path)
    try:
        raw = OmegaConf.to_container(OmegaConf.load(path))
    except Exception as err:  # omegaconf wraps yaml errors in several types
        raise SearchSpaceError(f"{path} is not valid YAML: {err}") from err
    return space_from_dict(raw, str(path), cfg)


def space_from_dict(raw: Any, source: str, cfg: DictConfig | None = None) -> SearchSpace:
    """Validate an already-parsed space (a YAML file, or the ``search_space`` node of a config)."""
    if not isinstance(raw, dict) or not isinstance(raw.get("space"), dict) or not raw["space"]:
        raise SearchSpaceError(f"{source}: expected a mapping with a non-empty 'space' section")
    unknown = sorted(set(raw) - set(_TOP_KEYS))
    if unknown:
        raise SearchSpaceError(f"{source}: unknown top-level key(s) {unknown}; expected only {', '.join(_TOP_KEYS)}")
    metric, mode = raw.get("metric", "select_psnr"), raw.get("mode", "max")
    if metric not in METRICS:
        raise SearchSpaceError(f"{source}: metric={metric!r}; expected one of {', '.join(METRICS)} (the selection set)")
    if mode != "max":
        raise SearchSpaceError(f"{source}: mode={mode!r}; expected max (both selection metrics grow with quality)")
    trials, seed, sampler = raw.get("trials", 6), raw.get("seed", 0), raw.get("sampler", "tpe")
    if not isinstance(trials, int) or trials < 1:
        raise SearchSpaceError(f"{source}: trials={trials!r}; expected a positive integer")
    if not isinstance(seed, int):
        raise SearchSpaceError(f"{source}: seed={seed!r}; expected an integer")
    if sampler not in SAMPLERS:
        raise SearchSpaceError(f"{source}: sampler={sampler!r}; expected one of {', '.join(SAMPLERS)}")
    params = tuple(_param(source, name, spec, cfg) for name, spec in raw["space"].items())
    return SearchSpace(source, metric, mode, trials, seed, sampler, params)


def make_sampler(space: SearchSpace, trials: int, seed: int | None = None) -> optuna.samplers.BaseSampler:
    """The space's Optuna sampler, seeded by ``seed`` (``--seed``) or else by the space's own ``seed``."""
    seed = space.seed if seed is None else seed
    if space.sampler == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    return optuna.samplers.TPESampler(seed=seed, n_startup_trials=max(2, trials // 3))


def apply_params(cfg: DictConfig, params: dict[str, Any], space: SearchSpace) -> DictConfig:
    """A copy of ``cfg`` with each sampled value written to its config key."""
    out = cfg.copy()
    keys = space.keys()
    with_flag = OmegaConf.is_struct(out)
    OmegaConf.set_struct(out, False)
    for name, value in params.items():
        if name in keys:
            OmegaConf.update(out, keys[name], value, merge=False)
    OmegaConf.set_struct(out, with_flag)
    return out
