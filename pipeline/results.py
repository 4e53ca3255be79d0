"""The Parquet results contract: two tables under explicit pyarrow schemas.

Layout of one experiment (``runs/<experiment>/results/``, or the same under an ``s3://`` URI):

    epochs/<trial_id>/epoch-00003.parquet      one row: one trial's report for one epoch, while it runs
    epochs/<trial_id>/compacted-00020.parquet  every epoch row up to 20, once the trial has ended
    trials/<trial_id>.parquet                  one row: a trial's latest summary (replaced as it runs)

Every file is written whole or not at all (a rename locally, one PUT on an object store), so
a reader never sees half a file and a crash loses at most the rows in flight.

When a trial ends, :func:`compact_epochs` rewrites its epoch rows as one file and then deletes
the per-epoch files: an analysis of 100 trials reads 100 objects, not one per epoch. Readers
take a trial's newest ``compacted-N`` file and only the ``epoch-E`` files with E > N, so every
row is read exactly once at every moment, also while compaction runs and after a crash in the
middle of it (its leftovers are ignored, then removed by the next compaction). Read the
tables with :func:`read_table` (a plain glob over ``epochs/**`` would count leftovers twice):

    read_table(["runs/exp-a", "s3://bucket/runs/exp-b"], "epochs")

Searched hyperparameters beyond the four standard ones get their own float64 column,
named after the search-space entry; :func:`read_table` aligns such files by name. A
hyperparameter has one name from the config key to the column: ``bild.alpha`` is ``alpha``.
"""

from __future__ import annotations

import io
import os
import re
from collections.abc import Mapping, Sequence
from typing import Any

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from .storage import Location, location

__all__ = [
    "check_metric",
    "compact_epochs",
    "epoch_rows",
    "FINISHED",
    "HYPERPARAMS",
    "HYPERPARAM_KEYS",
    "METRICS",
    "STEP_METRICS",
    "EPOCH_SCHEMA",
    "TRIAL_SCHEMA",
    "TRIAL_STATUSES",
    "results_dir",
    "write_rows",
    "write_epoch_row",
    "write_trial_row",
    "read_rows",
    "read_table",
    "searched_params",
]

# The standard hyperparameters: column name -> config key (the column is the key's last part).
HYPERPARAM_KEYS = {
    "alpha": "bild.alpha",
    "inner_lr": "train.inner_lr",
    "outer_lr": "train.outer_lr",
    "val_fraction": "train.val_fraction",
}
HYPERPARAMS = tuple(HYPERPARAM_KEYS)
# The selection-set metrics a search may rank by (both grow with quality), and the trial
# statuses that count as finished: ASHA's STOPPED trials have a real best epoch too.
METRICS = ("select_psnr", "select_ssim")
FINISHED = ("TERMINATED", "STOPPED")
STEP_METRICS = (
    "loss",
    "crop_loss",
    "val_loss",
    "reward_mean",
    "reward_std",
    "align_mean",
    "weight_entropy",
    "ess",
    "max_weight",
    "ms_inner",
    "ms_val_grad",
    "ms_reward",
    "ms_outer",
    "ms_data",  # waiting for the step's crops (read and cut by the loader workers)
)
TRIAL_STATUSES = ("RUNNING", "TERMINATED", "STOPPED", "ERROR", "NONFINITE")

_IDENTITY = [
    pa.field("experiment", pa.string(), nullable=False),
    pa.field("trial_id", pa.string(), nullable=False),
    pa.field("backbone", pa.string()),
    pa.field("preset", pa.string()),
    pa.field("mode", pa.string()),
    pa.field("dataset", pa.string()),
    *[pa.field(name, pa.float64()) for name in HYPERPARAMS],
]

EPOCH_SCHEMA = pa.schema(
    [
        *_IDENTITY,
        pa.field("epoch", pa.int32(), nullable=False),
        pa.field("select_psnr", pa.float64()),
        pa.field("select_ssim", pa.float64()),
        pa.field("hazy_psnr", pa.float64()),
        *[pa.field(name, pa.float64()) for name in STEP_METRICS],
        pa.field("epoch_seconds", pa.float64()),
        pa.field("gpu_peak_mb", pa.float64()),  # the trial's peak GPU memory in the epoch (null on the CPU)
        pa.field("wall_time_s", pa.float64()),
        pa.field("device", pa.string()),
        pa.field("precision", pa.string()),  # train.precision as the trial resolved it: fp32, bf16 or fp16
        pa.field("node", pa.string()),
        pa.field("store_shared", pa.bool_()),
        pa.field("status", pa.string()),
        pa.field("checkpoint_path", pa.string()),
        pa.field("timestamp", pa.timestamp("ms", tz="UTC")),
    ]
)

