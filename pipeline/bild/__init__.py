"""BILD: bi-level patch reweighting for supervised dehazing (plain PyTorch, no Ray).

``step.py`` is the update, stage by stage beside the paper's eq. 5-7; ``alignment.py``
estimates the per-crop alignment d_i; ``reweighter.py`` is the policy f_phi.
"""

from .alignment import (
    ALIGNMENT_SPACES,
    ESTIMATORS,
    adam_preconditioner,
    adam_step_jacobian,
    alignment_fd,
    alignment_jvp,
    alignment_loop,
    per_crop_l1,
)
from .reweighter import WEIGHTINGS, Reweighter, build_reweighter, crop_log_weights
from .step import (
    MODES,
    REWARDS,
    AlignmentFn,
    REGULARISERS,
    REWARD_NORMS,
    BildConfig,
    BildNets,
    CropBatch,
    NonFiniteLossError,
    StepStats,
    batch_wide_policy_loss,
    bild_step,
    crop_rewards,
    entropy_grad,
    mix_log_weights,
    policy_loss,
    regulariser_pull,
    step_mix,
)

__all__ = [
    "ALIGNMENT_SPACES",
    "AlignmentFn",
    "ESTIMATORS",
    "MODES",
    "REGULARISERS",
    "REWARDS",
    "REWARD_NORMS",
    "WEIGHTINGS",
    "BildConfig",
    "BildNets",
    "CropBatch",
    "NonFiniteLossError",
    "Reweighter",
    "StepStats",
    "adam_preconditioner",
    "adam_step_jacobian",
    "alignment_fd",
    "alignment_jvp",
    "alignment_loop",
    "batch_wide_policy_loss",
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
