"""Promotion: the best trial of a search becomes a versioned model folder.

The best trial is picked by the selection metric alone (never by test), among trials that
finished (TERMINATED or STOPPED) and whose checkpoint still exists. Its checkpoint is then
re-evaluated outside the search: on the images of the selection set the search scored each
epoch (``dataset.select_images`` of them, which must reproduce the value the search
recorded), on the whole selection set, and, for the first time, on the fixed test set. The
sets are rebuilt from the checkpoint's own resolved config, and the result is written as

    models/<backbone>/v<N>/model.safetensors  the backbone's weights alone (see pipeline.models.store)
    models/<backbone>/v<N>/card.json          architecture, config, metrics, source trial, data fingerprint, code version
    models/<backbone>/LATEST                  "v<N>"
    models/index.parquet                      every promoted model, one row each

A version folder is never overwritten: N is one more than the largest present. ``run_dir``
and ``models_dir`` may be storage URIs (``s3://bucket/runs/<experiment>``, ``s3://bucket/models``).
On a local disk the version folder is reserved by creating it; an object store has no
folders to create, so two promotions into the same bucket at the same moment could pick the
same N: promote from one place at a time there.

With ``refit``, the trial's configuration is first trained again on the whole train pool
(bild mode with the validation fold rotating each epoch, so that every pool scene is trained
on; plain already trains on the whole pool) for as many epochs as the chosen checkpoint had,
into ``<run_dir>/refit/<trial_id>/checkpoint.pt``; that model is the one promoted and tested.
The selection set still only checks the trial the search chose: nothing is picked by it twice.
"""

from __future__ import annotations

import os
import re
import subprocess
import time
import warnings
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import polars as pl
import pyarrow as pa
import torch

from .. import __version__
from ..checkpoints import load_checkpoint
from ..config import REPO_ROOT, saved_config
from ..data import PairIndex, Splits, decoded_cache_dir, load_dataset, select_subset, split_by_scene
from ..evaluation.inference import resolve_device, score_pairs
from ..storage import Location, location
from ..results import FINISHED, HYPERPARAMS, check_metric, read_table, searched_params, write_rows
from .store import CARD_FILE, LATEST_FILE, load_model, read_card, save_model

__all__ = ["INDEX_SCHEMA", "NoFinishedTrialError", "best_trial", "promote", "promotion_summary", "rebuild_data",
           "refit_checkpoint", "write_index"]

# Re-evaluation may run on another device or thread count than the search did.
TOLERANCE = {"psnr": 0.05, "ssim": 2e-3}
INDEX_SCHEMA = pa.schema(
    [
        pa.field("backbone", pa.string()),
        pa.field("version", pa.string()),
        pa.field("preset", pa.string()),
        pa.field("path", pa.string()),
        pa.field("experiment", pa.string()),
        pa.field("trial_id", pa.string()),
        pa.field("mode", pa.string()),
        *[pa.field(name, pa.float64()) for name in HYPERPARAMS],
        pa.field("selection_metric", pa.string()),
        pa.field("select_psnr", pa.float64()),
        pa.field("select_ssim", pa.float64()),
        pa.field("test_psnr", pa.float64()),
        pa.field("test_ssim", pa.float64()),
        pa.field("refit", pa.bool_()),
        pa.field("dataset", pa.string()),
        pa.field("data_fingerprint", pa.string()),
        pa.field("code_version", pa.string()),
        pa.field("git_commit", pa.string()),
        pa.field("promoted_at", pa.string()),
    ]
)


class NoFinishedTrialError(ValueError):
    """A run with nothing to promote: no finished trial with a checkpoint on disk."""


# --- choosing the trial -----------------------------------------------------------------------------


def _checkpoint_file(value: str | None, run_dir: Location) -> str | None:
    """The recorded checkpoint path or URI if it exists (as written, or relative to the run folder)."""
    if not value:
        return None
    for candidate in (location(value), run_dir / value):
        if candidate.is_file():
            return str(candidate)
    return None


