"""The report after a search: leaderboard, BILD against plain, hyperparameter effects, curves.

Reads the Parquet results of one or more experiments (``pipeline.results``) and, for the
hyperparameter importances of one experiment, its own Optuna studies (``pipeline.studies``).
Every number here comes from the fixed selection set; the test set is read only by
``pipeline.promote``.
A trial counts as finished when its status is TERMINATED or STOPPED (ASHA stopped it
early, so its best epoch is real): those are the trials compared and ranked.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import optuna
import polars as pl
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution
from optuna.importance import PedAnovaImportanceEvaluator, get_param_importances
from optuna.trial import TrialState

from ..results import FINISHED, check_metric, read_table, searched_params
from ..studies import experiment_studies

__all__ = ["FORMATS", "analyze", "bootstrap_diff", "paired_best", "percentile_interval", "render"]

FORMATS = ("table", "markdown", "json")
BASELINE_MODE = "plain"
CONFIDENCE = 0.95
RESAMPLES = 2000
MIN_TRIALS_FOR_IMPORTANCE = 3


# --- reading ----------------------------------------------------------------------------------------


def _latest_trials(trials: pl.DataFrame) -> pl.DataFrame:
    """One row per (experiment, trial), in a fixed order (the bootstrap resamples by position).

    The contract says one row per trial, but a copied folder may hold stale duplicates.
    """
    latest = trials.sort("updated_at", nulls_last=False).unique(["experiment", "trial_id"], keep="last")
    return latest.sort("experiment", "trial_id")


def _epochs_or_empty(run_dirs: Sequence[str | os.PathLike]) -> pl.DataFrame | None:
    try:
        return read_table(run_dirs, "epochs")
    except FileNotFoundError:  # trials that crashed before their first report write no epoch rows
        return None


def _finite_rows(frame: pl.DataFrame) -> list[dict[str, Any]]:
    """Rows as dicts with NaN turned into None, so the JSON report stays standard JSON."""
    floats = [c for c, t in frame.schema.items() if t.is_float()]
    return frame.with_columns(pl.col(floats).fill_nan(None)).to_dicts()


# --- the report's sections ----------------------------------------------------------------------


def _leaderboard(trials: pl.DataFrame, metric: str, params: list[str]) -> list[dict[str, Any]]:
    """Every trial, best first by the selection metric; unfinished and failed trials last."""
    best = f"best_{metric}"
    ranked = trials.with_columns(finished=pl.col("status").is_in(FINISHED)).sort(
        ["finished", best], descending=[True, True], nulls_last=True
    )
    columns = ["experiment", "trial_id", "mode", *params, "best_select_psnr", "best_select_ssim", "epochs", "status"]
    return _finite_rows(ranked.select(columns).with_row_index("rank", offset=1))


def _modes(trials: pl.DataFrame, finished: pl.DataFrame) -> list[dict[str, Any]]:
    counts = trials.group_by("mode").agg(trials=pl.len())
    stats = finished.group_by("mode").agg(
        finished=pl.len(),
        best_psnr=pl.col("best_select_psnr").max(),
        mean_psnr=pl.col("best_select_psnr").mean(),
        best_ssim=pl.col("best_select_ssim").max(),
        mean_ssim=pl.col("best_select_ssim").mean(),
    )
    table = counts.join(stats, on="mode", how="left").with_columns(pl.col("finished").fill_null(0)).sort("mode")
    return _finite_rows(table)


def bootstrap_diff(
    a: np.ndarray, b: np.ndarray, *, paired: bool = False, confidence: float = CONFIDENCE,
    resamples: int = RESAMPLES, seed: int = 0,
) -> tuple[float, float]:
    """Percentile bootstrap interval of mean(a) - mean(b).

    Unpaired: each group resampled with replacement on its own. ``paired``: a[k] and b[k] are
    two models' scores on the same item k, so the items are resampled and each keeps its own
    difference a[k] - b[k] (what is shared by the pair, such as an image's difficulty, cancels).
    """
    rng = np.random.default_rng(seed)
    if paired:
        if a.shape != b.shape:
            raise ValueError(f"a paired bootstrap needs one score per item from each side, got {a.size} and {b.size}")
        diffs = rng.choice(a - b, size=(resamples, a.size)).mean(axis=1)
    else:
        diffs = rng.choice(a, size=(resamples, a.size)).mean(axis=1) - rng.choice(b, size=(resamples, b.size)).mean(axis=1)
    return percentile_interval(diffs, confidence)


def percentile_interval(resampled: np.ndarray, confidence: float = CONFIDENCE) -> tuple[float, float]:
    """The central ``confidence`` interval of a bootstrap's resampled statistics."""
    tail = 100 * (1 - confidence) / 2
    low, high = np.percentile(resampled, [tail, 100 - tail])
    return float(low), float(high)


def _compare(finished: pl.DataFrame, mode: str, column: str) -> dict[str, Any]:
    a = finished.filter(pl.col("mode") == mode)[column].drop_nulls().drop_nans().to_numpy()
    b = finished.filter(pl.col("mode") == BASELINE_MODE)[column].drop_nulls().drop_nans().to_numpy()
    row: dict[str, Any] = {"mode": mode, "baseline": BASELINE_MODE, "metric": column, "n": int(a.size),
                           "n_baseline": int(b.size), "difference": None, "ci_low": None, "ci_high": None,
                           "confidence": CONFIDENCE, "resamples": RESAMPLES, "note": None}
    if a.size and b.size:
        row["difference"] = float(a.mean() - b.mean())
    if a.size >= 2 and b.size >= 2:
        row["ci_low"], row["ci_high"] = bootstrap_diff(a, b)
    else:
        row["note"] = f"not enough trials: need >= 2 finished per mode, have {mode} {a.size}, {BASELINE_MODE} {b.size}"
    return row


def _comparison(finished: pl.DataFrame) -> list[dict[str, Any]]:
    """mode - plain for bild (always listed) and every other non-plain mode that finished trials."""
    modes = sorted({"bild", *finished["mode"].drop_nulls().unique().to_list()} - {BASELINE_MODE})
    return [_compare(finished, mode, col) for mode in modes for col in ("best_select_psnr", "best_select_ssim")]


def _distribution(name: str, values: pl.Series) -> BaseDistribution:
    if values.dtype == pl.String:
        return CategoricalDistribution(sorted(values.unique().to_list()))
    low, high = float(values.min()), float(values.max())
    # Learning rates and alpha are searched on a log scale; infer it for any other wide positive range.
    log = low > 0 and (high / low >= 10 or name == "alpha" or name.endswith("lr"))
    return FloatDistribution(low, high, log=log)


def _rebuilt_study(rows: pl.DataFrame, params: list[str], target: str) -> optuna.Study:
    """An in-memory study holding the finished trials' ``target`` values, for scopes no search study covers."""
    dists = {p: _distribution(p, rows[p]) for p in params}
    trials = [
        optuna.trial.create_trial(params={p: row[p] for p in params}, distributions=dists, value=row[target])
        for row in rows.iter_rows(named=True)
    ]
    study = optuna.create_study(direction="maximize")
    study.add_trials(trials)
    return study


def _spearman(rows: pl.DataFrame, param: str, target: str) -> float | None:
    """Rank correlation of a numeric parameter with the target; it says which way the effect goes."""
    if rows.height < 2 or rows[param].dtype == pl.String:
        return None
    rho = rows.select(pl.corr(param, target, method="spearman")).item()
    return None if rho is None or math.isnan(rho) else rho


def _importances(rows: pl.DataFrame, params: list[str], target: str,
                 study: optuna.Study | None) -> tuple[dict[str, float], str, int]:
    """(importances, method, trials used) by PED-ANOVA (needs no scikit-learn): on the search's own
    study when it holds enough finished trials, else on a study rebuilt from the Parquet rows."""
    evaluator = PedAnovaImportanceEvaluator()
    used = len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))) if study is not None else 0
    if used >= MIN_TRIALS_FOR_IMPORTANCE:
        method = (f"optuna {type(evaluator).__name__} on study {study.study_name} "
                  f"(the values Optuna was told: each trial's last {study.user_attrs['metric']})")
    else:
        study, used, method = _rebuilt_study(rows, params, target), rows.height, f"optuna {type(evaluator).__name__}"
    return get_param_importances(study, evaluator=evaluator, params=params), method, used


