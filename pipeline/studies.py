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

On object storage (``--storage s3://...``) the journal needs the POSIX appends and locks an
object store lacks, so the driver keeps it on its own disk, in the cache
(``<cache>/studies/<key>/journal.log``), and uploads it whole to ``<experiment>/optuna/journal.log``
after every trial result (``pipeline.tune.callback.StudyUploadCallback``). A resume, on any machine, first takes
the uploaded copy when it is longer than the local one (:func:`pull_study`: the journal only
grows). Readers (``analyze``, :func:`experiment_studies`) fetch it the same way, so
``optuna.load_study(..., storage=study_storage("s3://bucket/runs/<experiment>"))`` and
``optuna-dashboard <the local journal>`` work as on a local disk. Teams that run a database
can instead point optuna-dashboard at an RDB copy; the search itself keeps the journal.
"""

from __future__ import annotations

import hashlib
import os
import shlex
from pathlib import Path

import optuna
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend

from .files import default_cache_dir
from .storage import Location, location

__all__ = ["STUDY_JOURNAL", "dashboard_command", "experiment_studies", "pull_study",
           "push_study", "study_journal", "study_name", "study_storage"]

STUDY_JOURNAL = Path("optuna") / "journal.log"  # inside the experiment folder


def study_journal(experiment_dir: str | os.PathLike | Location) -> Path:
    """The journal file Optuna writes: in the experiment folder, or the driver's cached copy for a URI."""
    where = location(experiment_dir)
    if where.is_local:
        return where.local / STUDY_JOURNAL
    key = hashlib.sha256(str(where).encode()).hexdigest()[:32]
    return default_cache_dir() / "studies" / key / STUDY_JOURNAL.name


def _uploaded(experiment_dir: Location) -> Location:
    return experiment_dir / STUDY_JOURNAL.as_posix()


def pull_study(experiment_dir: str | os.PathLike | Location) -> None:
    """Before a remote experiment's journal is used here: take the uploaded copy if it is longer than ours."""
    where = location(experiment_dir)
    if where.is_local or not _uploaded(where).is_file():
        return
    data, local = _uploaded(where).read_bytes(), study_journal(where)
    if not local.is_file() or local.stat().st_size < len(data):
        location(local).write_bytes(data)


def push_study(experiment_dir: str | os.PathLike | Location) -> None:
    """Upload a remote experiment's journal whole (one PUT: readers see an earlier copy or this one)."""
    where = location(experiment_dir)
    local = study_journal(where)
    if not where.is_local and local.is_file():
        _uploaded(where).write_bytes(local.read_bytes())


def study_name(experiment: str, mode: str) -> str:
    """One study per mode: ``--mode both`` searches bild and plain with separate samplers."""
    return f"{experiment}-{mode}"


def study_storage(experiment_dir: str | os.PathLike | Location) -> JournalStorage:
    """The experiment's Optuna storage (the journal file is created if missing; for a URI, the uploaded copy
    is taken first when it is newer, see :func:`pull_study`)."""
    pull_study(experiment_dir)
    path = study_journal(experiment_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    return JournalStorage(JournalFileBackend(str(path)))


def dashboard_command(experiment_dir: str | os.PathLike | Location) -> str:
    return f"optuna-dashboard {shlex.quote(str(study_journal(experiment_dir)))}"


def experiment_studies(experiment_dir: str | os.PathLike | Location) -> dict[str, optuna.Study]:
    """mode -> study of an experiment folder or URI; empty for one searched before studies were kept there."""
    pull_study(experiment_dir)  # a URI's journal is then in the cache, where study_journal looks
    if not study_journal(experiment_dir).is_file():
        return {}
    storage = study_storage(experiment_dir)
    studies = (optuna.load_study(study_name=name, storage=storage) for name in optuna.get_all_study_names(storage))
    return {study.user_attrs["mode"]: study for study in studies if "mode" in study.user_attrs}
