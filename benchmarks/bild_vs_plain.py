"""Does BILD beat plain training? Paired per-image differences on scenes no run trained on.

Trains plain and each BILD lever with the same seeds and the same number of steps (or, with
``--plain-budget time``, plain for as long as default BILD took), then scores every final
backbone on the Trainer's scene-disjoint test split (``dataset.select_fraction``,
``dataset.test_fraction``, ``dataset.split_seed``). For each lever it reports the per-image
paired difference to plain (lever - plain, on the same images and seeds) with a seeded
bootstrap 95% CI of the mean PSNR and SSIM difference, the share of images where the lever
wins, the weights' ESS and largest weight, and the training wall time.

Levers (``--levers``, comma-separated; plain always runs):
  bild         the paper's BILD step (no mixture, a fixed validation split); every lever starts from it
  mix-0.5      the guard rail: w = 0.5 + 0.5 * policy weights (bild.mix)
  ess-0.7      an ESS floor of 0.7 n (bild.ess_floor)
  rotation     cross-fitting: the validation fold rotates each epoch (train.val_rotation)
  m-10         a larger validation batch, m = 10 (train.val_batch_size)
  warmup       the first third of the steps plain (train.bild_warmup_steps)
  bild-train   the outer loop reads training crops (the paper's ablation)
  uniform      bild with alpha = 1000: uniform weights on BILD's own split (the data tax alone)
  adam         d_i in Adam's preconditioned space, <P g_v, grad l_i> (bild.alignment_space=adam)
  reference-code   the public reference code's reweighter: one batch-wide reward with a moving
               baseline (bild.reward=batch_wide); its policy gradient is exactly zero
  mix-0.5+rotation   two levers together (any names joined by '+'); these two are today's defaults

``--init MODEL`` fine-tunes a model (imported or promoted) instead of training from scratch:
every run starts from its weights, and the model itself, untrained further, is scored on the
same test images as the row ``init`` (its difference to plain is then init - plain).

Output: ``OUT.parquet`` (one row per run and test image, the settings in its metadata) and
``OUT.md`` (the table); with ``--eval-every K`` also ``OUT.curve.parquet`` (every K steps, each
run's scores on the selection and test images), from which ``OUT.md`` adds the BILD-minus-plain
curve, the comparison at each run's best point on the selection set, and the optimism of
choosing on the test set instead (the gap between the best test score and the selected one); ``--summarize`` redraws ``OUT.md`` from ``OUT.parquet`` alone, and
``--merge A.parquet B.parquet --out OUT`` pools the seeds of runs with the same settings.
The data defaults to SOTS-indoor where its descriptor's root (datasets/local/sots_indoor, a
folder or a link to one) exists, else the built-in data.

    python benchmarks/bild_vs_plain.py --seeds 0,1,2,3,4 --steps 300 --out runs/bench/sots
    python benchmarks/bild_vs_plain.py --levers bild,mix-0.5 --wrong-targets 0.3 --out runs/bench/wrong
    python benchmarks/bild_vs_plain.py --dataset builtin --backbone aodnet --preset tiny --crop 32 --steps 4
    python benchmarks/bild_vs_plain.py --init models/aodnet/dehazer --preset paper --levers bild,mix-0.5+rotation
"""

from __future__ import annotations

import argparse
import concurrent.futures as futures
import json
import multiprocessing
import platform
import sys
import time
from pathlib import Path
from collections.abc import Iterator
from typing import Any

import numpy as np
import polars as pl
import pyarrow.parquet as pq
import torch
from omegaconf import DictConfig

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run as a script: experiments/ is a top-level folder like this one

from experiments.wrong_targets import corrupt_targets  # noqa: E402
from pipeline.analysis.report import CONFIDENCE, RESAMPLES, bootstrap_diff, percentile_interval  # noqa: E402
from pipeline.config import compose_config, paper_step_overrides  # noqa: E402
from pipeline.data import PairIndex, split_by_scene  # noqa: E402
from pipeline.evaluation.inference import score_pairs, set_threads  # noqa: E402
from pipeline.files import atomic_write, atomic_write_text  # noqa: E402
from pipeline.trainer import Trainer, load_index  # noqa: E402

BASELINE = "plain"
INIT = "init"  # with --init: the starting model scored as it is, no step trained
# A run's own columns (the same on each of its image rows); policy_shift is |phi_end - phi_start|.
RUN_COLUMNS = ("lever", "seed", "train_s", "steps", "ess", "max_weight", "policy_shift")
META_KEY = "bild_vs_plain"  # the Parquet file's key-value metadata entry holding the run's settings
DEFAULT_LEVERS = "bild,mix-0.5,ess-0.7,rotation,mix-0.5+rotation,m-10,warmup,bild-train,uniform"


