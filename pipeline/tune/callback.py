"""A Ray Tune callback that writes the Parquet results (pipeline/results.py) while the search runs.

It runs in the driver: each reported epoch becomes one ``epochs`` file, and the trial's
``trials`` row is replaced (atomically) whenever its state changes, so a crash of the
driver loses at most the row in flight. When a trial ends (finished, stopped, diverged or
failed) its epoch files are compacted into one (``results.compact_epochs``). On a resumed
search it picks up the trials rows already saved, so "best so far" survives a driver restart.

At the experiment's end it reconciles its rows with Ray Tune's trials: a row whose trial
Tune does not know (a trial started after Tune last saved its state, then lost with a
killed driver; Tune replaced it with a new one) is moved out of ``results/`` into
``orphaned/``, so the table holds exactly the trials of the search.
"""

from __future__ import annotations

import datetime as dt
import math
import os
import sys
from pathlib import Path
from typing import Any

from ray.tune import Callback

from ..results import (HYPERPARAMS, STEP_METRICS, compact_epochs, read_rows, results_dir, write_epoch_row,
                       write_trial_row)
from ..storage import Location, location
from ..studies import push_study
from .trainable import trial_dirname

__all__ = ["ParquetResultsCallback", "StudyUploadCallback"]


def _now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def _float(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) else None