def _importance_scope(rows: pl.DataFrame, params: list[str], target: str,
                      study: optuna.Study | None = None) -> dict[str, Any]:
    rows = rows.filter(pl.col(target).is_not_null() & pl.col(target).is_not_nan())
    # Plain trials leave the bild-only columns empty: absent everywhere means not searched here.
    present = [p for p in params if rows[p].null_count() < rows.height]
    incomplete = [p for p in present if rows[p].null_count() > 0]
    varying = [p for p in present if p not in incomplete and rows[p].n_unique() > 1]
    scope: dict[str, Any] = {"n_trials": rows.height, "method": "spearman", "params": [], "note": None}
    if rows.height >= MIN_TRIALS_FOR_IMPORTANCE and varying:
        importance, scope["method"], scope["n_trials"] = _importances(rows, varying, target, study)
    else:
        importance = {}
        scope["note"] = (f"{rows.height} finished trial(s) and {len(varying)} varying parameter(s): too few for "
                         f"Optuna's importance (needs >= {MIN_TRIALS_FOR_IMPORTANCE} trials); Spearman only")
    if incomplete:
        skipped = f"left out (empty in some of these trials): {', '.join(incomplete)}"
        scope["note"] = f"{scope['note']}; {skipped}" if scope["note"] else skipped
    scope["params"] = [
        {"name": p, "importance": importance.get(p), "spearman": _spearman(rows, p, target)}
        for p in sorted(varying, key=lambda p: -importance.get(p, 0.0))
    ]
    return scope


