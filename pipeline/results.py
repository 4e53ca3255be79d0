"""The Parquet results contract: two tables under explicit pyarrow schemas.

Layout of one experiment (``runs/<experiment>/results/``):

    epochs/<trial_id>/epoch-00003.parquet    one row: one trial's report for one epoch
    trials/<trial_id>.parquet                one row: a trial's latest summary (replaced as it runs)

Every file is written to a temporary name and renamed into place, so a reader never sees
half a file and a crash loses at most the rows in flight. Many experiments scan together:

    pl.scan_parquet("runs/*/results/epochs/**/*.parquet")
    pl.scan_parquet("runs/*/results/trials/*.parquet")

Searched hyperparameters beyond the four standard ones get their own float64 column,
named after the search-space entry; :func:`read_table` aligns such files by name. A
hyperparameter has one name from the config key to the column: ``bild.alpha`` is ``alpha``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from .files import atomic_write

__all__ = [
    "check_metric",
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


def results_dir(experiment_dir: str | os.PathLike) -> Path:
    return Path(experiment_dir) / "results"


def _schema_with_extras(schema: pa.Schema, row: Mapping[str, Any]) -> pa.Schema:
    """Add a float64 column for each extra searched hyperparameter the row carries."""
    extras = [pa.field(k, pa.float64()) for k in row if k not in schema.names]
    return pa.schema([*schema, *extras]) if extras else schema


def write_rows(path: str | os.PathLike, rows: Sequence[Mapping[str, Any]], schema: pa.Schema) -> Path:
    """Write ``rows`` under ``schema`` (plus extra hyperparameter columns) atomically to ``path``."""
    schema = _schema_with_extras(schema, rows[0]) if rows else schema
    table = pa.Table.from_pylist([dict(r) for r in rows], schema=schema)
    return atomic_write(path, lambda tmp: pq.write_table(table, tmp))


def write_epoch_row(experiment_dir: str | os.PathLike, row: Mapping[str, Any]) -> Path:
    path = results_dir(experiment_dir) / "epochs" / row["trial_id"] / f"epoch-{int(row['epoch']):05d}.parquet"
    return write_rows(path, [row], EPOCH_SCHEMA)


def write_trial_row(experiment_dir: str | os.PathLike, row: Mapping[str, Any]) -> Path:
    return write_rows(results_dir(experiment_dir) / "trials" / f"{row['trial_id']}.parquet", [row], TRIAL_SCHEMA)


def read_table(run_dirs: Sequence[str | os.PathLike], table: str) -> pl.DataFrame:
    """All rows of ``table`` ("epochs" or "trials") of the given experiment folders, in one frame."""
    if table not in ("epochs", "trials"):
        raise ValueError(f"unknown results table {table!r}; expected 'epochs' or 'trials'")
    pattern = "**/*.parquet" if table == "epochs" else "*.parquet"
    files = [str(f) for d in run_dirs for f in sorted((results_dir(d) / table).glob(pattern))]
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


def read_rows(folder: str | os.PathLike) -> list[dict[str, Any]]:
    """Every row of the Parquet files directly in ``folder`` (none if it does not exist), as dicts."""
    return [row for f in sorted(Path(folder).glob("*.parquet")) for row in _read_parquet(str(f)).to_dicts()]


def _read_parquet(path: str) -> pl.DataFrame:
    try:
        return pl.read_parquet(path)
    except Exception as err:  # polars and pyarrow raise several types for a damaged file
        raise ValueError(f"results file {path} is damaged ({type(err).__name__}); expected a Parquet file "
                         "written by pipeline.search (delete it and resume the search to rewrite it)") from err
