"""Plots of a search report (``pipeline.analysis.report.analyze``), ready for a paper.

- ``curves.png``: every trial's selection metric per epoch, coloured by mode, with the hazy
  input's PSNR as the bar to clear, the best trial drawn bold, and an x where ASHA stopped
  a trial early.
- ``<metric>_vs_<param>.png``: each trial's best value against one searched parameter,
  coloured by mode, the best trial ringed.
- ``bild_vs_plain.png``: per mode, the mean over trials per epoch with the min-max band
  (the paper's Fig. 6).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import polars as pl
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from ..results import FINISHED

__all__ = ["MODE_COLOURS", "save_figure", "write_plots"]

MODE_COLOURS = {"plain": "tab:blue", "bild": "tab:orange", "bild-train": "tab:green"}
LOG_SCALE = ("alpha", "inner_lr", "outer_lr")


def save_figure(fig: Figure, path: Path) -> Path:
    """Legend where there is something to label, tight layout, 100 dpi PNG."""
    for ax in fig.axes:
        if ax.get_legend_handles_labels()[0]:  # a run with no finished trial has nothing to label
            ax.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    return path


def _colour(mode: str | None) -> str:
    return MODE_COLOURS.get(mode or "", "tab:gray")


def _best(report: dict[str, Any]) -> dict[str, Any] | None:
    """The leaderboard's first finished trial: the one promote would pick."""
    return next((r for r in report["leaderboard"] if r["status"] in FINISHED), None)


def _is_best(row: dict[str, Any], best: dict[str, Any] | None) -> bool:
    return best is not None and (row["experiment"], row["trial_id"]) == (best["experiment"], best["trial_id"])


def _hazy_line(ax: Any, report: dict[str, Any]) -> None:
    """The hazy input's own PSNR on the selection set: a dehazer below it makes images worse."""
    values = [c["hazy_psnr"] for c in report["curves"] if c.get("hazy_psnr") is not None]
    if report["metric"] == "select_psnr" and values:
        ax.axhline(sum(values) / len(values), color="black", linestyle="--", linewidth=1, label="hazy input")


def _plot_curves(report: dict[str, Any], path: Path) -> Path:
    fig = Figure(figsize=(7, 4.5))
    ax = fig.add_subplot()
    metric, best = report["metric"], _best(report)
    labelled: set[str] = set()
    for c in report["curves"]:
        mode, top = c["mode"], _is_best(c, best)
        label = f"{mode} (best trial {c['trial_id']})" if top else (mode if mode not in labelled else None)
        labelled.add(mode)
        ax.plot(c["epoch"], c[metric], color=_colour(mode), alpha=1.0 if top else 0.55, marker=".",
                linewidth=2.5 if top else 1.0, label=label, zorder=3 if top else 2)
        if c.get("status") == "STOPPED" and c["epoch"]:
            ax.plot(c["epoch"][-1], c[metric][-1], marker="x", color=_colour(mode), markersize=8, linestyle="none")
    if any(c.get("status") == "STOPPED" for c in report["curves"]):
        ax.plot([], [], marker="x", color="tab:gray", linestyle="none", label="stopped by ASHA")
    _hazy_line(ax, report)
    ax.set(xlabel="epoch", ylabel=metric, title="Learning curves (selection set)")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    return save_figure(fig, path)


def _plot_param(report: dict[str, Any], param: str, path: Path) -> Path:
    best_col, best = f"best_{report['metric']}", _best(report)
    fig = Figure(figsize=(6, 4.5))
    ax = fig.add_subplot()
    finished = [r for r in report["leaderboard"] if r["status"] in FINISHED and r[param] is not None]
    for mode in sorted({r["mode"] for r in finished}, key=str):
        points = [(r[param], r[best_col]) for r in finished if r["mode"] == mode and r[best_col] is not None]
        if points:
            ax.scatter(*zip(*points), color=_colour(mode), label=mode, zorder=2)
    top = [r for r in finished if _is_best(r, best)]
    if top:
        ax.scatter(top[0][param], top[0][best_col], s=160, facecolors="none", edgecolors="black", zorder=3,
                   label="best trial")
    if param in LOG_SCALE:
        ax.set_xscale("log")
    ax.set(xlabel=param, ylabel=best_col, title=f"{best_col} against {param}")
    return save_figure(fig, path)


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
    _hazy_line(ax, report)
    ax.set(xlabel="epoch", ylabel=metric, title="BILD against plain: mean and min-max over trials")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    return save_figure(fig, path)


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