def _studies(run_dirs: Sequence[str | os.PathLike], metric: str) -> dict[str, optuna.Study]:
    """mode -> the search's own study, for a report of one experiment whose studies optimised ``metric``."""
    if len(run_dirs) != 1:
        return {}
    return {mode: study for mode, study in experiment_studies(run_dirs[0]).items()
            if study.user_attrs.get("metric") == metric}


def _importance(finished: pl.DataFrame, metric: str, params: list[str],
                studies: dict[str, optuna.Study]) -> dict[str, dict[str, Any]]:
    """Per scope: all finished trials (mode as a categorical when it varies), then each mode alone.

    Each mode has its own study, so the search's own importances (from ``studies``) exist per mode;
    the ``all`` scope, and experiments searched before studies were kept, rebuild a study from
    the Parquet rows (each trial's best epoch).
    """
    target = f"best_{metric}"
    scopes = {"all": _importance_scope(finished, [*params, "mode"], target)}
    for mode in sorted(finished["mode"].drop_nulls().unique().to_list()):
        scopes[mode] = _importance_scope(finished.filter(pl.col("mode") == mode), params, target, studies.get(mode))
    return scopes


def _curves(epochs: pl.DataFrame | None, trials: pl.DataFrame, metric: str) -> list[dict[str, Any]]:
    """Per trial: its epochs and metric values, its final status (STOPPED: ASHA cut it) and its hazy reference."""
    if epochs is None:
        return []
    grouped = (
        epochs.filter(pl.col(metric).is_not_null())
        .sort("experiment", "trial_id", "epoch")
        .group_by("experiment", "trial_id", maintain_order=True)
        .agg(pl.col("mode").last(), pl.col("epoch"), pl.col(metric).fill_nan(None),
             pl.col("hazy_psnr").drop_nulls().last())
    )
    status = trials.select("experiment", "trial_id", "status")
    return grouped.join(status, on=["experiment", "trial_id"], how="left", maintain_order="left").to_dicts()


