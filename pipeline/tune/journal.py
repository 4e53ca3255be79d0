"""The experiment's Optuna journal, kept recoverable: a torn last record repaired, a lost or
unreadable journal restored from its last good copy or rebuilt from the Parquet records.

The journal (``optuna/journal.log``, pipeline/studies.py) is one JSON record per line,
appended as the search runs. A crash or a full disk can cut the last record short, and
Optuna then fails on the next record written after it; a deleted or garbled journal loses
the studies. Before a search resumes, :func:`recover_journal`

1. cuts a torn last record off (after copying the file to ``journal.log.damaged-<time>``);
2. puts the last good copy back (``journal.log.last-good``, kept by :class:`JournalBackupCallback`)
   when the journal is missing or garbled beyond its last line;
3. checks the studies against the project's own record, the Parquet trials table, and when
   they disagree rebuilds them from it: each trial's parameters, the value OptunaSearch
   tells (the metric of its last reported epoch), its state, and its per-epoch values.

Each step says what it did in one line; what cannot be rebuilt is refused in one line naming
the file and how to recover.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import re
import shutil
import sys
import warnings
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState
from ray.tune import Callback

from ..config import ConfigError
from ..files import atomic_write
from ..results import FINISHED, epoch_rows, read_rows, results_dir
from ..studies import study_journal, study_name, study_storage
from .space import SearchSpace

__all__ = ["LAST_GOOD", "JournalBackupCallback", "JournalError", "create_study", "recover_journal"]

LAST_GOOD = ".last-good"  # suffix of the journal's last good copy, beside it
# Parquet statuses -> the Optuna state OptunaSearch leaves a trial in.
_STATES = {**dict.fromkeys(FINISHED, TrialState.COMPLETE), "NONFINITE": TrialState.COMPLETE,
           "ERROR": TrialState.FAIL, "RUNNING": TrialState.RUNNING}


class JournalError(ConfigError):
    """An Optuna journal that can be neither repaired nor rebuilt; the message names it and the way out."""


def _whole_records(data: bytes) -> bool:
    """Whether every line of a journal is one complete JSON record."""
    try:
        for line in data.splitlines():
            json.loads(line)
    except ValueError:
        return False
    return True


def _set_aside(path: Path) -> Path:
    """Copy a damaged journal to ``<name>.damaged-<time>`` before changing it."""
    copy = path.with_name(f"{path.name}.damaged-{dt.datetime.now():%Y%m%d-%H%M%S-%f}")
    shutil.copy2(path, copy)
    return copy


def _say(message: str) -> None:
    print(f"Optuna journal: {message}", file=sys.stderr, flush=True)


def _repair_tail(path: Path) -> bool:
    """Cut a torn last record off ``path``; returns whether the journal now reads whole."""
    data = path.read_bytes()
    if data and not data.endswith(b"\n"):
        whole = data[: data.rfind(b"\n") + 1]
        copy = _set_aside(path)
        atomic_write(path, lambda tmp: tmp.write_bytes(whole))
        _say(f"{path} ended in a torn record ({len(data) - len(whole)} bytes, from a crash or a full disk); "
             f"dropped it, the file as it was is kept as {copy.name}")
        data = whole
    return _whole_records(data)


def _restore_last_good(path: Path) -> None:
    """Put the last good copy back over a missing or garbled journal (or start it empty without one)."""
    backup = path.with_name(path.name + LAST_GOOD)
    what = "missing" if not path.exists() else "damaged beyond its last record"
    if path.exists():
        copy = _set_aside(path)
        path.unlink()
        what += f" (kept as {copy.name})"
    if backup.is_file() and _whole_records(backup.read_bytes()):
        shutil.copy2(backup, path)
        _say(f"{path} was {what}; restored its last good copy {backup.name}")
    else:
        _say(f"{path} was {what} and has no good copy; rebuilding it from the Parquet records")


def create_study(mode: str, space: SearchSpace, experiment_dir: Path, experiment: str) -> optuna.Study:
    """The mode's study, created if missing, labelled with what it optimises (the dashboard shows it)."""
    storage, name = study_storage(experiment_dir), study_name(experiment, mode)
    study = optuna.create_study(storage=storage, study_name=name, direction="maximize", load_if_exists=True)
    with warnings.catch_warnings():  # "experimental" since Optuna 3.2; it only labels the value in the dashboard
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        study.set_metric_names([space.metric])
    for key, value in {"experiment": experiment, "mode": mode, "metric": space.metric}.items():
        study.set_user_attr(key, value)
    return study


def _study_trials(experiment_dir: Path, experiment: str, mode: str) -> dict[str, optuna.trial.FrozenTrial] | None:
    """Ray trial id -> the study's trial; None when the journal has no such study, or records Optuna cannot replay."""
    try:
        study = optuna.load_study(study_name=study_name(experiment, mode), storage=study_storage(experiment_dir))
        return {t.user_attrs.get("trial_id"): t for t in study.get_trials(deepcopy=False)}
    except Exception:  # KeyError for a missing study; whole JSON lines that are not Optuna's records fail in many ways
        return None