def best_trial(run_dir: str | os.PathLike | Location, metric: str = "select_psnr", mode: str | None = None) -> dict[str, Any]:
    """The trials-table row with the highest ``best_<metric>`` among finished trials with a checkpoint
    (of one training ``mode`` when given)."""
    check_metric(metric)
    run_dir = location(run_dir, "RUN_DIR")
    trials = read_table([run_dir], "trials")
    rows = [
        {**row, "checkpoint": _checkpoint_file(row["best_checkpoint_path"], run_dir)}
        for row in trials.filter(pl.col("status").is_in(FINISHED)).to_dicts()
    ]
    rows = [r for r in rows if r["checkpoint"] and r[f"best_{metric}"] is not None and mode in (None, r["mode"])]
    if not rows:
        statuses = ", ".join(f"{s} x{n}" for s, n in trials["status"].value_counts().iter_rows())
        raise NoFinishedTrialError(
            f"nothing to promote in {run_dir}: no{'' if mode is None else ' ' + mode} trial finished (TERMINATED or "
            f"STOPPED) with a checkpoint on disk and a {metric}; trial statuses: {statuses}"
        )
    # max keeps the first of equals: ties go to the smaller trial id, whatever the file order.
    best = max(sorted(rows, key=lambda r: r["trial_id"]), key=lambda r: r[f"best_{metric}"])
    best["hyperparameters"] = {p: best[p] for p in searched_params(trials)}
    return best


# --- re-evaluation ----------------------------------------------------------------------------------


def _dataset_root(root: str | None) -> str | None:
    """A relative root as the search saw it: from the working folder, else from the repository."""
    if root is None or Path(root).is_absolute() or Path(root).exists():
        return root
    return str(REPO_ROOT / root) if (REPO_ROOT / root).exists() else root


def rebuild_data(state: dict[str, Any]) -> tuple[PairIndex, Splits, list[int]]:
    """The dataset, its three fixed sets and the selection images scored each epoch, from the checkpoint's config.

    Refuses data that changed since. Runs saved before ``dataset.select_images`` existed
    scored the whole selection set.
    """
    ds = state["config"]["dataset"]
    index = load_dataset(ds["layout"], _dataset_root(ds["root"]), skip_bad=ds["skip_bad"], max_side=ds["max_side"],
                         decoded_cache=decoded_cache_dir(ds.get("decoded_cache", False)))
    splits = split_by_scene(index, select_fraction=ds["select_fraction"], test_fraction=ds["test_fraction"],
                            seed=ds["split_seed"])
    recorded = state["data"]["splits"]
    for name in ("select", "test"):
        if getattr(splits, name) != recorded[name]:
            raise ValueError(
                f"the {name} set rebuilt from dataset {ds['name']!r} (layout {ds['layout']}, root {ds['root']}) "
                "differs from the one the trial was trained with: the data changed since the search"
            )
    scored = select_subset(index, splits.select, ds.get("select_images"), ds["split_seed"])
    if scored != state["data"].get("select_scored", scored):
        raise ValueError(f"the selection images rebuilt from dataset {ds['name']!r} differ from the ones the trial "
                         "scored each epoch: the data changed since the search")
    return index, splits, scored


def _scores(model: torch.nn.Module, index: PairIndex, indices: list[int], device: torch.device,
            max_side: int | None) -> dict[str, float]:
    # The same whole-image scoring as Trainer.evaluate, so the selection value can be compared.
    scores = score_pairs(model, index, indices, device, max_side=max_side)
    return {"psnr": sum(scores["psnr"]) / len(indices), "ssim": sum(scores["ssim"]) / len(indices),
            "images": len(indices)}


def _selection_check(trial: dict[str, Any], measured: dict[str, float]) -> dict[str, Any]:
    recorded = {"psnr": trial["best_select_psnr"], "ssim": trial["best_select_ssim"]}
    matches = all(abs(measured[k] - recorded[k]) <= TOLERANCE[k] for k in TOLERANCE if recorded[k] is not None)
    if not matches:
        warnings.warn(
            f"re-evaluating {trial['checkpoint']} on the selection set gives PSNR {measured['psnr']:.3f} / SSIM "
            f"{measured['ssim']:.4f}, but the search recorded {recorded['psnr']} / {recorded['ssim']}; "
            "the checkpoint may not be the trial's best epoch", stacklevel=3,
        )
    return {"recorded": recorded, "measured": measured, "tolerance": TOLERANCE, "matches": matches}


# --- refit ------------------------------------------------------------------------------------------


