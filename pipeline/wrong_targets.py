"""The wrong-target experiment: does BILD learn to down-weight training pairs whose target is wrong?

A fraction of the training pool's pairs get the clear image of another scene as target.
BILD and plain training then run on the same corrupted data, steps and seed; the result
holds the reweighter's mean weight on wrong and on right pairs and both runs' selection PSNR.
Used by ``tests/test_bild_learning.py`` and ``benchmarks/wrong_targets.py``.
"""

from __future__ import annotations

import copy
from typing import Any

import numpy as np
import torch

from .bild import crop_log_weights
from .config import compose_config
from .data import CropSampler, PairStore
from .train import Trainer, load_store

__all__ = ["corrupt_targets", "mean_weights", "run_wrong_targets"]


def corrupt_targets(store: PairStore, indices: list[int], fraction: float, seed: int) -> tuple[PairStore, list[int]]:
    """A copy of ``store`` in which ``fraction`` of ``indices`` point at another scene's clear image."""
    rng = np.random.default_rng(seed)
    wrong = sorted(rng.choice(indices, size=round(fraction * len(indices)), replace=False).tolist())
    corrupted = copy.copy(store)
    corrupted.clear_of = list(store.clear_of)
    for i in wrong:
        others = sorted(c for c in set(store.clear_of) if c != store.clear_of[i])
        corrupted.clear_of[i] = int(rng.choice(others))
    return corrupted, wrong


@torch.no_grad()
def mean_weights(trainer: Trainer, wrong: list[int], batches: int = 16, seed: int = 0) -> tuple[float, float]:
    """Mean crop weight on wrong and on right training pairs, scored in batches of 3 wrong + 7 right."""
    rng = np.random.default_rng(seed)
    wrong_set = set(wrong)
    crop = trainer.cfg.dataset.crop
    samplers = [CropSampler(trainer.store, [i for i in trainer.train_idx if (i in wrong_set) == is_wrong], crop)
                for is_wrong in (True, False)]
    sums = np.zeros(2)
    for _ in range(batches):
        (hw, cw), (hr, cr) = samplers[0].sample(3, rng), samplers[1].sample(7, rng)
        hazy, clear = torch.cat([hw, hr]).to(trainer.device), torch.cat([cw, cr]).to(trainer.device)
        scores = trainer.nets.reweighter(hazy, clear)
        w = crop_log_weights(scores, temperature=trainer.bild_cfg.temperature, kind=trainer.bild_cfg.weighting).exp()
        sums += [w[:3].mean().item(), w[3:].mean().item()]
    return tuple(sums / batches)


def run_wrong_targets(overrides: list[str], *, fraction: float = 0.3, seed: int = 0) -> dict[str, Any]:
    """Train plain and bild for ``train.steps_per_epoch`` steps on the same corrupted data."""
    common = [f"seed={seed}", "train.epochs=1", "progress=false", *overrides]
    store = load_store(compose_config(common))
    plain_cfg = compose_config([*common, "mode=plain"])
    store, wrong = corrupt_targets(store, Trainer(plain_cfg, store).splits.train_pool, fraction, seed)
    result: dict[str, Any] = {"overrides": overrides, "seed": seed, "wrong_fraction": fraction}
    for mode in ("plain", "bild"):
        trainer = Trainer(compose_config([*common, f"mode={mode}"]), store)
        stats = trainer.train_epoch()
        result[f"{mode}_select_psnr"] = trainer.evaluate("select")["select_psnr"]
        if mode == "bild":
            result["bild_ess"] = stats["ess"]
            result["weight_wrong"], result["weight_right"] = mean_weights(trainer, wrong)
    return result
