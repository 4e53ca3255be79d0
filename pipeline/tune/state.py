"""Ray Tune's own experiment state, kept resumable: a last-good copy, and repair from it.

Ray Tune saves its state (``tuner.pkl``, ``experiment_state-*.json``, the searcher's state)
into the experiment's ``tune-<mode>/`` folder, and a full disk or a kill can leave one of
those files cut short; ``Tuner.restore`` then fails and the experiment could never resume.
:class:`StateBackupCallback` copies the state files into ``.state-backup/`` whenever all of
them read whole, and :func:`restore_state_backup` puts that copy back before a resume when a
file is damaged. Anything the copy predates is reconciled from the project's own records
(the trainable's newest complete checkpoint, the Parquet trials table).
"""

from __future__ import annotations

import json
import pickle
import shutil
import sys
from pathlib import Path
from typing import Any

from ray.tune import Callback

from ..files import atomic_write

__all__ = ["BACKUP_DIR", "StateBackupCallback", "damaged_state_files", "restore_state_backup"]

BACKUP_DIR = ".state-backup"


def _state_files(folder: Path) -> list[Path]:
    """Tune's top-level state files in ``folder`` (trial folders and our backup left out)."""
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix in (".json", ".pkl"))


def _reads_whole(path: Path) -> bool:
    """Whether the file parses to its end: as JSON, or as a pickle (Tune names some pickles ``.json``)."""
    data = path.read_bytes()
    for parse in (json.loads, pickle.loads):  # Tune's own files, written by this experiment's driver
        try:
            parse(data)
            return True
        except Exception:  # a cut-off file fails in many ways (EOFError, UnpicklingError, JSONDecodeError, ...)
            continue
    return False


def damaged_state_files(folder: Path) -> list[Path]:
    """The state files in ``folder`` that do not read whole."""
    return [p for p in _state_files(folder) if not _reads_whole(p)]


def restore_state_backup(folder: Path) -> list[Path]:
    """Before a resume: put the last good copy back over damaged state files; returns the files repaired.

    Without a good copy the damaged files are set aside (``*.damaged``), so Tune starts the mode
    afresh and the results callback reconciles the rows it no longer knows.
    """
    if not folder.is_dir():
        return []
    damaged = damaged_state_files(folder)
    backup = folder / BACKUP_DIR
    for path in damaged:
        path.replace(path.with_name(path.name + ".damaged"))
    if damaged and backup.is_dir():
        for saved in _state_files(backup):
            shutil.copy2(saved, folder / saved.name)
    if damaged:
        how = "restored the last good copy" if backup.is_dir() else "no good copy yet: this mode starts afresh"
        print(f"Ray Tune state in {folder} was damaged ({', '.join(p.name for p in damaged)}); {how}",
              file=sys.stderr)
    return damaged


class StateBackupCallback(Callback):
    """Copies Tune's state files into ``.state-backup/`` after each result, when every one reads whole."""

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)

    def _backup(self) -> None:
        if not self.folder.is_dir():
            return
        files = _state_files(self.folder)
        if not files or not all(_reads_whole(p) for p in files):
            return  # mid-write or damaged: keep the previous good copy
        try:
            for path in files:
                data = path.read_bytes()
                atomic_write(self.folder / BACKUP_DIR / path.name, lambda tmp, data=data: tmp.write_bytes(data))
        except OSError:
            pass  # a full disk: the results callback reports it; the previous copy stays good

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
        self._backup()

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._backup()