def lever_overrides(name: str, steps: int) -> list[str]:
    """The Hydra overrides one lever (or several joined by '+') adds to the common ones."""
    single = {
        "plain": ["mode=plain"],
        INIT: ["mode=plain"],
        "bild": ["mode=bild"],
        "mix-0.5": ["bild.mix=0.5"],
        "ess-0.7": ["bild.ess_floor=0.7"],
        "rotation": ["train.val_rotation=true"],
        "m-10": ["train.val_batch_size=10"],
        "warmup": [f"train.bild_warmup_steps={steps // 3}"],
        "bild-train": ["mode=bild-train"],
        "uniform": ["bild.alpha=1000"],
        "adam": ["bild.alignment_space=adam"],
        "reference-code": ["bild.reward=batch_wide"],
    }
    parts = name.split("+")
    unknown = [p for p in parts if p not in single]
    if unknown:
        raise ValueError(f"unknown lever {'+'.join(unknown)!r}; expected one of {', '.join(single)} (or several joined by +)")
    unweighted = name in (BASELINE, INIT)
    mode = [] if unweighted or "bild-train" in parts else ["mode=bild"]
    # Every lever starts from the paper's step (no mixture, a fixed D_v) and changes only what it
    # names, so "bild" is the paper's BILD whatever today's defaults (mix-0.5+rotation) are.
    paper_step = [] if unweighted else paper_step_overrides()
    return [*mode, *paper_step, *(o for p in parts for o in single[p])]


# --- one run, in a worker process ---------------------------------------------------------------------

_INDEXES: dict[tuple[str, ...], PairIndex] = {}


def _index(common: list[str]) -> PairIndex:
    """The dataset, decoded once per worker process and shared by its runs."""
    key = tuple(o for o in common if o.startswith(("datasets=", "dataset.root", "dataset.max_side")))
    if key not in _INDEXES:
        _INDEXES[key] = load_index(compose_config(common))
    return _INDEXES[key]


def train_pool(index: PairIndex, cfg: DictConfig) -> list[int]:
    """The pairs of the scene-disjoint train pool that every lever's Trainer splits from."""
    ds = cfg.dataset
    return split_by_scene(index, select_fraction=ds.select_fraction, test_fraction=ds.test_fraction,
                          seed=ds.split_seed).train_pool


def with_wrong_targets(index: PairIndex, cfg: DictConfig, fraction: float, seed: int) -> PairIndex:
    """``index`` with ``fraction`` of the train pool pointing at another scene's clear image (the same for every
    lever of a seed, validation split included); ``index`` itself when ``fraction`` is 0."""
    return corrupt_targets(index, train_pool(index, cfg), fraction, seed)[0] if fraction > 0 else index


def _scores(trainer: Trainer, indices: list[int]) -> dict[str, list[float]]:
    trainer.backbone.eval()
    return score_pairs(trainer.backbone, trainer.index, indices, trainer.device,
                       max_side=trainer.cfg.dataset.eval_max_side)


def _curve_point(trainer: Trainer, job: dict[str, Any]) -> list[dict[str, Any]]:
    """The selection and test images scored at the trainer's current step: one row per image."""
    rows = []
    for split, indices in (("select", trainer.select_scored), ("test", trainer.splits.test)):
        scores = _scores(trainer, indices)
        rows += [{"lever": job["lever"], "seed": job["seed"], "step": trainer.step, "split": split, "pair": i,
                  "psnr": p, "ssim": q} for i, p, q in zip(indices, scores["psnr"], scores["ssim"])]
    trainer.backbone.train()
    return rows


def _policy_vector(trainer: Trainer) -> torch.Tensor | None:
    net = trainer.nets.reweighter
    return None if net is None else torch.cat([p.detach().flatten().clone() for p in net.parameters()])


