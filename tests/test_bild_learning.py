"""BILD learns something checkable: it down-weights training pairs whose target is wrong.

30% of the training pool's pairs get the clear image of another scene as their target
(pipeline/wrong_targets.py). After 300 CPU steps the reweighter's mean weight on those
pairs must be clearly below its mean weight on the right ones.
"""

from __future__ import annotations

from pipeline.wrong_targets import run_wrong_targets

# A validation split that holds enough scenes (30%) and batches of m = 10 validation crops
# make g_v representative; with m = 4 crops from 10% of 57 scenes the per-crop alignment
# mostly measures likeness to a handful of validation scenes (README, "Does it learn?").
SETTINGS = [
    "backbone=ffanet",
    "backbone.preset=tiny",
    "train.steps_per_epoch=300",
    "dataset.crop=32",
    "train.val_fraction=0.3",
    "train.val_batch_size=10",
]


def test_reweighter_down_weights_wrong_targets() -> None:
    result = run_wrong_targets(SETTINGS, fraction=0.3, seed=0)
    print(result)  # the PSNR of both modes is measured too; see benchmarks/wrong_targets.py
    assert result["weight_wrong"] < 0.85 * result["weight_right"], result
    assert result["bild_ess"] > 2.0, "the bounded scores must keep the weights off a few crops"
