"""Builders for "after the search" tests: a small search run made the real way, without Ray.

Each trial is a real `pipeline.trainer.Trainer` on the built-in data (tiny AOD-Net, 32 px
crops, 3 steps an epoch), checkpointed as the Ray trainable does
(`<trial_dir>/checkpoint_XXXXXX/checkpoint.pt`) and reported through `pipeline.results`.
"""

from __future__ import annotations

import math
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from pipeline.config import compose_config
from pipeline.data import PairIndex
from pipeline.results import STEP_METRICS, write_epoch_row, write_trial_row
from pipeline.trainer import Trainer, load_index

EPOCHS = 2
TINY = ["train.epochs=2", "train.steps_per_epoch=3", "dataset.crop=32", "backbone=aodnet",
        "backbone.preset=tiny", "progress=false", "device=cpu"]

# (trial id, mode, alpha, inner_lr, outer_lr, val_fraction): the searched values of each trial.
TRIALS = (
    ("t0-plain", "plain", 0.1, 3e-4, 0.01, 0.1),
    ("t1-plain", "plain", 0.1, 3e-3, 0.01, 0.1),
    ("t2-bild", "bild", 0.01, 1e-3, 0.005, 0.2),
    ("t3-bild", "bild", 0.5, 2e-3, 0.03, 0.1),
    ("t4-bild", "bild", 0.1, 5e-4, 0.01, 0.3),
)


def trial_config(mode: str, alpha: float, inner_lr: float, outer_lr: float, val_fraction: float) -> Any:
    return compose_config([*TINY, f"mode={mode}", f"bild.alpha={alpha}", f"train.inner_lr={inner_lr}",
                           f"train.outer_lr={outer_lr}", f"train.val_fraction={val_fraction}"])


def _identity(experiment: str, trial_id: str, cfg: Any) -> dict[str, Any]:
    # As pipeline.tune writes them: plain training searches only the inner lr, the rest stay empty.
    bild = cfg.mode != "plain"
    return {
        "experiment": experiment, "trial_id": trial_id, "backbone": cfg.backbone.name,
        "preset": cfg.backbone.preset, "mode": cfg.mode, "dataset": cfg.dataset.name,
        "inner_lr": cfg.train.inner_lr, "alpha": cfg.bild.alpha if bild else None,
        "outer_lr": cfg.train.outer_lr if bild else None, "val_fraction": cfg.train.val_fraction if bild else None,
    }


def run_trial(run_dir: Path, trial_id: str, cfg: Any, index: PairIndex) -> dict[str, Any]:
    """Train EPOCHS epochs, checkpoint and report each; write the trial row; return it."""
    experiment, trial_dir = run_dir.name, run_dir / trial_id
    ident = _identity(experiment, trial_id, cfg)
    trainer, start = Trainer(cfg, index), time.perf_counter()
    hazy = trainer.hazy_reference()["hazy_psnr"]
    best: dict[str, Any] = {"select_psnr": -math.inf}
    for _ in range(EPOCHS):
        metrics = {**trainer.train_epoch(), **trainer.evaluate("select")}
        ckpt = trial_dir / f"checkpoint_{trainer.epoch - 1:06d}" / "checkpoint.pt"
        trainer.save(ckpt, metrics=metrics)
        row = {**ident, "epoch": trainer.epoch, "hazy_psnr": hazy, "device": "cpu", "node": "test",
               "status": "RUNNING", "checkpoint_path": str(ckpt), "wall_time_s": time.perf_counter() - start,
               "timestamp": datetime.now(timezone.utc),
               **{k: metrics.get(k) for k in ("select_psnr", "select_ssim", "epoch_seconds", *STEP_METRICS)}}
        write_epoch_row(run_dir, row)
        if metrics["select_psnr"] > best["select_psnr"]:
            best = {**metrics, "epoch": trainer.epoch, "checkpoint": str(ckpt)}
    trainer.close()
    trial = {**ident, "status": "TERMINATED", "error": None, "epochs": trainer.epoch, "best_epoch": best["epoch"],
             "best_select_psnr": best["select_psnr"], "best_select_ssim": best["select_ssim"],
             "last_select_psnr": metrics["select_psnr"], "last_select_ssim": metrics["select_ssim"],
             "wall_time_s": time.perf_counter() - start, "best_checkpoint_path": best["checkpoint"],
             "trial_dir": str(trial_dir), "updated_at": datetime.now(timezone.utc)}
    write_trial_row(run_dir, trial)
    return trial


def build_search_run(run_dir: Path) -> Path:
    """Five finished trials (2 plain, 3 bild) plus one that errored before its first epoch."""
    cfg = trial_config(*TRIALS[0][1:])  # plain: the errored trial below is one too
    index = load_index(cfg)
    for trial_id, *values in TRIALS:
        run_trial(run_dir, trial_id, trial_config(*values), index)
    crashed = {**_identity(run_dir.name, "t5-error", cfg), "status": "ERROR", "error": "RuntimeError: boom",
               "epochs": 0, "trial_dir": str(run_dir / "t5-error"), "updated_at": datetime.now(timezone.utc)}
    write_trial_row(run_dir, crashed)
    return run_dir


def build_failed_run(run_dir: Path) -> Path:
    """A run whose every trial errored: nothing to promote."""
    cfg = trial_config(*TRIALS[0][1:])
    for k in range(2):
        write_trial_row(run_dir, {**_identity(run_dir.name, f"bad{k}", cfg), "status": "ERROR",
                                  "error": "NonFiniteLossError", "epochs": 1})
    return run_dir