def refit_checkpoint(state: dict[str, Any], index: PairIndex, path: Location, device: str = "auto") -> dict[str, Any]:
    """Train ``state``'s configuration again on the whole train pool, for ``state['epoch']`` epochs, into ``path``.

    Returns what the card records about it. The dataset ``index`` must be the one the trial
    trained on (``rebuild_data`` checks that), so the train pool is the trial's.
    """
    # The only place promotion trains. The trainer is imported here, not at the top, because
    # promotion belongs with the inference side (pipeline.models, evaluate, dehaze), which must
    # not load the training engine: a plain promotion never does, only --refit.
    from ..trainer import Trainer

    cfg = saved_config(state["config"])
    cfg.device, cfg.train.epochs = device, state["epoch"]
    if cfg.mode == "bild":  # cross-fitting: the validation fold rotates, so every pool scene is trained on
        cfg.train.val_rotation = True
    trainer = Trainer(cfg, index)
    start = time.perf_counter()
    while trainer.epoch < cfg.train.epochs:
        trainer.train_epoch()
    trainer.save(path)
    return {"checkpoint": str(path), "epochs": trainer.epoch, "steps": trainer.step, "mode": cfg.mode,
            "val_rotation": bool(cfg.train.val_rotation) and cfg.mode == "bild",
            "train_pool_pairs": len(trainer.splits.train_pool), "seconds": time.perf_counter() - start}


# --- writing ----------------------------------------------------------------------------------------


def _next_version(backbone_dir: Location) -> str:
    numbers = [int(m[1]) for p in backbone_dir.children() if (m := re.fullmatch(r"v(\d+)", p.name))]
    return f"v{max(numbers, default=0) + 1}"


def _git_commit() -> str | None:
    try:
        done = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def _promoted(card: dict[str, Any]) -> bool:
    return card.get("version") is not None and "experiment" in (card.get("source") or {})


def _index_row(card: dict[str, Any], folder: Location) -> dict[str, Any]:
    # Cards written before the per-epoch subset existed scored the whole selection set as "measured".
    source, test = card["source"], card["test"]
    sel = card["selection"].get("full", card["selection"]["measured"])
    return {
        "backbone": card["backbone"], "version": card["version"], "preset": card["preset"], "path": str(folder),
        "experiment": source["experiment"], "trial_id": source["trial_id"], "mode": card["config"]["mode"],
        **{name: card["hyperparameters"].get(name) for name in HYPERPARAMS},
        "selection_metric": card["selection"]["metric"], "select_psnr": sel["psnr"], "select_ssim": sel["ssim"],
        "test_psnr": test["psnr"], "test_ssim": test["ssim"], "refit": card.get("refit") is not None,
        "dataset": card["data"]["name"],
        "data_fingerprint": card["data"]["fingerprint"], "code_version": card["code"]["version"],
        "git_commit": card["code"]["git_commit"], "promoted_at": card["promoted_at"],
    }


def write_index(models_dir: str | os.PathLike | Location) -> Location:
    """Rebuild ``index.parquet`` from every card under ``models_dir`` (so it can never drift from them)."""
    models_dir = location(models_dir, "--models-dir")
    cards = [(read_card(c), c.parent) for c in models_dir.files()
             if c.name == CARD_FILE and re.fullmatch(r"v\d+", c.parent.name) and c.parent.parent.parent == models_dir]
    # Only promotions are indexed: a model imported or converted into a v<N> folder has no trial to list.
    rows = [_index_row(card, folder) for card, folder in cards if _promoted(card)]
    rows.sort(key=lambda r: (r["backbone"], int(r["version"][1:])))
    return write_rows(models_dir / "index.parquet", rows, INDEX_SCHEMA)


