"""Does the reweighting policy follow a known reward?

BILD trains as usual, but the reward d_i is replaced by the clear crop's mean brightness plus
noise. Prints, per seed, the in-batch correlation of log w with brightness over each fifth
of the run and over the last 100 steps: near +1 means the policy follows its reward.

    python experiments/policy_check.py --seeds 0,1,2 backbone=ffanet backbone.preset=tiny \
        train.steps_per_epoch=300 dataset.crop=32 train.val_fraction=0.3 train.val_batch_size=10
"""

from __future__ import annotations

import argparse
import json
from typing import Any

import numpy as np
import torch

from pipeline.bild import CropBatch, StepStats
from pipeline.config import compose_config, paper_step_overrides
from pipeline.trainer import Trainer

__all__ = ["main", "policy_follows_reward"]


def _in_batch_corr(a: np.ndarray, b: np.ndarray) -> float:
    if a.std() < 1e-9 or b.std() < 1e-9:
        return float("nan")  # uniform weights (the first step) say nothing yet
    return float(np.corrcoef(a, b)[0, 1])


def policy_follows_reward(overrides: list[str], *, seed: int = 0, noise: float = 3.0, tail: int = 100) -> dict[str, Any]:
    """Train ``train.steps_per_epoch`` BILD steps on the brightness reward; report how well w follows it."""
    noise_rng = torch.Generator().manual_seed(seed)

    def brightness_reward(
        backbone: object, old_params: object, grad_val: object, batch: CropBatch, crop_losses: object
    ) -> tuple[torch.Tensor, str]:  # pipeline.bild.AlignmentFn: it stands in for the alignment d_i
        brightness = batch.clear.mean((1, 2, 3))
        jitter = torch.randn(brightness.shape, generator=noise_rng).to(brightness.device)
        return brightness + noise * brightness.std() * jitter, "brightness"

    # The paper's step unless the overrides say otherwise: the check is of the policy itself.
    cfg = compose_config([f"seed={seed}", "train.epochs=1", "progress=false", "mode=bild", *paper_step_overrides(),
                          *overrides])
    trainer = Trainer(cfg, alignment=brightness_reward)
    corrs: list[float] = []

    def record(batch: CropBatch, stats: StepStats) -> None:
        corrs.append(_in_batch_corr(stats.crop_weights.log().cpu().numpy(), batch.clear.mean((1, 2, 3)).cpu().numpy()))

    trainer.train_epoch(on_step=record)
    trainer.close()
    steps = len(corrs)
    blocks = [float(np.nanmean(corrs[lo : lo + steps // 5])) for lo in range(0, steps - steps // 5 + 1, steps // 5)]
    return {"overrides": overrides, "seed": seed, "noise": noise, "corr_tail": float(np.nanmean(corrs[-tail:])),
            "corr_by_fifth": blocks}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seeds", default="0", help="comma-separated seeds; one row each")
    p.add_argument("--noise", type=float, default=3.0, help="reward noise, in units of the batch's brightness spread")
    p.add_argument("--json", action="store_true")
    p.add_argument("overrides", nargs="*", help="Hydra overrides of the training config")
    a = p.parse_args()
    rows = [policy_follows_reward(a.overrides, seed=int(s), noise=a.noise) for s in a.seeds.split(",")]
    if a.json:
        print(json.dumps(rows))
        return
    print(f"{'seed':>4}  corr(log w, brightness) by fifth of the run        last 100 steps")
    for r in rows:
        print(f"{r['seed']:>4}  " + " ".join(f"{c:+.2f}" for c in r["corr_by_fifth"]) + f"   {r['corr_tail']:+.2f}")


if __name__ == "__main__":
    main()