def _best_of_mode(run_dirs: Sequence[str | os.PathLike], metric: str, mode: str) -> dict[str, Any] | None:
    from ..models.promotion import NoFinishedTrialError, best_trial

    found = []
    for run_dir in run_dirs:
        try:
            found.append(best_trial(run_dir, metric, mode))
        except NoFinishedTrialError:
            continue
    return max(found, key=lambda t: t[f"best_{metric}"], default=None)


def paired_best(run_dirs: Sequence[str | os.PathLike], metric: str = "select_psnr",
                device: str = "auto") -> dict[str, Any]:
    """The best bild and the best plain trial, re-scored image by image on the selection set: bild - plain.

    Both checkpoints are loaded and run on every selection image (the search recorded only
    means), so each image's difference is paired: the bootstrap resamples images.
    """
    # Model runs only when asked for (--paired): the rest of the report reads Parquet alone.
    from ..checkpoints import load_checkpoint
    from ..evaluation.inference import resolve_device, score_pairs
    from ..models import load_model
    from ..models.promotion import rebuild_data

    best = {mode: _best_of_mode(run_dirs, metric, mode) for mode in ("bild", BASELINE_MODE)}
    result: dict[str, Any] = {"trials": {m: t and {"experiment": t["experiment"], "trial_id": t["trial_id"],
                                                   "checkpoint": t["checkpoint"]} for m, t in best.items()},
                              "rows": [], "note": None}
    missing = [m for m, t in best.items() if t is None]
    if missing:
        result["note"] = f"no finished {' or '.join(missing)} trial with a checkpoint: nothing to pair"
        return result
    dev, scores, selects = resolve_device(device), {}, {}
    for mode, trial in best.items():
        state = load_checkpoint(trial["checkpoint"])
        index, splits, _ = rebuild_data(state)
        model, _ = load_model(trial["checkpoint"])
        selects[mode] = splits.select
        scores[mode] = score_pairs(model.to(dev), index, splits.select, dev,
                                   max_side=state["config"]["dataset"]["eval_max_side"])
    if selects["bild"] != selects[BASELINE_MODE]:
        raise ValueError("the best bild and plain trials were selected on different selection sets "
                         "(another dataset or split); their images cannot be paired")
    for name in ("psnr", "ssim"):
        a, b = np.array(scores["bild"][name]), np.array(scores[BASELINE_MODE][name])
        low, high = bootstrap_diff(a, b, paired=True)
        result["rows"].append({"metric": name, "images": int(a.size), "bild": float(a.mean()),
                               "plain": float(b.mean()), "difference": float((a - b).mean()), "ci_low": low,
                               "ci_high": high, "bild_wins": float((a > b).mean())})
    return result


def analyze(run_dirs: Sequence[str | os.PathLike], metric: str = "select_psnr", *, paired: bool = False,
            device: str = "auto") -> dict[str, Any]:
    """The report of one or more experiments: ``leaderboard``, ``modes``, ``comparison``, ``importance``, ``curves``.

    ``paired`` adds ``paired`` (:func:`paired_best`): it runs the two best checkpoints on ``device``.
    """
    check_metric(metric)
    trials = _latest_trials(read_table(run_dirs, "trials"))
    finished = trials.filter(pl.col("status").is_in(FINISHED) & pl.col(f"best_{metric}").is_not_null())
    params = searched_params(trials)
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # one "study created" line per scope is noise here
    report = {
        "run_dirs": [str(d) for d in run_dirs],
        "metric": metric,
        "params": params,
        "leaderboard": _leaderboard(trials, metric, params),
        "modes": _modes(trials, finished),
        "comparison": _comparison(finished),
        "importance": _importance(finished, metric, params, _studies(run_dirs, metric)),
        "curves": _curves(_epochs_or_empty(run_dirs), trials, metric),
    }
    if paired:
        report["paired"] = paired_best(run_dirs, metric, device)
    return report