class ParquetResultsCallback(Callback):
    """Writes ``epochs`` and ``trials`` rows for one experiment folder."""

    def __init__(self, experiment_dir: str | os.PathLike | Location, identity: dict[str, Any], mode: str,
                 max_epochs: int, metric: str = "select_psnr") -> None:
        self.experiment_dir = location(experiment_dir)
        self.metric = metric  # picks each trial's best epoch, as it picks the best trial
        self.identity = identity  # experiment, backbone, preset, dataset, fixed hyperparameters
        self.mode = mode
        self.max_epochs = max_epochs
        self.rows: dict[str, dict[str, Any]] = {}

    def setup(self, **info: Any) -> None:
        for row in read_rows(results_dir(self.experiment_dir) / "trials"):
            self.rows[row["trial_id"]] = row

    def on_experiment_end(self, trials: list, **info: Any) -> None:
        known = {t.trial_id for t in trials}
        for trial_id in [t for t, row in self.rows.items() if row["mode"] == self.mode and t not in known]:
            self._orphan(trial_id)

    def _orphan(self, trial_id: str) -> None:
        """Move a trial Tune no longer knows out of the results tables (kept in ``orphaned/``)."""
        results = results_dir(self.experiment_dir)
        for part in (f"trials/{trial_id}.parquet", f"epochs/{trial_id}"):
            if (results / part).exists():
                (results / part).move_to(self.experiment_dir / "orphaned" / part)
        del self.rows[trial_id]

    def _trial_identity(self, trial: Any) -> dict[str, Any]:
        params = {k: _float(v) for k, v in trial.config.items()}
        # Plain training has no reweighter and no validation split: those columns stay empty.
        fixed = {k: None if self.mode == "plain" and k != "inner_lr" else self.identity.get(k) for k in HYPERPARAMS}
        return {**self.identity, **fixed, **params, "trial_id": trial.trial_id, "mode": self.mode}

    def _trial_row(self, trial: Any) -> dict[str, Any]:
        if trial.trial_id not in self.rows:
            self.rows[trial.trial_id] = {
                **self._trial_identity(trial),
                "status": "RUNNING",
                "error": None,
                "resumed_from": None,
                "epochs": 0,
                "best_epoch": None,
                "best_select_psnr": None,
                "best_select_ssim": None,
                "last_select_psnr": None,
                "last_select_ssim": None,
                "wall_time_s": 0.0,
                "best_checkpoint_path": None,
                "trial_dir": str(self.experiment_dir / f"tune-{self.mode}" / trial_dirname(trial.trial_id)),
            }
        return self.rows[trial.trial_id]

    def _save(self, row: dict[str, Any], **changes: Any) -> None:
        row.update(changes, updated_at=_now())
        write_trial_row(self.experiment_dir, row)

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._save(self._trial_row(trial), status="RUNNING")

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
        if result.get("settled"):  # a finished trial telling Tune again what the records hold: nothing new
            return
        row = self._trial_row(trial)
        self._note_resume(row, result)
        if result.get("resumed") and result["epoch"] <= row["epochs"]:  # a restarted trial's last epoch, recorded
            return
        ckpt = result.get("checkpoint_path") or None
        psnr, ssim = _float(result.get("select_psnr")), _float(result.get("select_ssim"))
        epoch_row = {
            **self._trial_identity(trial),
            "epoch": int(result.get("epoch", result.get("training_iteration", 0))),
            "select_psnr": psnr,
            "select_ssim": ssim,
            "hazy_psnr": _float(result.get("hazy_psnr")),
            **{k: _float(result.get(k)) for k in (*STEP_METRICS, "epoch_seconds", "gpu_peak_mb")},
            "wall_time_s": _float(result.get("time_total_s")),
            "device": result.get("device"),
            "precision": result.get("precision"),
            "node": result.get("node_id"),
            "store_shared": result.get("store_shared"),
            "status": "NONFINITE" if result.get("nonfinite") else "RUNNING",
            "checkpoint_path": ckpt,
            "timestamp": _now(),
        }
        write_epoch_row(self.experiment_dir, epoch_row)
        changes: dict[str, Any] = {
            "epochs": epoch_row["epoch"],
            "last_select_psnr": psnr,
            "last_select_ssim": ssim,
            "wall_time_s": epoch_row["wall_time_s"],
        }
        value, best = _float(result.get(self.metric)), row[f"best_{self.metric}"]
        if ckpt and value is not None and math.isfinite(value) and (best is None or value > best):
            changes.update(best_epoch=epoch_row["epoch"], best_select_psnr=psnr, best_select_ssim=ssim,
                           best_checkpoint_path=ckpt)
        if result.get("nonfinite"):
            changes.update(status="NONFINITE", error=result["nonfinite"])
        self._save(row, **changes)

    def _note_resume(self, row: dict[str, Any], result: dict) -> None:
        """A restarted trial's note (damaged checkpoints skipped, what it resumed from): logged once, and in its row."""
        note = result.get("resumed_from")
        if note and note != row.get("resumed_from"):
            print(f"trial {row['trial_id']}: {note}", file=sys.stderr, flush=True)
            self._save(row, resumed_from=note)

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        row = self._trial_row(trial)
        compact_epochs(self.experiment_dir, trial.trial_id)
        if row["status"] == "NONFINITE":
            return
        finished = row["epochs"] >= self.max_epochs
        self._save(row, status="TERMINATED" if finished else "STOPPED")  # STOPPED: ASHA cut it short

    def on_trial_recover(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._save(self._trial_row(trial), status="RUNNING", error=f"recovered after: {_error_text(trial)}")

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._save(self._trial_row(trial), status="ERROR", error=_error_text(trial))
        compact_epochs(self.experiment_dir, trial.trial_id)


def _error_text(trial: Any) -> str:
    path = getattr(trial, "error_file", None)
    if path and Path(path).exists():
        lines = Path(path).read_text().strip().splitlines()
        return lines[-1] if lines else "unknown error"
    return str(getattr(trial, "error_msg", None) or "unknown error")


class StudyUploadCallback(Callback):
    """Uploads the journal when a trial starts, reports and ends (a no-op on a local disk).

    Listed before the results callback: the bucket's journal then always holds what the Parquet
    tables say (a started trial, its results, its end), as a local journal written first does.
    """

    def __init__(self, experiment_dir: Location) -> None:
        self.experiment_dir = experiment_dir

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        push_study(self.experiment_dir)

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
        push_study(self.experiment_dir)

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        push_study(self.experiment_dir)

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        push_study(self.experiment_dir)
