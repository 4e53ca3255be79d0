"""The wrong-target experiment: does BILD learn to down-weight training pairs whose target is wrong?

A fraction of the pairs get the clear image of another scene as target: either anywhere in
the train pool (``corrupt="pool"``, the validation split is as noisy as the rest) or only in
BILD's training split (``corrupt="train"``, a trusted validation split). BILD and plain
training then run on the same corrupted data, steps and seed. The result holds:

- the reweighter's mean weight on wrong and on right pairs, and both runs' selection PSNR;
- how informative BILD's reward was: over every step, the chance that a right crop's
  alignment d_i beats a wrong crop's in the same batch (``reward_auc``, 0.5 = no signal);
- with ``bounds=True``, two plain runs that bracket what reweighting can do on BILD's
  training split: uniform weights (``uniform_select_psnr``) and a perfect reweighter
  that drops every wrong pair (``oracle_select_psnr``).

Used by ``tests/test_bild_learning.py`` and ``benchmarks/wrong_targets.py``.
"""

from __future__ import annotations

import copy
import math
from typing import Any

import numpy as np
import torch

from .bild import CropBatch, StepStats, crop_log_weights
from .config import compose_config
from .data import CropSampler, PairStore
from .train import Trainer, load_store

__all__ = ["CORRUPTIONS", "corrupt_targets", "mean_weights", "reward_auc", "run_wrong_targets"]

CORRUPTIONS = ("pool", "train")


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


def reward_auc(batches: list[tuple[np.ndarray, np.ndarray]]) -> float:
    """P(d_right > d_wrong) over (right, wrong) crop pairs of the same batch; ties count half.

    Comparing within a batch only keeps the steps' different reward scales out of it.
    ``batches`` holds (alignments, is_wrong) per step.
    """
    wins = total = 0.0
    for align, is_wrong in batches:
        right, wrong = align[~is_wrong], align[is_wrong]
        diff = right[:, None] - wrong[None, :]
        wins += (diff > 0).sum() + 0.5 * (diff == 0).sum()
        total += diff.size
    return float(wins / total) if total else float("nan")


def run_wrong_targets(
    overrides: list[str], *, fraction: float = 0.3, seed: int = 0, corrupt: str = "pool", bounds: bool = False
) -> dict[str, Any]:
    """Train plain and bild for ``train.steps_per_epoch`` steps on the same corrupted data."""
    if corrupt not in CORRUPTIONS:
        raise ValueError(f"corrupt={corrupt!r} is not valid; expected one of {', '.join(CORRUPTIONS)}")
    common = [f"seed={seed}", "train.epochs=1", "progress=false", *overrides]
    store = load_store(compose_config(common))
    bild_split = Trainer(compose_config([*common, "mode=bild"]), store)
    targets = bild_split.splits.train_pool if corrupt == "pool" else bild_split.train_idx
    store, wrong = corrupt_targets(store, targets, fraction, seed)
    wrong_set = set(wrong)
    result: dict[str, Any] = {
        "overrides": overrides,
        "seed": seed,
        "wrong_fraction": fraction,
        "corrupt": corrupt,
        "wrong_in_val": len(wrong_set & set(bild_split.val_idx)),  # wrong pairs BILD's outer loop sees
    }

    runs: dict[str, tuple[str, list[int] | None]] = {"plain": ("plain", None), "bild": ("bild", None)}
    if bounds:
        d_t = bild_split.train_idx
        runs["uniform"] = ("plain", d_t)
        runs["oracle"] = ("plain", [i for i in d_t if i not in wrong_set])
    rewards: list[tuple[np.ndarray, np.ndarray]] = []

    def record(batch: CropBatch, stats: StepStats) -> None:
        is_wrong = np.array([p in wrong_set for p in batch.pairs])
        rewards.append((stats.crop_align.cpu().numpy(), is_wrong))

    for name, (mode, pairs) in runs.items():
        trainer = Trainer(compose_config([*common, f"mode={mode}"]), store, train_pairs=pairs)
        stats = trainer.train_epoch(on_step=record if name == "bild" else None)
        result[f"{name}_select_psnr"] = trainer.evaluate("select")["select_psnr"]
        if name == "bild":
            result["bild_ess"] = stats["ess"]
            # With fraction 0 (the uncorrupted control) there is no wrong pair to weigh.
            result["weight_wrong"], result["weight_right"] = mean_weights(trainer, wrong) if wrong else (math.nan,) * 2
            result["reward_auc"] = reward_auc(rewards)
    return result
