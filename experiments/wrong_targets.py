"""Does BILD learn to down-weight wrong targets?

30% of the pairs get the clear image of another scene as their target (anywhere in the
train pool, or with ``--corrupt train`` only in BILD's training split). BILD and plain
training run on the same corrupted data, steps and seed; prints the reweighter's mean weight
on wrong vs right pairs, both runs' selection-set PSNR, and the reward's AUC (the chance that
a right crop's alignment beats a wrong one's in the same batch; 0.5 means no signal).
``--bounds`` adds two plain runs on BILD's training split: with uniform weights and with
every wrong pair dropped (a perfect reweighter).

    python experiments/wrong_targets.py --seeds 0,1,2 --bounds backbone=ffanet backbone.preset=tiny \
        train.steps_per_epoch=300 dataset.crop=32 train.val_fraction=0.3 train.val_batch_size=10 [--json]
"""

from __future__ import annotations

import argparse
import copy
import json
import math
from typing import Any

import numpy as np
import torch

from pipeline.bild import CropBatch, StepStats, crop_log_weights
from pipeline.config import compose_config, paper_step_overrides
from pipeline.data import CropSampler, PairIndex
from pipeline.trainer import Trainer, load_index

__all__ = ["CORRUPTIONS", "corrupt_targets", "main", "mean_weights", "reward_auc", "run_wrong_targets"]

CORRUPTIONS = ("pool", "train")


def corrupt_targets(index: PairIndex, indices: list[int], fraction: float, seed: int) -> tuple[PairIndex, list[int]]:
    """A copy of ``index`` in which ``fraction`` of ``indices`` point at another scene's clear image."""
    rng = np.random.default_rng(seed)
    wrong = sorted(rng.choice(indices, size=round(fraction * len(indices)), replace=False).tolist())
    corrupted = copy.copy(index)
    corrupted.clear_of = index.clear_of.copy()
    for i in wrong:
        others = sorted(int(c) for c in set(index.clear_of.tolist()) if c != index.clear_of[i])
        corrupted.clear_of[i] = int(rng.choice(others))
    return corrupted, wrong


@torch.no_grad()
def mean_weights(trainer: Trainer, wrong: list[int], batches: int = 16, seed: int = 0) -> tuple[float, float]:
    """Mean crop weight on wrong and on right training pairs, scored in batches of 3 wrong + 7 right."""
    rng = np.random.default_rng(seed)
    wrong_set = set(wrong)
    crop = trainer.cfg.dataset.crop
    samplers = [CropSampler(trainer.index, [i for i in trainer.train_idx if (i in wrong_set) == is_wrong], crop)
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
    # The paper's step unless the overrides say otherwise: the study is of the policy itself.
    common = [f"seed={seed}", "train.epochs=1", "progress=false", *paper_step_overrides(), *overrides]
    index = load_index(compose_config(common))
    bild_split = Trainer(compose_config([*common, "mode=bild"]), index)
    targets = bild_split.splits.train_pool if corrupt == "pool" else bild_split.train_idx
    index, wrong = corrupt_targets(index, targets, fraction, seed)
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
        trainer = Trainer(compose_config([*common, f"mode={mode}"]), index, train_pairs=pairs)
        stats = trainer.train_epoch(on_step=record if name == "bild" else None)
        trainer.close()
        result[f"{name}_select_psnr"] = trainer.evaluate("select")["select_psnr"]
        if name == "bild":
            result["bild_ess"] = stats["ess"]
            # With fraction 0 (the uncorrupted control) there is no wrong pair to weigh.
            result["weight_wrong"], result["weight_right"] = mean_weights(trainer, wrong) if wrong else (math.nan,) * 2
            result["reward_auc"] = reward_auc(rewards)
    return result


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seeds", default="0", help="comma-separated seeds; one row each")
    p.add_argument("--fraction", type=float, default=0.3)
    p.add_argument("--corrupt", choices=CORRUPTIONS, default="pool", help="where the wrong targets go")
    p.add_argument("--bounds", action="store_true", help="also train plain with uniform and with perfect weights")
    p.add_argument("--json", action="store_true")
    p.add_argument("overrides", nargs="*", help="Hydra overrides of the training config")
    a = p.parse_args()
    rows = [
        run_wrong_targets(a.overrides, fraction=a.fraction, seed=int(s), corrupt=a.corrupt, bounds=a.bounds)
        for s in a.seeds.split(",")
    ]
    if a.json:
        print(json.dumps(rows))
        return
    print(f"{'seed':>4} {'plain':>6} {'bild':>6} {'uniform':>8} {'oracle':>7} {'w wrong':>8} {'w right':>8} "
          f"{'ESS':>5} {'reward AUC':>10}   (PSNR in dB on the selection set)")
    for r in rows:
        print(f"{r['seed']:>4} {r['plain_select_psnr']:>6.2f} {r['bild_select_psnr']:>6.2f} "
              f"{r.get('uniform_select_psnr', math.nan):>8.2f} {r.get('oracle_select_psnr', math.nan):>7.2f} "
              f"{r['weight_wrong']:>8.3f} {r['weight_right']:>8.3f} {r['bild_ess']:>5.2f} {r['reward_auc']:>10.3f}")


if __name__ == "__main__":
    main()