# --- rendering ------------------------------------------------------------------------------------


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _table(headers: list[str], rows: list[list[Any]], fmt: str) -> str:
    if not rows:
        return "(none)"
    cells = [[_cell(v) for v in row] for row in rows]
    if fmt == "markdown":
        lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
        return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in cells])
    widths = [max(len(h), *(len(r[i]) for r in cells)) for i, h in enumerate(headers)]
    lines = [headers, ["-" * w for w in widths], *cells]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(line, widths)).rstrip() for line in lines)


def _records(records: list[dict[str, Any]], headers: list[str], fmt: str) -> str:
    return _table(headers, [[r.get(h) for h in headers] for r in records], fmt)


def _curve_table(report: dict[str, Any], fmt: str, max_columns: int = 10) -> str:
    """One row per trial, the metric at up to ``max_columns`` evenly spaced epochs (all of them in JSON)."""
    metric, curves = report["metric"], report["curves"]
    epochs = sorted({e for c in curves for e in c["epoch"]})
    if len(epochs) > max_columns:
        epochs = [epochs[round(i)] for i in np.linspace(0, len(epochs) - 1, max_columns)]
    rows = [[c["trial_id"], c["mode"], *(dict(zip(c["epoch"], c[metric])).get(e) for e in epochs)] for c in curves]
    return _table(["trial_id", "mode", *(f"ep{e}" for e in epochs)], rows, fmt)


def _importance_text(report: dict[str, Any], fmt: str) -> str:
    parts = []
    for scope, result in report["importance"].items():
        title = f"{scope} ({result['n_trials']} finished trials, {result['method']})"
        parts.append(f"### {title}" if fmt == "markdown" else f"{title}:")
        parts.append(_records(result["params"], ["name", "importance", "spearman"], fmt))
        if result["note"]:
            parts.append(f"note: {result['note']}")
    return "\n\n".join(parts)


def _paired_text(paired: dict[str, Any], fmt: str) -> str:
    trials = "; ".join(f"{mode}: {t['experiment']}/{t['trial_id']}" for mode, t in paired["trials"].items() if t)
    table = _records(paired["rows"], ["metric", "images", "bild", "plain", "difference", "ci_low", "ci_high",
                                      "bild_wins"], fmt)
    return "\n\n".join(part for part in (trials, table, paired["note"] and f"note: {paired['note']}") if part)


def render(report: dict[str, Any], fmt: str = "table") -> str:
    """The report as ``table`` (aligned text), ``markdown`` or ``json`` (one object)."""
    if fmt == "json":
        return json.dumps(report, indent=2, allow_nan=False)
    if fmt not in FORMATS:
        raise ValueError(f"--format {fmt!r}; expected one of {', '.join(FORMATS)}")
    heading = (lambda t: f"## {t}") if fmt == "markdown" else (lambda t: f"{t}\n{'=' * len(t)}")
    lead = ["rank", "experiment", "trial_id", "mode", *report["params"]]
    sections = {
        f"Leaderboard (by best {report['metric']})": _records(
            report["leaderboard"], [*lead, "best_select_psnr", "best_select_ssim", "epochs", "status"], fmt),
        "Modes (finished trials)": _records(
            report["modes"], ["mode", "trials", "finished", "best_psnr", "mean_psnr", "best_ssim", "mean_ssim"], fmt),
        "Mode - plain (difference of means, bootstrap CI)": _records(
            report["comparison"],
            ["mode", "metric", "n", "n_baseline", "difference", "ci_low", "ci_high", "note"], fmt),
        "Hyperparameter effects": _importance_text(report, fmt),
        f"Learning curves ({report['metric']})": _curve_table(report, fmt),
    }
    if "paired" in report:
        sections["Best bild - best plain, per selection image (paired bootstrap CI)"] = _paired_text(report["paired"], fmt)
    return "\n\n".join(f"{heading(title)}\n\n{body}" for title, body in sections.items()) + "\n"