TRIAL_SCHEMA = pa.schema(
    [
        *_IDENTITY,
        pa.field("status", pa.string(), nullable=False),
        pa.field("error", pa.string()),
        pa.field("resumed_from", pa.string()),  # restarted: damaged checkpoints skipped, the one it went on from
        pa.field("epochs", pa.int32()),
        pa.field("best_epoch", pa.int32()),
        pa.field("best_select_psnr", pa.float64()),
        pa.field("best_select_ssim", pa.float64()),
        pa.field("last_select_psnr", pa.float64()),
        pa.field("last_select_ssim", pa.float64()),
        pa.field("wall_time_s", pa.float64()),
        pa.field("best_checkpoint_path", pa.string()),
        pa.field("trial_dir", pa.string()),
        pa.field("updated_at", pa.timestamp("ms", tz="UTC")),
    ]
)


def check_metric(metric: str) -> None:
    """Refuse a metric the search cannot rank by, naming it."""
    if metric not in METRICS:
        raise ValueError(f"--metric {metric!r} is not a selection metric; expected one of {', '.join(METRICS)}")


def results_dir(experiment_dir: str | os.PathLike | Location) -> Location:
    return location(experiment_dir) / "results"


def _schema_with_extras(schema: pa.Schema, row: Mapping[str, Any]) -> pa.Schema:
    """Add a float64 column for each extra searched hyperparameter the row carries."""
    extras = [pa.field(k, pa.float64()) for k in row if k not in schema.names]
    return pa.schema([*schema, *extras]) if extras else schema


def _write_table(path: str | os.PathLike | Location, table: pa.Table) -> Location:
    buffer = io.BytesIO()
    pq.write_table(table, buffer)
    target = location(path)
    target.write_bytes(buffer.getvalue())
    return target


def write_rows(path: str | os.PathLike | Location, rows: Sequence[Mapping[str, Any]], schema: pa.Schema) -> Location:
    """Write ``rows`` under ``schema`` (plus extra hyperparameter columns) whole or not at all to ``path``."""
    schema = _schema_with_extras(schema, rows[0]) if rows else schema
    return _write_table(path, pa.Table.from_pylist([dict(r) for r in rows], schema=schema))


_EPOCH_FILE = re.compile(r"epoch-(\d+)\.parquet")
_COMPACTED_FILE = re.compile(r"compacted-(\d+)\.parquet")


def _epoch_file(experiment_dir: str | os.PathLike | Location, trial_id: str, epoch: int) -> Location:
    return results_dir(experiment_dir) / "epochs" / trial_id / f"epoch-{epoch:05d}.parquet"


def write_epoch_row(experiment_dir: str | os.PathLike | Location, row: Mapping[str, Any]) -> Location:
    return write_rows(_epoch_file(experiment_dir, row["trial_id"], int(row["epoch"])), [row], EPOCH_SCHEMA)


def write_trial_row(experiment_dir: str | os.PathLike | Location, row: Mapping[str, Any]) -> Location:
    return write_rows(results_dir(experiment_dir) / "trials" / f"{row['trial_id']}.parquet", [row], TRIAL_SCHEMA)


def _current_epoch_files(files: Sequence[Location]) -> tuple[list[Location], list[Location]]:
    """(files to read, leftovers) of one trial's epoch folder: every epoch row exactly once.

    The newest ``compacted-N`` holds epochs 1..N; an ``epoch-E`` file counts only when E > N
    (a trial resumed after an error reports later epochs beside its compacted file).
    """
    compacted = sorted(((int(m[1]), f) for f in files if (m := _COMPACTED_FILE.fullmatch(f.name))),
                       key=lambda pair: pair[0])
    covered = compacted[-1][0] if compacted else 0
    keep = [compacted[-1][1]] if compacted else []
    leftovers = [f for _, f in compacted[:-1]]
    for f in files:
        if (m := _EPOCH_FILE.fullmatch(f.name)):
            (keep if int(m[1]) > covered else leftovers).append(f)
    return keep, leftovers


