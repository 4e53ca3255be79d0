"""Does the reweighting policy follow its reward? A check that takes the reward out of the question.

BILD's reward (the alignment d_i) is weak and changes with the backbone, so when the weights
come out wrong it is unclear whether the reward or the policy failed. This check trains BILD
as usual but replaces d_i with a known function of the crop, its clear image's mean
brightness, plus Gaussian noise of ``noise`` times the batch's brightness spread. A policy
that follows its reward ends with weights that rise with brightness: the in-batch
correlation of log w_i with brightness, averaged over the last ``tail`` steps, is near +1.

Used by ``tests/test_bild_policy.py`` and ``benchmarks/policy_follows_reward.py``.
"""

from __future__ import annotations

from typing import Any
from unittest import mock

import numpy as np
import torch

from .bild import CropBatch, StepStats
from .bild import step as bild_step_module
from .config import compose_config
from .train import Trainer

__all__ = ["policy_follows_reward"]


def _in_batch_corr(a: np.ndarray, b: np.ndarray) -> float:
    if a.std() < 1e-9 or b.std() < 1e-9:
        return float("nan")  # uniform weights (the first step) say nothing yet
    return float(np.corrcoef(a, b)[0, 1])


def policy_follows_reward(overrides: list[str], *, seed: int = 0, noise: float = 3.0, tail: int = 100) -> dict[str, Any]:
    """Train ``train.steps_per_epoch`` BILD steps on the brightness reward; report how well w follows it."""
    noise_rng = torch.Generator().manual_seed(seed)

    def brightness_reward(
        cfg: object, backbone: object, old_params: object, grad_val: object, batch: CropBatch, crop_losses: object
    ) -> tuple[torch.Tensor, str]:  # the signature of the alignment it stands in for
        brightness = batch.clear.mean((1, 2, 3))
        jitter = torch.randn(brightness.shape, generator=noise_rng).to(brightness.device)
        return brightness + noise * brightness.std() * jitter, "brightness"

    trainer = Trainer(compose_config([f"seed={seed}", "train.epochs=1", "progress=false", "mode=bild", *overrides]))
    corrs: list[float] = []

    def record(batch: CropBatch, stats: StepStats) -> None:
        corrs.append(_in_batch_corr(stats.crop_weights.log().cpu().numpy(), batch.clear.mean((1, 2, 3)).cpu().numpy()))

    with mock.patch.object(bild_step_module, "_alignment_with_fallback", brightness_reward):
        trainer.train_epoch(on_step=record)
    steps = len(corrs)
    blocks = [float(np.nanmean(corrs[lo : lo + steps // 5])) for lo in range(0, steps - steps // 5 + 1, steps // 5)]
    return {"overrides": overrides, "seed": seed, "noise": noise, "corr_tail": float(np.nanmean(corrs[-tail:])),
            "corr_by_fifth": blocks}