def _agrees(study: dict[str, optuna.trial.FrozenTrial] | None, rows: list[dict[str, Any]], metric: str) -> bool:
    """Whether the study holds every trial of the Parquet table, those the table settled finished with its value."""
    if study is None:
        return not rows
    for row in rows:
        trial, want = study.get(row["trial_id"]), _STATES.get(row["status"])
        if trial is None:
            return False
        if want is TrialState.COMPLETE and (trial.state != want or trial.value != row[f"last_{metric}"]):
            return False
        if want is TrialState.FAIL and trial.state not in (TrialState.FAIL, TrialState.COMPLETE):
            return False
    return True


def _ray_order(trial_id: str) -> tuple[int, str]:
    """Ray's trial ids end in their creation count (``abc12_00003``): the order Optuna asked for them."""
    match = re.search(r"_(\d+)$", trial_id)
    return (int(match[1]) if match else math.inf, trial_id)  # type: ignore[return-value]


def _param(row: dict[str, Any], name: str, dist: optuna.distributions.BaseDistribution, path: Path) -> Any:
    value = row.get(name)
    if isinstance(dist, optuna.distributions.IntDistribution) and isinstance(value, (int, float)):
        value = int(round(value))
    if value is None or not dist._contains(dist.to_internal_repr(value)):
        raise JournalError(f"{path} is lost or damaged and cannot be rebuilt: trial {row['trial_id']} has no "
                           f"usable value of {name} in {results_dir(path.parents[1])}; restore the journal from a "
                           "backup, or start a new --name")
    return value


def _rebuilt_trial(row: dict[str, Any], epochs: list[dict[str, Any]], space: SearchSpace, mode: str,
                   path: Path) -> optuna.trial.FrozenTrial:
    dists = space.for_mode(mode)
    state, value = _STATES.get(row["status"], TrialState.RUNNING), row[f"last_{space.metric}"]
    if state is TrialState.COMPLETE and value is None:
        state = TrialState.FAIL  # ended before any epoch reported
    steps = {e["epoch"]: e[space.metric] for e in epochs
             if e["trial_id"] == row["trial_id"] and e[space.metric] is not None and math.isfinite(e[space.metric])}
    return optuna.trial.create_trial(
        state=state, value=value if state is TrialState.COMPLETE else None,
        params={name: _param(row, name, dist, path) for name, dist in dists.items()}, distributions=dists,
        user_attrs={"trial_id": row["trial_id"]}, intermediate_values=steps)


def _rebuild(experiment_dir: Path, experiment: str, modes: tuple[str, ...], space: SearchSpace,
             rows: list[dict[str, Any]]) -> None:
    """Write a new journal holding one study per mode with the Parquet table's trials, in Ray's order."""
    path = study_journal(experiment_dir)
    epochs = epoch_rows(experiment_dir)  # each row once, compacted or not
    trials = {mode: [_rebuilt_trial(r, epochs, space, mode, path)
                     for r in sorted((r for r in rows if r["mode"] == mode), key=lambda r: _ray_order(r["trial_id"]))]
              for mode in modes}  # every value checked before the journal is touched
    if path.exists():
        copy = _set_aside(path)
        path.unlink()
        _say(f"{path} disagreed with the Parquet trials table; the old file is kept as {copy.name}")
    for mode in modes:
        study = create_study(mode, space, experiment_dir, experiment)
        for trial in trials[mode]:
            study.add_trial(trial)
    _say(f"rebuilt {path} from {results_dir(experiment_dir) / 'trials'} ({sum(map(len, trials.values()))} trials)")


def recover_journal(experiment_dir: Path, experiment: str, modes: tuple[str, ...], space: SearchSpace) -> None:
    """Before a resume: make the journal whole and in agreement with the Parquet trials table (see the module)."""
    rows = read_rows(results_dir(experiment_dir) / "trials")
    path = study_journal(experiment_dir)
    if not rows and not path.exists():
        return  # a new experiment
    if not path.exists() or not _repair_tail(path):
        _restore_last_good(path)
    if path.exists() and not _whole_records(path.read_bytes()):
        raise JournalError(f"{path} is damaged and its last good copy too; restore it from a backup, or start a "
                           "new --name")
    if all(_agrees(_study_trials(experiment_dir, experiment, m), [r for r in rows if r["mode"] == m], space.metric)
           for m in modes):
        return
    _rebuild(experiment_dir, experiment, modes, space, rows)


class JournalBackupCallback(Callback):
    """Copies the journal to ``journal.log.last-good`` after each result, whenever it reads whole."""

    def __init__(self, experiment_dir: str | Path) -> None:
        self.path = study_journal(experiment_dir)

    def _backup(self) -> None:
        try:
            data = self.path.read_bytes()
            if data.endswith(b"\n") and _whole_records(data):
                atomic_write(self.path.with_name(self.path.name + LAST_GOOD), lambda tmp: tmp.write_bytes(data))
        except OSError:
            pass  # missing, or a full disk: the previous copy stays good

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
        self._backup()

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._backup()
