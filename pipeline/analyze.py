"""After the search: leaderboard, BILD against plain, hyperparameter effects, learning curves.

    python -m pipeline.analyze runs/aodnet-search                       # tables on the terminal
    python -m pipeline.analyze runs/a runs/b --format markdown --plots reports/
    python -m pipeline.analyze runs/a --format json > report.json
    python -m pipeline.analyze --weights CKPT --hazy IMG --clear IMG --out weights.png

Reads the Parquet results of one or more experiments (``pipeline.results``). Every number
here comes from the fixed selection set; the test set is read only by ``pipeline.promote``.
A trial counts as finished when its status is TERMINATED or STOPPED (ASHA stopped it
early, so its best epoch is real): those are the trials compared and ranked.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import polars as pl
import torch
from matplotlib import patheffects
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution
from optuna.importance import PedAnovaImportanceEvaluator, get_param_importances

from .bild import build_reweighter, crop_log_weights
from .config import saved_config
from .data import to_tensor
from .data.images import decode_image
from .results import HYPERPARAMS, TRIAL_SCHEMA, read_table
from .train import load_checkpoint

__all__ = ["METRICS", "FINISHED", "FORMATS", "analyze", "render", "write_plots", "patch_weights", "main"]

METRICS = ("select_psnr", "select_ssim")
FINISHED = ("TERMINATED", "STOPPED")
FORMATS = ("table", "markdown", "json")
BASELINE_MODE = "plain"
CONFIDENCE = 0.95
RESAMPLES = 2000
MIN_TRIALS_FOR_IMPORTANCE = 3
MODE_COLOURS = {"plain": "tab:blue", "bild": "tab:orange", "bild-train": "tab:green"}


# --- reading ----------------------------------------------------------------------------------


def _check_metric(metric: str) -> None:
    if metric not in METRICS:
        raise ValueError(f"--metric {metric!r} is not a selection metric; expected one of {', '.join(METRICS)}")


def _latest_trials(trials: pl.DataFrame) -> pl.DataFrame:
    """One row per (experiment, trial): the contract says so, but a copied folder may hold stale duplicates."""
    return trials.sort("updated_at", nulls_last=False).unique(["experiment", "trial_id"], keep="last")


def searched_params(trials: pl.DataFrame) -> list[str]:
    """The standard hyperparameters plus any extra searched column (results.py gives each its own column)."""
    extras = [c for c in trials.columns if c not in TRIAL_SCHEMA.names]
    return [p for p in (*HYPERPARAMS, *extras) if p in trials.columns and trials[p].null_count() < trials.height]


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
    a: np.ndarray, b: np.ndarray, *, confidence: float = CONFIDENCE, resamples: int = RESAMPLES, seed: int = 0
) -> tuple[float, float]:
    """Percentile bootstrap interval of mean(a) - mean(b), each group resampled with replacement."""
    rng = np.random.default_rng(seed)
    means_a = rng.choice(a, size=(resamples, a.size)).mean(axis=1)
    means_b = rng.choice(b, size=(resamples, b.size)).mean(axis=1)
    tail = 100 * (1 - confidence) / 2
    low, high = np.percentile(means_a - means_b, [tail, 100 - tail])
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


def _optuna_importance(rows: pl.DataFrame, params: list[str], target: str) -> dict[str, float]:
    """Importances from an in-memory study holding the finished trials (PED-ANOVA: needs no scikit-learn)."""
    dists = {p: _distribution(p, rows[p]) for p in params}
    trials = [
        optuna.trial.create_trial(params={p: row[p] for p in params}, distributions=dists, value=row[target])
        for row in rows.iter_rows(named=True)
    ]
    study = optuna.create_study(direction="maximize")
    study.add_trials(trials)
    return get_param_importances(study, evaluator=PedAnovaImportanceEvaluator())


def _spearman(rows: pl.DataFrame, param: str, target: str) -> float | None:
    """Rank correlation of a numeric parameter with the target; it says which way the effect goes."""
    if rows.height < 2 or rows[param].dtype == pl.String:
        return None
    rho = rows.select(pl.corr(param, target, method="spearman")).item()
    return None if rho is None or math.isnan(rho) else rho


def _importance_scope(rows: pl.DataFrame, params: list[str], target: str) -> dict[str, Any]:
    rows = rows.filter(pl.col(target).is_not_null() & pl.col(target).is_not_nan())
    # Plain trials leave the bild-only columns empty: absent everywhere means not searched here.
    present = [p for p in params if rows[p].null_count() < rows.height]
    incomplete = [p for p in present if rows[p].null_count() > 0]
    varying = [p for p in present if p not in incomplete and rows[p].n_unique() > 1]
    scope: dict[str, Any] = {"n_trials": rows.height, "method": "spearman", "params": [], "note": None}
    if rows.height >= MIN_TRIALS_FOR_IMPORTANCE and varying:
        scope["method"] = "optuna PedAnovaImportanceEvaluator"
        importance = _optuna_importance(rows, varying, target)
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


def _importance(finished: pl.DataFrame, metric: str, params: list[str]) -> dict[str, dict[str, Any]]:
    """Per scope: all finished trials (mode as a categorical when it varies), then each mode alone."""
    target = f"best_{metric}"
    scopes = {"all": _importance_scope(finished, [*params, "mode"], target)}
    for mode in sorted(finished["mode"].drop_nulls().unique().to_list()):
        scopes[mode] = _importance_scope(finished.filter(pl.col("mode") == mode), params, target)
    return scopes


def _curves(epochs: pl.DataFrame | None, metric: str) -> list[dict[str, Any]]:
    if epochs is None:
        return []
    grouped = (
        epochs.filter(pl.col(metric).is_not_null())
        .sort("experiment", "trial_id", "epoch")
        .group_by("experiment", "trial_id", maintain_order=True)
        .agg(pl.col("mode").last(), pl.col("epoch"), pl.col(metric).fill_nan(None))
    )
    return grouped.to_dicts()


def analyze(run_dirs: Sequence[str | os.PathLike], metric: str = "select_psnr") -> dict[str, Any]:
    """The report of one or more experiments: ``leaderboard``, ``modes``, ``comparison``, ``importance``, ``curves``."""
    _check_metric(metric)
    trials = _latest_trials(read_table(run_dirs, "trials"))
    finished = trials.filter(pl.col("status").is_in(FINISHED) & pl.col(f"best_{metric}").is_not_null())
    params = searched_params(trials)
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # one "study created" line per scope is noise here
    return {
        "run_dirs": [str(d) for d in run_dirs],
        "metric": metric,
        "params": params,
        "leaderboard": _leaderboard(trials, metric, params),
        "modes": _modes(trials, finished),
        "comparison": _comparison(finished),
        "importance": _importance(finished, metric, params),
        "curves": _curves(_epochs_or_empty(run_dirs), metric),
    }


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
    return "\n\n".join(f"{heading(title)}\n\n{body}" for title, body in sections.items()) + "\n"


# --- plots ------------------------------------------------------------------------------------------


def _save(fig: Figure, path: Path) -> Path:
    for ax in fig.axes:
        if ax.get_legend_handles_labels()[0]:  # a run with no finished trial has nothing to label
            ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    return path


def _colour(mode: str | None) -> str:
    return MODE_COLOURS.get(mode or "", "tab:gray")


def _plot_curves(report: dict[str, Any], path: Path) -> Path:
    fig = Figure(figsize=(7, 4.5))
    ax = fig.add_subplot()
    for mode in sorted({c["mode"] for c in report["curves"]}, key=str):
        for k, c in enumerate(x for x in report["curves"] if x["mode"] == mode):
            ax.plot(c["epoch"], c[report["metric"]], color=_colour(mode), alpha=0.7, marker=".",
                    label=mode if k == 0 else None)
    ax.set(xlabel="epoch", ylabel=report["metric"], title="Learning curves (selection set)")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    return _save(fig, path)


def _plot_param(report: dict[str, Any], param: str, path: Path) -> Path:
    best = f"best_{report['metric']}"
    fig = Figure(figsize=(6, 4.5))
    ax = fig.add_subplot()
    finished = [r for r in report["leaderboard"] if r["status"] in FINISHED and r[param] is not None]
    for mode in sorted({r["mode"] for r in finished}, key=str):
        points = [(r[param], r[best]) for r in finished if r["mode"] == mode and r[best] is not None]
        if points:
            ax.scatter(*zip(*points), color=_colour(mode), label=mode)
    if param == "alpha" or param.endswith("lr"):
        ax.set_xscale("log")
    ax.set(xlabel=param, ylabel=best, title=f"{best} against {param}")
    return _save(fig, path)


def _plot_modes(report: dict[str, Any], path: Path) -> Path:
    """Mean metric per epoch for each mode, with the min-max band over its trials (the paper's Fig. 6)."""
    metric = report["metric"]
    frame = pl.DataFrame(
        [{"mode": c["mode"], "epoch": e, "value": v} for c in report["curves"] for e, v in zip(c["epoch"], c[metric])
         if v is not None],
        schema={"mode": pl.String, "epoch": pl.Int64, "value": pl.Float64},
    )
    stats = frame.group_by("mode", "epoch").agg(
        mean=pl.col("value").mean(), low=pl.col("value").min(), high=pl.col("value").max()
    ).sort("mode", "epoch")
    fig = Figure(figsize=(7, 4.5))
    ax = fig.add_subplot()
    for (mode,), group in stats.group_by("mode", maintain_order=True):
        ax.plot(group["epoch"], group["mean"], color=_colour(mode), label=f"{mode} (mean)")
        ax.fill_between(group["epoch"], group["low"], group["high"], color=_colour(mode), alpha=0.2)
    ax.set(xlabel="epoch", ylabel=metric, title="BILD against plain: mean and min-max over trials")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    return _save(fig, path)


def write_plots(report: dict[str, Any], out_dir: str | os.PathLike) -> list[Path]:
    """curves.png, <metric>_vs_<param>.png per searched parameter, bild_vs_plain.png; returns the paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    short = report["metric"].removeprefix("select_")
    paths = [_plot_curves(report, out / "curves.png")]
    for param in report["params"]:
        if any(r[param] is not None and r["status"] in FINISHED for r in report["leaderboard"]):
            paths.append(_plot_param(report, param, out / f"{short}_vs_{param}.png"))
    paths.append(_plot_modes(report, out / "bild_vs_plain.png"))
    return paths


# --- patch weights (the paper's Fig. 7) -------------------------------------------------------------


Grid = tuple[int, int, int, int]  # top, left, rows, cols of the crop grid on the image


def _crop_grid(hazy: np.ndarray, clear: np.ndarray, crop: int, path: str) -> tuple[torch.Tensor, torch.Tensor, Grid]:
    """Every whole crop x crop cell of a centred grid: (hazy, clear) tensors (rows*cols,3,S,S) and the grid."""
    h, w = hazy.shape[:2]
    rows, cols = h // crop, w // crop
    if rows == 0 or cols == 0:
        raise ValueError(f"{path} is {w}x{h}, smaller than one {crop}x{crop} crop; pass a smaller --crop")
    top, left = (h - rows * crop) // 2, (w - cols * crop) // 2

    def cells(image: np.ndarray) -> torch.Tensor:
        t = to_tensor(image[top : top + rows * crop, left : left + cols * crop])[0]  # (3, rows*S, cols*S)
        t = t.unfold(1, crop, crop).unfold(2, crop, crop)  # (3, rows, cols, S, S)
        return t.permute(1, 2, 0, 3, 4).reshape(rows * cols, 3, crop, crop)

    return cells(hazy), cells(clear), (top, left, rows, cols)


def _draw_weights(hazy: np.ndarray, weights: np.ndarray, grid: Grid, crop: int, title: str) -> Figure:
    top, left, rows, cols = grid
    h, w = hazy.shape[:2]
    fig = Figure(figsize=(8, 8 * h / w + 0.6))
    ax = fig.add_subplot()
    ax.imshow(hazy)
    extent = (left, left + cols * crop, top + rows * crop, top)
    shown = ax.imshow(weights, extent=extent, cmap="inferno", alpha=0.45, interpolation="nearest")
    fontsize = max(4, min(12, 200 // max(rows, cols)))
    for r in range(rows):
        for c in range(cols):
            ax.text(left + (c + 0.5) * crop, top + (r + 0.5) * crop, f"{weights[r, c]:.2f}", ha="center",
                    va="center", color="white", fontsize=fontsize,
                    path_effects=[patheffects.withStroke(linewidth=2, foreground="black")])  # legible on any colour
    ax.set_axis_off()
    ax.set_title(title)
    fig.colorbar(shown, ax=ax, fraction=0.046, pad=0.02, label="crop weight (mean 1)")
    return fig


def patch_weights(
    checkpoint: str | os.PathLike,
    hazy: str | os.PathLike,
    clear: str | os.PathLike,
    out: str | os.PathLike,
    crop: int | None = None,
) -> np.ndarray:
    """Draw the reweighter's crop weights over the hazy image (the paper's Fig. 7); returns the (rows, cols) grid.

    The image pair is cut into a grid of training-size crops (``crop`` defaults to the
    checkpoint's ``dataset.crop``), all scored as one batch, and normalised as in training,
    so the weights have mean 1 over the grid.
    """
    state = load_checkpoint(checkpoint)
    if state["models"]["reweighter"] is None:
        raise ValueError(f"checkpoint {checkpoint} has no reweighter (mode {state['config']['mode']!r}); "
                         "patch weights exist only for checkpoints of mode bild or bild-train")
    cfg = saved_config(state["config"])
    reweighter = build_reweighter(cfg.bild)
    reweighter.load_state_dict(state["models"]["reweighter"])
    hazy_img, clear_img = decode_image(Path(hazy)), decode_image(Path(clear))
    if hazy_img.shape != clear_img.shape:
        raise ValueError(f"{hazy} is {hazy_img.shape[1]}x{hazy_img.shape[0]} but {clear} is "
                         f"{clear_img.shape[1]}x{clear_img.shape[0]}; expected a pair of the same size")
    crop = crop or int(cfg["dataset"]["crop"])
    hazy_cells, clear_cells, grid = _crop_grid(hazy_img, clear_img, crop, str(hazy))
    with torch.no_grad():
        scores = reweighter(hazy_cells, clear_cells)
        log_w = crop_log_weights(scores, temperature=cfg["bild"]["temperature"], kind=cfg["bild"]["weighting"])
    weights = log_w.exp().reshape(grid[2], grid[3]).numpy()
    title = f"{cfg['backbone']['name']} {cfg['mode']}, epoch {state['epoch']}: crop weights ({crop}px)"
    _save(_draw_weights(hazy_img, weights, grid, crop, title), Path(out))
    return weights


# --- command line -----------------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m pipeline.analyze", description=__doc__.split("\n\n")[0])
    p.add_argument("run_dirs", nargs="*", metavar="RUN_DIR", help="experiment folder(s) written by pipeline.search")
    p.add_argument("--format", choices=FORMATS, default="table")
    p.add_argument("--plots", metavar="DIR", help="also write PNG plots into DIR")
    p.add_argument("--metric", choices=METRICS, default="select_psnr", help="selection metric that ranks trials")
    weights = p.add_argument_group("patch weights (instead of a report)")
    weights.add_argument("--weights", metavar="CKPT", help="a bild or bild-train checkpoint.pt")
    weights.add_argument("--hazy", metavar="IMG")
    weights.add_argument("--clear", metavar="IMG")
    weights.add_argument("--out", metavar="PNG")
    weights.add_argument("--crop", type=int, help="crop size in pixels (default: the checkpoint's training crop)")
    return p


def _check_usage(p: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    if args.weights:
        missing = [f"--{name}" for name in ("hazy", "clear", "out") if getattr(args, name) is None]
        if missing:
            p.error(f"--weights needs {', '.join(missing)}")
        if args.run_dirs:
            p.error("give either RUN_DIR(s) or --weights, not both")
    elif not args.run_dirs:
        p.error("give at least one RUN_DIR (or --weights CKPT --hazy IMG --clear IMG --out PNG)")


def main(argv: list[str] | None = None) -> int:
    p = _parser()
    args = p.parse_args(argv)
    _check_usage(p, args)
    try:
        if args.weights:
            grid = patch_weights(args.weights, args.hazy, args.clear, args.out, args.crop)
            rows, cols = grid.shape
            print(f"wrote {args.out}: {rows}x{cols} crops, weights {grid.min():.2f} to {grid.max():.2f}")
            return 0
        report = analyze(args.run_dirs, args.metric)
        print(render(report, args.format), end="")
        if args.plots:
            for path in write_plots(report, args.plots):
                print(f"wrote {path}", file=sys.stderr)  # stderr: keeps --format json on stdout parseable
    except (FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