def run_one(job: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
    """Train one (lever, seed) and score its final backbone on the test split.

    Returns ``images`` (one row per test image) and ``curve`` (with ``eval_every``, the selection
    and test images scored every that many steps).
    """
    set_threads(job["threads"])
    cfg = compose_config([*job["common"], f"seed={job['seed']}", *lever_overrides(job["lever"], job["steps"])])
    index = with_wrong_targets(_index(job["common"]), cfg, job["wrong_fraction"], job["seed"])
    trainer = Trainer(cfg, index)
    stats: list[dict[str, float]] = []
    curve: list[dict[str, Any]] = []
    every, scoring_s = job["eval_every"], [0.0]

    def score_every(batch: object, step_stats: object) -> None:
        if every and trainer.step % every == 0:
            began = time.perf_counter()
            curve.extend(_curve_point(trainer, job))
            scoring_s[0] += time.perf_counter() - began

    policy_start = _policy_vector(trainer)
    start = time.perf_counter()
    while job["lever"] != INIT and (trainer.epoch < cfg.train.epochs if job["seconds"] is None
                                    else time.perf_counter() - start < job["seconds"]):
        stats.append(trainer.train_epoch(on_step=score_every))
    train_s = time.perf_counter() - start - scoring_s[0]  # without the curve's scoring, which every lever pays alike
    trainer.close()
    test = trainer.splits.test
    scores = _scores(trainer, test)
    policy_end = _policy_vector(trainer)
    run = {
        "lever": job["lever"], "seed": job["seed"], "steps": trainer.step, "train_s": train_s,
        "policy_shift": None if policy_end is None else float(torch.linalg.vector_norm(policy_end - policy_start)),
        **{k: float(np.nanmean([s[k] for s in stats])) if stats and any(np.isfinite(s[k]) for s in stats) else None
           for k in ("ess", "max_weight", "weight_entropy")},
    }
    images = [{**run, "pair": i, "scene": index.scenes[i], "psnr": p, "ssim": q}
              for i, p, q in zip(test, scores["psnr"], scores["ssim"])]
    return {"images": images, "curve": curve}


def run_all(jobs: list[dict[str, Any]], workers: int) -> Iterator[list[dict[str, Any]]]:
    """Each job's rows, in the jobs' order, as soon as that job and those before it are done."""
    if workers <= 1:
        yield from map(run_one, jobs)
        return
    # spawn: a forked worker would inherit torch's thread pool state from the parent.
    with futures.ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        yield from pool.map(run_one, jobs)


# --- the paired comparison ----------------------------------------------------------------------------


def paired_summary(images: pl.DataFrame, seed: int = 0) -> list[dict[str, Any]]:
    """Per lever: mean PSNR/SSIM, the paired difference to plain with its bootstrap CI, wins, weights, time.

    Each test image's difference is averaged over the seeds first; the bootstrap then resamples
    images. ``wins`` is the share of (seed, image) pairs where the lever scores the higher PSNR.
    """
    runs = images.group_by("lever", "seed").agg(pl.col(*RUN_COLUMNS[2:]).first())
    base = images.filter(pl.col("lever") == BASELINE).select("seed", "pair", psnr_0="psnr", ssim_0="ssim")
    if base.is_empty():  # plain runs last under --plain-budget time
        return []
    base_time = runs.filter(pl.col("lever") == BASELINE)["train_s"].mean()
    rows = []
    levers = images["lever"].unique(maintain_order=True).to_list()
    for lever in [BASELINE, *(lv for lv in levers if lv != BASELINE)]:
        mine = images.filter(pl.col("lever") == lever).join(base, on=["seed", "pair"])
        if mine.is_empty():  # no plain run of the same seed (yet): nothing to pair with
            continue
        per_image = mine.group_by("pair").agg(pl.col("psnr", "psnr_0", "ssim", "ssim_0").mean()).sort("pair")
        r = runs.filter(pl.col("lever") == lever)
        row: dict[str, Any] = {
            "lever": lever, "seeds": r.height, "images": per_image.height, "steps": float(r["steps"].mean()),
            "psnr": float(mine["psnr"].mean()), "ssim": float(mine["ssim"].mean()),
            "ess": r["ess"].mean(), "max_weight": r["max_weight"].mean(),
            "train_s": float(r["train_s"].mean()), "time_ratio": float(r["train_s"].mean() / base_time),
            "policy_shift": r["policy_shift"].mean() if "policy_shift" in r.columns else None,
        }
        if lever != BASELINE:
            for metric in ("psnr", "ssim"):
                a, b = per_image[metric].to_numpy(), per_image[f"{metric}_0"].to_numpy()
                low, high = bootstrap_diff(a, b, paired=True, seed=seed)
                row.update({f"d_{metric}": float((a - b).mean()), f"d_{metric}_low": low, f"d_{metric}_high": high})
            row["wins"] = float((mine["psnr"] > mine["psnr_0"]).mean())
            seed_means = mine.group_by("seed").agg((pl.col("psnr") - pl.col("psnr_0")).mean().alias("d"))["d"]
            row["d_psnr_seed_min"], row["d_psnr_seed_max"] = float(seed_means.min()), float(seed_means.max())
            for metric in ("psnr", "ssim"):
                row[f"d_{metric}_both_low"], row[f"d_{metric}_both_high"] = seed_and_image_ci(mine, seed, metric)
        rows.append(row)
    return rows


def seed_and_image_ci(mine: pl.DataFrame, seed: int = 0, metric: str = "psnr") -> tuple[float, float]:
    """Percentile bootstrap CI of the mean ``metric`` difference with the seeds resampled as well as the images.

    The image-only interval above treats the seeds' average as fixed, so one lucky seed can
    move it clear of 0; resampling the seeds too (then the images, the same draw for every
    chosen seed) adds the run-to-run spread that a new seed would bring.
    """
    grid = mine.with_columns(d=pl.col(metric) - pl.col(f"{metric}_0")).pivot("pair", index="seed", values="d")
    diffs = grid.drop("seed").to_numpy()  # (seeds, images)
    rng = np.random.default_rng(seed)
    seeds = rng.integers(0, diffs.shape[0], size=(RESAMPLES, diffs.shape[0]))
    images = rng.integers(0, diffs.shape[1], size=(RESAMPLES, diffs.shape[1]))
    return percentile_interval(np.array([diffs[np.ix_(s, i)].mean() for s, i in zip(seeds, images)]))


def _fmt(value: Any, spec: str) -> str:
    return "-" if value is None or (isinstance(value, float) and not np.isfinite(value)) else format(value, spec)


def markdown(summary: list[dict[str, Any]], meta: dict[str, Any], heading: str | None = None) -> str:
    """The table, under the settings and the split it was measured on (or under ``heading`` alone)."""
    head = ("| lever | seeds x images | PSNR | BILD - plain PSNR [95% CI] | CI, seeds resampled too | per-seed range "
            "| SSIM diff [95% CI] | SSIM CI, seeds resampled too | wins | ESS | max w | policy moved | train s (x plain) |")
    top = [f"## {heading}"] if heading else [f"# {meta['title']}", "", *(f"- {k}: {v}" for k, v in meta.items() if k != "title")]
    lines = [*top, "", head, "|" + "---|" * 13]
    for r in summary:
        plain = r["lever"] == BASELINE
        diff = "-" if plain else f"{r['d_psnr']:+.3f} [{r['d_psnr_low']:+.3f}, {r['d_psnr_high']:+.3f}]"
        both = "-" if plain else f"[{r['d_psnr_both_low']:+.3f}, {r['d_psnr_both_high']:+.3f}]"
        spread = "-" if plain else f"{r['d_psnr_seed_min']:+.2f} .. {r['d_psnr_seed_max']:+.2f}"
        sdiff = "-" if plain else f"{r['d_ssim']:+.4f} [{r['d_ssim_low']:+.4f}, {r['d_ssim_high']:+.4f}]"
        sboth = "-" if plain else f"[{r['d_ssim_both_low']:+.4f}, {r['d_ssim_both_high']:+.4f}]"
        lines.append(
            f"| {r['lever']} | {r['seeds']} x {r['images']} | {r['psnr']:.2f} | {diff} | {both} | {spread} | {sdiff} "
            f"| {sboth} | {_fmt(r.get('wins'), '.0%')} | {_fmt(r['ess'], '.2f')} | {_fmt(r['max_weight'], '.2f')} "
            f"| {_fmt(r.get('policy_shift'), '.2e')} | {r['train_s']:.0f} ({r['time_ratio']:.2f}x) |")
    return "\n".join(lines) + "\n"


# --- the curve: scores every K steps ------------------------------------------------------------------


def _split_means(curve: pl.DataFrame) -> pl.DataFrame:
    """Per (lever, seed, step): the mean selection PSNR and the mean test PSNR and SSIM."""
    return (curve.group_by("lever", "seed", "step")
            .agg(select_psnr=pl.col("psnr").filter(pl.col("split") == "select").mean(),
                 test_psnr=pl.col("psnr").filter(pl.col("split") == "test").mean(),
                 test_ssim=pl.col("ssim").filter(pl.col("split") == "test").mean())
            .sort("lever", "seed", "step"))


def selected_steps(curve: pl.DataFrame) -> pl.DataFrame:
    """Each run's best point on the selection set: the step of its highest mean selection PSNR (the earliest on ties)."""
    return (_split_means(curve).group_by("lever", "seed", maintain_order=True)
            .agg(pl.col("step").get(pl.col("select_psnr").arg_max())))


def images_at_selection(images: pl.DataFrame, curve: pl.DataFrame) -> pl.DataFrame:
    """The benchmark's image rows, but with each run's test scores at its selected step (the project's protocol)."""
    chosen = curve.filter(pl.col("split") == "test").join(selected_steps(curve), on=["lever", "seed", "step"])
    runs = images.select(*(c for c in RUN_COLUMNS if c in images.columns)).unique(["lever", "seed"])
    return chosen.select("lever", "seed", "pair", "psnr", "ssim").join(runs, on=["lever", "seed"])


def _test_grid(curve: pl.DataFrame, lever: str) -> tuple[list[int], list[int], np.ndarray]:
    """One lever's test PSNR as (seeds, steps, grid[seed, step, image])."""
    test = curve.filter((pl.col("lever") == lever) & (pl.col("split") == "test")).sort("seed", "step", "pair")
    seeds = test["seed"].unique().sort().to_list()
    steps = test.filter(pl.col("seed") == seeds[0])["step"].unique().sort().to_list()
    return seeds, steps, test["psnr"].to_numpy().reshape(len(seeds), len(steps), test["pair"].n_unique())


def protocol_gap(curve: pl.DataFrame, seed: int = 0) -> list[dict[str, Any]]:
    """Per lever: test PSNR at the step the selection set chooses, the best test PSNR over the evaluations, and the gap.

    The gap (best - selected, >= 0 on every run) is the optimism of choosing the checkpoint on the
    test set itself, as the public reference code does. ``vs_plain`` is what that protocol reports
    as the lever's gain: its best test PSNR minus plain's best, on the seeds both ran. Intervals are
    percentile bootstraps that resample the seeds and the test images (each run keeps its own
    selected and best steps; a lever and plain share each draw).
    """
    steps = selected_steps(curve)
    plain_seeds, _, plain_grid = _test_grid(curve, BASELINE)
    rows = []
    for lever in curve["lever"].unique(maintain_order=True).to_list():
        seeds, step_values, grid = _test_grid(curve, lever)
        chosen = np.array([step_values.index(steps.filter((pl.col("lever") == lever) & (pl.col("seed") == s))["step"][0])
                           for s in seeds])
        plain = plain_grid[[plain_seeds.index(s) for s in seeds]]  # plain runs first on every seed: it has them all

        def statistics(s_idx: np.ndarray, i_idx: np.ndarray) -> tuple[float, float]:
            means = grid[s_idx][:, :, i_idx].mean(-1)  # (seeds, steps)
            plain_best = plain[s_idx][:, :, i_idx].mean(-1).max(1)
            gap = means.max(1) - means[np.arange(len(s_idx)), chosen[s_idx]]
            return float(gap.mean()), float((means.max(1) - plain_best).mean())

        every = np.arange(len(seeds)), np.arange(grid.shape[2])
        rng = np.random.default_rng(seed)
        draws = np.array([statistics(rng.integers(0, len(seeds), len(seeds)), rng.integers(0, grid.shape[2], grid.shape[2]))
                          for _ in range(RESAMPLES)])
        (gap_low, gap_high), (vs_low, vs_high) = percentile_interval(draws[:, 0]), percentile_interval(draws[:, 1])
        means = grid.mean(-1)
        gap, vs_plain = statistics(*every)
        rows.append({"lever": lever, "seeds": len(seeds), "evaluations": grid.shape[1],
                     "selected": float(means[every[0], chosen].mean()), "best": float(means.max(1).mean()),
                     "gap": gap, "gap_low": gap_low, "gap_high": gap_high,
                     "vs_plain": vs_plain, "vs_plain_low": vs_low, "vs_plain_high": vs_high,
                     "selected_step": float(np.array(step_values)[chosen].mean())})
    return rows


def _row(cells: list[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def curve_markdown(images: pl.DataFrame, curve: pl.DataFrame) -> str:
    """The curve's sections of OUT.md: lever - plain every K steps, at the selected point, and the protocol gap."""
    means = _split_means(curve)
    base = means.filter(pl.col("lever") == BASELINE).select("seed", "step", psnr_0="test_psnr", ssim_0="test_ssim")
    levers = [lv for lv in means["lever"].unique(maintain_order=True).to_list() if lv != BASELINE]
    diffs = (means.join(base, on=["seed", "step"])
             .group_by("lever", "step").agg(d_psnr=(pl.col("test_psnr") - pl.col("psnr_0")).mean(),
                                            d_ssim=(pl.col("test_ssim") - pl.col("ssim_0")).mean(),
                                            plain=pl.col("psnr_0").mean()))
    lines = ["## Lever - plain on the test images over training (mean over seeds: PSNR dB / SSIM)", "",
             _row(["step", "plain PSNR", *levers]), "|" + "---|" * (len(levers) + 2)]
    for step in sorted(diffs["step"].unique().to_list()):
        at = diffs.filter(pl.col("step") == step)
        cells = []
        for lv in levers:
            row = at.filter(pl.col("lever") == lv)
            cells.append("-" if row.is_empty() else f"{row['d_psnr'][0]:+.3f} / {row['d_ssim'][0]:+.4f}")
        plain = at["plain"][0] if not at.is_empty() else float("nan")
        lines.append(_row([str(step), _fmt(plain, ".2f"), *cells]))
    selected = paired_summary(images_at_selection(images, curve))
    lines += ["", markdown(selected, {}, "At each run's best point on the selection set (the project's protocol)").rstrip(),
              "", "## The protocol gap: best test PSNR over the evaluations - test PSNR at the selected step", "",
              "| lever | seeds x evaluations | mean selected step | test PSNR, selected | best test PSNR | "
              "gap [95% CI, seeds and images resampled] | best - plain's best [95% CI, the same] |",
              "|---|---|---|---|---|---|---|"]
    for r in protocol_gap(curve):
        vs_plain = ("-" if r["lever"] == BASELINE
                    else f"{r['vs_plain']:+.3f} [{r['vs_plain_low']:+.3f}, {r['vs_plain_high']:+.3f}]")
        lines.append(f"| {r['lever']} | {r['seeds']} x {r['evaluations']} | {r['selected_step']:.0f} | {r['selected']:.2f} "
                     f"| {r['best']:.2f} | {r['gap']:+.3f} [{r['gap_low']:+.3f}, {r['gap_high']:+.3f}] | {vs_plain} |")
    return "\n".join(lines) + "\n"


# --- the command --------------------------------------------------------------------------------------


def _default_dataset() -> str:
    root = compose_config(["datasets=sots-indoor"]).dataset.root
    return "sots-indoor" if (REPO / root).is_dir() else "builtin"


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dataset", help="a descriptor in datasets/ (default: sots-indoor where its root exists, else builtin)")
    p.add_argument("--data-root", help="the dataset folder (default: the descriptor's root)")
    p.add_argument("--backbone", default="aodnet")
    p.add_argument("--preset", default="small")
    p.add_argument("--crop", type=int, default=64)
    p.add_argument("--steps", type=int, default=300, help="training steps per run (equal for every lever)")
    p.add_argument("--epochs", type=int, default=10, help="the steps in this many epochs (rotation moves per epoch)")
    p.add_argument("--init", type=lambda path: str(Path(path).resolve()), metavar="MODEL",
                   help="fine-tune this model (a model folder or file of --backbone at --preset); adds the row init")
    p.add_argument("--seeds", default="0", help="comma-separated seeds; every lever runs each")
    p.add_argument("--levers", default=DEFAULT_LEVERS, help=f"comma-separated (default: {DEFAULT_LEVERS})")
    p.add_argument("--plain-budget", choices=("steps", "time"), default="steps",
                   help="steps: plain trains as many steps as BILD; time: as long as default BILD took, per seed")
    p.add_argument("--wrong-targets", type=float, default=0.0, metavar="FRACTION",
                   help="give this share of the train pool another scene's clear image (validation split included)")
    p.add_argument("--select-fraction", type=float, default=0.04, help="scene share of the selection set (with --eval-every it picks each run's selected step)")
    p.add_argument("--test-fraction", type=float, default=0.28, help="scene share of the test set scored")
    p.add_argument("--eval-side", type=int, default=256, help="centre-crop test images to this side (0: whole images)")
    p.add_argument("--workers", type=int, default=1, help="runs in parallel, one torch thread each")
    p.add_argument("--eval-every", type=int, default=0, metavar="K",
                   help="also score the selection and test images every K steps (OUT.curve.parquet); 0: only at the end")
    p.add_argument("--out", default="runs/bench/bild_vs_plain", help="writes OUT.parquet and OUT.md")
    p.add_argument("--summarize", action="store_true", help="train nothing: redraw OUT.md from OUT.parquet")
    p.add_argument("--merge", nargs="+", type=Path, metavar="PARQUET",
                   help="train nothing: pool the seeds of these runs (same settings, other seeds) into OUT")
    p.add_argument("overrides", nargs="*", help="Hydra overrides for every run (e.g. train.inner_lr=1e-3)")
    return p


def _common(a: argparse.Namespace) -> list[str]:
    dataset = a.dataset or _default_dataset()
    root = [f"dataset.root={a.data_root}"] if a.data_root else (
        [f"dataset.root={REPO / compose_config([f'datasets={dataset}']).dataset.root}"] if dataset != "builtin" else [])
    return [f"datasets={dataset}", *root, f"backbone={a.backbone}", f"backbone.preset={a.preset}",
            f"dataset.crop={a.crop}", f"train.epochs={a.epochs}", f"train.steps_per_epoch={a.steps // a.epochs}",
            f"dataset.select_fraction={a.select_fraction}", f"dataset.test_fraction={a.test_fraction}",
            f"dataset.eval_max_side={a.eval_side or 'null'}", "progress=false", "device=cpu",
            *([f"train.init={a.init}"] if a.init else []), *a.overrides]


def _split_note(common: list[str], eval_every: int) -> str:
    trainer = Trainer(compose_config([*common, "mode=plain"]), _index(common))
    names = lambda idx: ", ".join(sorted({trainer.index.scenes[i] for i in idx}))  # noqa: E731
    s = trainer.splits
    role = "picks each run's selected step" if eval_every else "unused"
    return (f"train pool {len(s.train_pool)} pairs ({names(s.train_pool)}); selection {len(s.select)} "
            f"({names(s.select)}, {role}); test {len(s.test)} ({names(s.test)})")


def main(argv: list[str] | None = None) -> int:
    a = _parser().parse_args(argv)
    if a.summarize or a.merge:
        if a.merge:
            merge(a.merge, Path(a.out), "python benchmarks/bild_vs_plain.py " + " ".join(sys.argv[1:] if argv is None else argv))
        else:
            summarize(Path(a.out))
        print(Path(a.out).with_suffix(".md").read_text(), end="")
        return 0
    if a.eval_every < 0:
        raise SystemExit(f"error: --eval-every {a.eval_every}: expected a number of steps >= 1, or 0 for none")
    if a.steps < a.epochs:
        raise SystemExit(f"error: --steps {a.steps} is fewer than --epochs {a.epochs}; expected at least one step an epoch")
    levers = [lv for lv in a.levers.split(",") if lv and lv != BASELINE]
    for lv in levers:
        lever_overrides(lv, a.steps)  # unknown names fail here, before any training
    if a.plain_budget == "time" and "bild" not in levers:
        raise SystemExit("error: --plain-budget time needs the 'bild' lever (plain gets its wall time)")
    common, seeds = _common(a), [int(s) for s in a.seeds.split(",")]
    job = lambda lever, seed, seconds=None: dict(  # noqa: E731
        lever=lever, seed=seed, common=common, steps=a.steps, wrong_fraction=a.wrong_targets, threads=1, seconds=seconds,
        eval_every=a.eval_every)
    try:
        meta = _meta(a, common, argv)  # builds a Trainer: a --init model of another backbone or preset stops here
    except ValueError as err:
        raise SystemExit(f"error: {err}") from None
    rows: list[dict[str, Any]] = []
    curve: list[dict[str, Any]] = []
    # Seed by seed, plain first, and the files rewritten after every run: an interrupted
    # benchmark keeps every seed it finished.
    first = ([INIT] if a.init else []) + ([] if a.plain_budget == "time" else [BASELINE])
    for done in run_all([job(lv, s) for s in seeds for lv in [*first, *levers]], a.workers):
        rows += done["images"]
        curve += done["curve"]
        _write(rows, curve, Path(a.out), meta)
    if a.plain_budget == "time":
        bild_s = {r["seed"]: r["train_s"] for r in rows if r["lever"] == "bild"}
        for done in run_all([job(BASELINE, s, bild_s[s]) for s in seeds], a.workers):
            rows += done["images"]
            curve += done["curve"]
            _write(rows, curve, Path(a.out), meta)
    print(Path(a.out).with_suffix(".md").read_text(), end="")
    return 0


def _curve_path(out: Path) -> Path:
    return out.with_suffix(".curve.parquet")


def _write(rows: list[dict[str, Any]] | pl.DataFrame, curve: list[dict[str, Any]] | pl.DataFrame | None, out: Path,
           meta: dict[str, str]) -> None:
    # Every row read for the schema: plain and init rows have no weights (None) before BILD's have them.
    images = rows if isinstance(rows, pl.DataFrame) else pl.DataFrame(rows, infer_schema_length=None)
    curve = curve if isinstance(curve, pl.DataFrame) or not curve else pl.DataFrame(curve, infer_schema_length=None)
    out.parent.mkdir(parents=True, exist_ok=True)
    # The settings travel inside the Parquet file, so --summarize can redraw the table from it alone.
    table = images.to_arrow().replace_schema_metadata({META_KEY: json.dumps(meta)})
    atomic_write(out.with_suffix(".parquet"), lambda tmp: pq.write_table(table, tmp))
    if curve is not None and len(curve):
        atomic_write(_curve_path(out), lambda tmp: curve.write_parquet(tmp))
    atomic_write_text(out.with_suffix(".md"), _report(images, curve, meta))


def _report(images: pl.DataFrame, curve: pl.DataFrame | None, meta: dict[str, str]) -> str:
    text = markdown(paired_summary(images), meta)
    if curve is not None and len(curve) and BASELINE in curve["lever"].to_list():
        text += "\n" + curve_markdown(images, curve)
    return text


def _read_curve(path: Path) -> pl.DataFrame | None:
    return pl.read_parquet(_curve_path(path)) if _curve_path(path).is_file() else None


def _read(path: Path, flag: str) -> tuple[pl.DataFrame, dict[str, str]]:
    """A benchmark's rows and settings; files written before the settings were stored get a bare title."""
    if not path.is_file():
        raise SystemExit(f"error: {flag}: {path} does not exist; expected the Parquet file of a benchmark run")
    table = pq.read_table(path)
    stored = (table.schema.metadata or {}).get(META_KEY.encode())
    meta = json.loads(stored) if stored else {"title": f"BILD vs plain: {path} (written before the settings were stored)"}
    return pl.from_arrow(table), meta


def summarize(out: Path) -> None:
    """Rewrite ``OUT.md`` from ``OUT.parquet`` (a finished or interrupted benchmark), with today's summary."""
    images, meta = _read(out.with_suffix(".parquet"), "--summarize")
    atomic_write_text(out.with_suffix(".md"), _report(images, _read_curve(out.with_suffix("")), meta))


# Settings two runs must share for their seeds to be pooled.
_SAME_SETTINGS = ("data", "wrong targets", "scoring")


def merge(sources: list[Path], out: Path, command: str) -> None:
    """Pool the seeds of several runs of the same benchmark (``--merge``) into ``OUT.parquet`` and ``OUT.md``."""
    read = [_read(src, "--merge") for src in sources]
    for key in _SAME_SETTINGS:
        values = {meta[key] for _, meta in read if key in meta}
        if len(values) > 1:
            raise SystemExit(f"error: --merge: the files differ in {key!r} ({' / '.join(sorted(values))}); "
                             "expected runs of the same benchmark with different seeds")
    images = pl.concat([rows for rows, _ in read], how="diagonal_relaxed")
    twice = images.group_by("lever", "seed").agg(pl.col("pair").n_unique().alias("pairs"), pl.len())
    twice = twice.filter(pl.col("len") > pl.col("pairs"))
    if not twice.is_empty():
        row = twice.row(0, named=True)
        raise SystemExit(f"error: --merge: lever {row['lever']!r} seed {row['seed']} is in more than one file; "
                         "expected each (lever, seed) run once")
    stored = [meta for _, meta in read if "command" in meta]
    meta = dict(stored[-1] if stored else read[-1][1])
    seeds = ",".join(str(s) for s in sorted(images["seed"].unique()))
    meta["title"] = meta["title"].rsplit(", seeds ", 1)[0] + f", seeds {seeds}"
    meta["command"] = command
    meta["merged from"] = ", ".join(str(src) for src in sources)
    curves = [_read_curve(src.with_suffix("")) for src in sources]
    curve = pl.concat(curves, how="diagonal_relaxed") if all(c is not None for c in curves) else None
    _write(images, curve, out, meta)


def _meta(a: argparse.Namespace, common: list[str], argv: list[str] | None) -> dict[str, str]:
    return {
        "title": f"BILD vs plain: {a.backbone} {a.preset}, {a.steps} steps ({a.plain_budget} budget for plain), "
                 f"crop {a.crop}" + (f", fine-tuning {a.init}" if a.init else "") + f", seeds {a.seeds}",
        "data": f"{common[0].split('=')[1]}; {_split_note(common, a.eval_every)}",
        "wrong targets": f"{a.wrong_targets:.0%} of the train pool" if a.wrong_targets else "none",
        "scoring": f"test images centre-cropped to {a.eval_side} px" if a.eval_side else "whole test images",
        **({"curve": f"selection and test images scored every {a.eval_every} steps"} if a.eval_every else {}),
        "CI": f"{CONFIDENCE:.0%} percentile bootstrap ({RESAMPLES} resamples, seed 0): over test images, each "
              "image's difference averaged over the seeds; and over seeds and images both",
        "machine": f"{platform.processor() or platform.machine()}, torch {torch.__version__}, {a.workers} worker(s) x 1 thread",
        "command": "python benchmarks/bild_vs_plain.py " + " ".join(sys.argv[1:] if argv is None else argv),
    }


if __name__ == "__main__":
    raise SystemExit(main())
