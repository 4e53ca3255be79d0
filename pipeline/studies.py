"""An experiment's Optuna studies: where they live, and opening them with Optuna's own tools.

    <experiment>/optuna/journal.log    one Optuna JournalStorage file; one study per mode, named <experiment>-<mode>

The search writes them (``pipeline.tune.runner``, through Ray Tune's OptunaSearch); each
Optuna trial carries its Ray trial id as the user attribute ``trial_id`` and the value
OptunaSearch told it: the selection metric of the trial's last reported epoch. Read them with

    optuna-dashboard runs/<experiment>/optuna/journal.log
    optuna.load_study(study_name="<experiment>-bild", storage=study_storage("runs/<experiment>"))

A journal is appended one fsynced record at a time: it survives the search being killed
(a torn last line is skipped on reading), needs no database server, and can be read while
the search writes it.
"""

from __future__ import annotations

import os
import shlex
from pathlib import Path

import optuna
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend

__all__ = ["STUDY_JOURNAL", "dashboard_command", "experiment_studies", "study_journal", "study_name", "study_storage"]

STUDY_JOURNAL = Path("optuna") / "journal.log"  # inside the experiment folder


def study_journal(experiment_dir: str | os.PathLike) -> Path:
    return Path(experiment_dir) / STUDY_JOURNAL


def study_name(experiment: str, mode: str) -> str:
    """One study per mode: ``--mode both`` searches bild and plain with separate samplers."""
    return f"{experiment}-{mode}"


def study_storage(experiment_dir: str | os.PathLike) -> JournalStorage:
    """The experiment's Optuna storage (the journal file is created if missing)."""
    path = study_journal(experiment_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    return JournalStorage(JournalFileBackend(str(path)))


def dashboard_command(experiment_dir: str | os.PathLike) -> str:
    return f"optuna-dashboard {shlex.quote(str(study_journal(experiment_dir)))}"


def experiment_studies(experiment_dir: str | os.PathLike) -> dict[str, optuna.Study]:
    """mode -> study of an experiment folder; empty for one searched before studies were kept there."""
    if not study_journal(experiment_dir).is_file():
        return {}
    storage = study_storage(experiment_dir)
    studies = (optuna.load_study(study_name=name, storage=storage) for name in optuna.get_all_study_names(storage))
    return {study.user_attrs["mode"]: study for study in studies if "mode" in study.user_attrs}