def _provenance(trial: dict[str, Any], state: dict[str, Any], index: PairIndex, check: dict[str, Any],
                select: dict[str, float], test: dict[str, float], metric: str, version: str, run_dir: Location,
                refit: dict[str, Any] | None) -> dict[str, Any]:
    """The card's fields beyond the architecture: where the model came from and how well it did."""
    cfg = state["config"]
    return {
        "version": version,
        "config": cfg,
        "hyperparameters": trial["hyperparameters"],
        "selection": {"metric": metric, **check, "full": select,
                      "note": f"measured: the {check['measured']['images']} selection images the search scored each "
                              "epoch (dataset.select_images), re-scored to check the recorded value; full: all "
                              f"{select['images']} selection images"},
        "test": test,
        "refit": refit,
        "source": {"run_dir": str(run_dir), "experiment": trial["experiment"], "trial_id": trial["trial_id"],
                   "status": trial["status"], "checkpoint": trial["checkpoint"], "epoch": trial["epoch"]},
        "data": {"name": cfg["dataset"]["name"], "layout": cfg["dataset"]["layout"], "root": cfg["dataset"]["root"],
                 "pairs": len(index), "fingerprint": index.fingerprint},
        "code": {"version": __version__, "git_commit": _git_commit()},
        "promoted_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


def _reserve_version(backbone_dir: Location) -> Location:
    """The next free v<N> folder (created on a local disk); a version is never overwritten."""
    folder = backbone_dir / _next_version(backbone_dir)
    if folder.is_local:
        backbone_dir.local.mkdir(parents=True, exist_ok=True)
        folder.local.mkdir()  # FileExistsError if a concurrent promotion took this number first
    return folder


def _write_version(folder: Location, state: dict[str, Any], provenance: dict[str, Any]) -> dict[str, Any]:
    """model.safetensors and card.json into ``folder``, then LATEST beside it and the index above it."""
    card = save_model(folder, state["backbone"], state["models"]["backbone"], provenance)
    (folder.parent / LATEST_FILE).write_text(folder.name + "\n")
    write_index(folder.parent.parent)
    return card


def promote(
    run_dir: str | os.PathLike | Location,
    models_dir: str | os.PathLike | Location = "models",
    *,
    metric: str = "select_psnr",
    device: str = "auto",
    refit: bool = False,
) -> dict[str, Any]:
    """Promote the best finished trial of ``run_dir`` into ``models_dir``; returns its card (plus ``path``).

    ``refit`` promotes the trial's configuration trained again on the whole train pool instead
    of the trial's own checkpoint (see the module's docstring).
    """
    run_dir = location(run_dir, "RUN_DIR")
    trial = best_trial(run_dir, metric)
    state = load_checkpoint(trial["checkpoint"])
    trial["epoch"] = state["epoch"]
    # Built exactly as a user will load it, so the numbers on the card are the promoted model's.
    model, _ = load_model(trial["checkpoint"])
    index, splits, scored = rebuild_data(state)
    dev = resolve_device(device)
    eval_side = state["config"]["dataset"]["eval_max_side"]
    check = _selection_check(trial, _scores(model.to(dev), index, scored, dev, eval_side))
    select = check["measured"] if scored == splits.select else _scores(model, index, splits.select, dev, eval_side)
    refitted = None
    if refit:
        path = run_dir / "refit" / trial["trial_id"] / "checkpoint.pt"
        refitted = refit_checkpoint(state, index, path, device)
        state, (model, _) = load_checkpoint(path), load_model(path)
    test = _scores(model.to(dev), index, splits.test, dev, eval_side)
    folder = _reserve_version(location(models_dir, "--models-dir") / state["backbone"]["name"])
    card = _write_version(folder, state, _provenance(trial, state, index, check, select, test, metric, folder.name,
                                                     run_dir, refitted))
    return {**card, "path": str(folder)}


def promotion_summary(card: dict[str, Any]) -> str:
    """What a promotion did, in three lines for the terminal."""
    src, sel, test = card["source"], card["selection"], card["test"]
    rec, meas, full = sel["recorded"], sel["measured"], sel["full"]
    verdict = "matches the search" if sel["matches"] else "DOES NOT match the search"
    return "\n".join([
        f"promoted {src['experiment']}/{src['trial_id']} (mode {card['config']['mode']}, epoch {src['epoch']}, "
        f"best by {sel['metric']}) -> {card['path']}",
        f"  selection, as scored each epoch ({meas['images']} images): PSNR {meas['psnr']:.3f} dB "
        f"(search: {rec['psnr']:.3f}), SSIM {meas['ssim']:.4f} (search: {rec['ssim']:.4f}); {verdict}",
        f"  selection, whole set ({full['images']} images): PSNR {full['psnr']:.3f} dB, SSIM {full['ssim']:.4f}",
        *([f"  refit: {card['refit']['mode']} on the whole train pool ({card['refit']['train_pool_pairs']} pairs"
           f"{', validation fold rotating' if card['refit']['val_rotation'] else ''}) for {card['refit']['epochs']} "
           f"epochs -> {card['refit']['checkpoint']}"] if card.get("refit") else []),
        f"  test ({test['images']} images): PSNR {test['psnr']:.3f} dB, SSIM {test['ssim']:.4f}"
        + (" (the refit model)" if card.get("refit") else ""),
    ])
