"""BILD: bi-level patch reweighting for supervised dehazing (plain PyTorch, no Ray).

``step.py`` is the update, stage by stage beside the paper's eq. 5-7; ``alignment.py``
estimates the per-crop alignment d_i; ``reweighter.py`` is the policy f_phi.
"""

from .alignment import ESTIMATORS, alignment_fd, alignment_jvp, alignment_loop, per_crop_l1
from .reweighter import WEIGHTINGS, Reweighter, build_reweighter, crop_log_weights
from .step import (
    MODES,
    AlignmentFn,
    REGULARISERS,
    REWARD_NORMS,
    BildConfig,
    BildNets,
    CropBatch,
    NonFiniteLossError,
    StepStats,
    bild_step,
    crop_rewards,
    entropy_grad,
    mix_log_weights,
    policy_loss,
    regulariser_pull,
    step_mix,
)

__all__ = [
    "AlignmentFn",
    "ESTIMATORS",
    "MODES",
    "REGULARISERS",
    "REWARD_NORMS",
    "WEIGHTINGS",
    "BildConfig",
    "BildNets",
    "CropBatch",
    "NonFiniteLossError",
    "Reweighter",
    "StepStats",
    "alignment_fd",
    "alignment_jvp",
    "alignment_loop",
    "bild_step",
    "build_reweighter",
    "crop_log_weights",
    "crop_rewards",
    "entropy_grad",
    "mix_log_weights",
    "per_crop_l1",
    "policy_loss",
    "regulariser_pull",
    "step_mix",
]