def _epoch_files(run_dir: str | os.PathLike | Location) -> list[Location]:
    """The epoch files to read of one experiment: one listing of the folder, then the exactly-once choice."""
    by_trial: dict[str, list[Location]] = {}
    for f in (results_dir(run_dir) / "epochs").files():
        by_trial.setdefault(f.parent.name, []).append(f)
    return [f for trial_files in by_trial.values() for f in _current_epoch_files(trial_files)[0]]


def epoch_rows(run_dir: str | os.PathLike | Location) -> list[dict[str, Any]]:
    """Every epoch row of one experiment, each once (compacted or not), as dicts; none if there are none."""
    return [row for f in _epoch_files(run_dir) if f.name.endswith(".parquet") for row in _read_parquet(f).to_dicts()]


def compact_epochs(experiment_dir: str | os.PathLike | Location, trial_id: str) -> Location | None:
    """Rewrite a trial's epoch rows as one ``compacted-N`` file, then remove the files it replaces.

    The compacted file is in place (whole) before anything is removed, and readers prefer it
    to the files it covers, so a crash at any point leaves every row readable exactly once.
    Returns the compacted file, or None when the trial has no epoch rows.
    """
    folder = results_dir(experiment_dir) / "epochs" / trial_id
    current, leftovers = _current_epoch_files(folder.files(recursive=False))
    if any(_EPOCH_FILE.fullmatch(f.name) for f in current):
        tables = [_read_arrow(f) for f in current]
        merged = pa.concat_tables(tables, promote_options="default").sort_by("epoch")
        target = folder / f"compacted-{max(merged.column('epoch').to_pylist()):05d}.parquet"
        _write_table(target, merged)
        current, leftovers = [target], [*leftovers, *(f for f in current if f != target)]
    for f in leftovers:
        f.delete()
    return current[0] if current else None


def read_table(run_dirs: Sequence[str | os.PathLike | Location], table: str) -> pl.DataFrame:
    """All rows of ``table`` ("epochs" or "trials") of the given experiment folders (paths or URIs), in one frame."""
    if table not in ("epochs", "trials"):
        raise ValueError(f"unknown results table {table!r}; expected 'epochs' or 'trials'")
    if table == "epochs":
        files = [f for d in run_dirs for f in _epoch_files(d)]
    else:
        files = [f for d in run_dirs for f in (results_dir(d) / table).files(recursive=False)]
    files = [f for f in files if f.name.endswith(".parquet")]
    if not files:
        raise FileNotFoundError(
            f"no {table} results under {', '.join(str(results_dir(d) / table) for d in run_dirs)}; "
            "expected the folder of an experiment run by pipeline.search"
        )
    return pl.concat([_read_parquet(f) for f in files], how="diagonal_relaxed")


def searched_params(trials: pl.DataFrame) -> list[str]:
    """The standard hyperparameters plus any extra searched column (results.py gives each its own column)."""
    extras = [c for c in trials.columns if c not in TRIAL_SCHEMA.names]
    return [p for p in (*HYPERPARAMS, *extras) if p in trials.columns and trials[p].null_count() < trials.height]


def read_rows(folder: str | os.PathLike | Location) -> list[dict[str, Any]]:
    """Every row of the Parquet files directly in ``folder`` (none if it does not exist), as dicts."""
    files = [f for f in location(folder).files(recursive=False) if f.name.endswith(".parquet")]
    return [row for f in files for row in _read_parquet(f).to_dicts()]


def _damaged(path: Location, err: Exception) -> ValueError:
    return ValueError(f"results file {path} is damaged ({type(err).__name__}); expected a Parquet file "
                      "written by pipeline.search (delete it and resume the search to rewrite it)")


def _read_arrow(path: Location) -> pa.Table:
    try:
        return pq.read_table(io.BytesIO(path.read_bytes()))
    except (pa.ArrowException, OSError) as err:
        raise _damaged(path, err) from err


def _read_parquet(path: Location) -> pl.DataFrame:
    try:
        return pl.read_parquet(io.BytesIO(path.read_bytes()))
    except FileNotFoundError:
        raise
    except Exception as err:  # polars and pyarrow raise several types for a damaged file
        raise _damaged(path, err) from err
