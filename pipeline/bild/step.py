"""One BILD training step: bi-level patch reweighting, read beside the paper's eq. 5-7.

Symbols -> names:
  f_theta          ``nets.backbone``           the dehazer; theta_t its parameters after step t
  f_phi            ``nets.reweighter``         the reweighting policy
  s_i, w_i         ``scores``, ``crop_weights`` w = n * softmax(s / tau), mean weight 1
  l_i(theta)       ``crop_losses``             mean |f_theta(x_i) - y_i| of training crop i
  g_v              ``grad_val``                grad_theta of the mean validation loss at theta_t
  d_i              ``alignment``               < g_v , grad_theta l_i(theta_{t-1}) >
  Omega(w)         ``cfg.regulariser``         -H(w / sum w) (the paper's), or KL(uniform || w / sum w):
                                               minimising either spreads the weights
  alpha            ``cfg.alpha``
  lambda           ``cfg.mix``                 the policy's share in w = (1 - lambda) + lambda * w^pi
  R_i              ``rewards``                 w_i * (d_i - alpha * dOmega/dw_i)      (eq. 6; with lambda below)
  eta_1, eta_2     inner / outer learning rates (live in the two optimisers)

Why the rewards are per crop: with softmax weights sum_i grad_phi w_i = 0, so a single
batch-wide reward (as in the public reference code) gives a policy gradient of exactly
zero. Here -(1/n) sum_i R_i grad log w_i = -(1/n) sum_i (d_i - alpha Omega'_i) grad w_i,
the gradient of the first-order change in validation loss plus the entropy bonus.

The guard rail (``cfg.mix``, lambda): the inner step trains on the policy's weights mixed with
uniform ones, w = (1 - lambda) + lambda * w^pi, w^pi = n * softmax(s / tau). The mean weight
stays 1, every weight stays >= 1 - lambda, and lambda = 0 is plain training (w = 1) with the
reweighter's cost. The outer objective keeps the data term on the weights that train and the
regulariser on the policy's own weights:
  eq. 5   theta_t = step on (1/n) sum_i w_i l_i(theta_{t-1})                 (w mixed)
  J(phi)  = (1/n) sum_i w_i d_i - (alpha/n) Omega(w^pi)
Since grad_phi w_i = lambda grad_phi w^pi_i = lambda w^pi_i grad_phi log w^pi_i, the exact
gradient of J in REINFORCE form is, with log of the POLICY's weight,
  eq. 6   R_i = w^pi_i (lambda d_i - alpha dOmega/dw^pi_i)
  eq. 7   loss_phi = -(1/n) sum_i R_i log w^pi_i,  grad loss_phi = -grad J
and lambda = 1 is the paper's step, bit for bit. For one SGD inner step of rate eta_1,
d L_v(theta_t) / d w_i = -(eta_1/n) d_i: the data term of J is -1/eta_1 times the first-order
change in validation loss (tests/test_bild_math.py checks the whole gradient against autograd
through a differentiable inner step). Why Omega of w^pi and not of the mixed w: every mixed
weight is >= 1 - lambda, so a log barrier on w is bounded and stops holding the policy back.
Measured on SOTS-indoor (AOD-Net, seed 0), Omega of the mixed weights let the policy collapse
to an ESS of about 1.3 of 10, and lambda = 0.5 then trained on weights as concentrated as
lambda = 1 (ESS 3.8 against 3.3; docs/bild-vs-plain.md).

The ESS floor (``cfg.ess_floor``, a fraction f of n) lowers lambda for one step just enough that
the effective sample size (sum w)^2 / sum w^2 stays >= f n. Since sum w_i^2 = n + lambda^2 V
with V = sum_i (w^pi_i)^2 - n, the step's lambda is min(lambda, sqrt(n (1/f - 1) / V)), in
closed form; it is held constant within the step, so the gradient above holds at that lambda.

Adam space (``cfg.alignment_space = "adam"``): the inner optimiser is Adam, whose step for crop i
is preconditioned. Holding its denominator fixed at P = diag(1 / (sqrt(v_hat) + eps)) from the
second moment as it stood before the step, and the momentum factor c = (1 - beta_1) / (1 - beta_1^t)
(a constant of the step), d L_v(theta_t) / d w_i = -(eta_1 c / n) < P g_v , grad l_i >: stage 4
moves along P g_v instead of g_v, and every estimator is otherwise unchanged. At the first step
v_0 = 0 carries nothing, so P comes from the step's own v_1 (v_hat = g^2, the denominator it used).
``adam_exact`` holds nothing fixed: Adam is elementwise, so the derivative of its step with respect
to this step's gradient is a diagonal J (``adam_step_jacobian``), and d_i = < J g_v , grad l_i > gives
d L_v(theta_t) / d w_i = -(eta_1 / n) d_i exactly, at the same cost.

The reference code's reward (``cfg.reward = "batch_wide"``): one number for the batch,
R = < g_v , (1/n) sum_i w_i grad l_i >, less a moving baseline b, on the policy's weights that sum
to 1: loss = -(R - b) sum_i p_i. Its gradient is (R - b) times grad sum_i p_i = grad 1 = 0, whatever R.

Modes: ``plain`` trains the backbone with w = 1 (the baseline); ``bild`` and
``bild-train`` run all six stages and differ only in where the caller draws the
"validation" crops from (the held-out split, or the training split: the paper's ablation).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn

from ..hardware import autocast, exact_float32
from .alignment import (
    ALIGNMENT_SPACES,
    ESTIMATORS,
    Params,
    adam_preconditioner,
    adam_step_jacobian,
    alignment_fd,
    alignment_jvp,
    alignment_loop,
    per_crop_l1,
)
from .reweighter import crop_log_weights

__all__ = [
    "AlignmentFn",
    "MODES",
    "REWARDS",
    "REWARD_NORMS",
    "BildConfig",
    "BildNets",
    "CropBatch",
    "NonFiniteLossError",
    "StepStats",
    "bild_step",
    "batch_wide_policy_loss",
    "entropy_grad",
    "crop_rewards",
    "policy_loss",
    "mix_log_weights",
    "regulariser_pull",
    "step_mix",
]

MODES = ("plain", "bild", "bild-train")
REWARD_NORMS = ("none", "batch")
REWARDS = ("per_crop", "batch_wide")
BASELINE_DECAY = 0.9  # the batch-wide reward's moving baseline: b <- 0.9 b + 0.1 R
REGULARISERS = ("entropy", "uniform_kl")

log = logging.getLogger(__name__)


class NonFiniteLossError(FloatingPointError):
    """The training loss became NaN or infinite; raised before any parameter is touched."""


@dataclass
class CropBatch:
    """n training crops and, for the bild modes, m crops that drive the outer loop."""

    hazy: torch.Tensor  # (n,3,S,S) in [0,1]
    clear: torch.Tensor  # (n,3,S,S)
    val_hazy: torch.Tensor | None = None  # (m,3,S,S)
    val_clear: torch.Tensor | None = None  # (m,3,S,S)
    pairs: list[int] | None = None  # dataset index of each training crop's pair, when the caller knows it


@dataclass
class BildNets:
    """The two networks and their optimisers (the outer pair is None in plain mode)."""

    backbone: nn.Module
    inner_opt: torch.optim.Optimizer
    reweighter: nn.Module | None = None
    outer_opt: torch.optim.Optimizer | None = None
    scaler: torch.amp.GradScaler | None = None  # fp16 only: the inner step's loss scaler
    reward_baseline: float | None = None  # the batch-wide reward's moving baseline (bild.reward=batch_wide)


@dataclass
class BildConfig:
    """The step's settings; their defaults live in the config (``pipeline/conf``), not here."""

    mode: str  # plain | bild | bild-train
    alpha: float  # the regulariser's coefficient in eq. 6
    temperature: float  # tau in the softmax
    weighting: str  # "softmax" | "sigmoid" (normalised)
    estimator: str  # "fd" | "jvp" | "loop"
    reward_norm: str  # "batch": standardise d within the batch before eq. 6 | "none"
    regulariser: str  # Omega: "uniform_kl" (KL(u || p), a log barrier) | "entropy" (-H, the paper's)
    mix: float  # lambda: the policy's share in w = (1 - lambda) + lambda * w^pi; 0 = plain weights, 1 = the paper's
    ess_floor: float  # f: lambda is lowered within a step to keep ESS >= f * n; 0 = no floor
    precision: str = "fp32"  # fp32 | bf16 | fp16: autocast of the backbone's forward passes (pipeline.hardware)
    alignment_space: str = "sgd"  # "sgd": <g_v, grad l_i> | "adam": <P g_v, grad l_i> | "adam_exact": <J g_v, grad l_i>
    reward: str = "per_crop"  # "per_crop": eq. 6 | "batch_wide": the public reference code's (its policy gradient is 0)
    sync_timing: bool = False  # cuda.synchronize at stage boundaries, for honest stage times

    def __post_init__(self) -> None:
        for name, value, valid in [
            ("mode", self.mode, MODES),
            ("estimator", self.estimator, ESTIMATORS),
            ("reward_norm", self.reward_norm, REWARD_NORMS),
            ("regulariser", self.regulariser, REGULARISERS),
            ("weighting", self.weighting, ("softmax", "sigmoid")),
            ("precision", self.precision, ("fp32", "bf16", "fp16")),
            ("alignment_space", self.alignment_space, ALIGNMENT_SPACES),
            ("reward", self.reward, REWARDS),
        ]:
            if value not in valid:
                raise ValueError(f"BILD {name}={value!r} is not valid; expected one of {', '.join(valid)}")
        if not (math.isfinite(self.alpha) and self.alpha >= 0) or not (math.isfinite(self.temperature)
                                                                        and self.temperature > 0):
            raise ValueError(f"BILD needs bild.alpha >= 0 and bild.temperature > 0, got {self.alpha}, {self.temperature}")
        for name, value in (("mix", self.mix), ("ess_floor", self.ess_floor)):
            if not 0 <= value <= 1:
                raise ValueError(f"BILD needs 0 <= bild.{name} <= 1, got {value}")


@dataclass
class StepStats:
    """What one step reports for logging; the reward fields are NaN in plain mode."""

    loss: float  # (1/n) sum w_i l_i, the loss the backbone stepped on
    crop_loss: float  # (1/n) sum l_i, unweighted
    val_loss: float = math.nan
    reward_mean: float = math.nan
    reward_std: float = math.nan
    align_mean: float = math.nan  # mean d_i
    weight_entropy: float = math.nan  # H(w / n) in nats; log n means uniform
    ess: float = math.nan  # effective sample size (sum w)^2 / sum w^2, n means uniform
    max_weight: float = math.nan
    crop_weights: torch.Tensor | None = None  # w (n,), detached: per-crop analysis (which crops BILD favours)
    crop_align: torch.Tensor | None = None  # d (n,) before any normalisation, detached
    times: dict[str, float] = field(default_factory=dict)  # seconds per stage
    estimator: str = ""


def entropy_grad(log_weights: torch.Tensor) -> torch.Tensor:
    """dOmega/dw_i for Omega(w) = -H(w / S), S = sum w: (log p_i + H(p)) / S. (n,) -> (n,).

    Takes log w so that a weight that underflowed to 0 still has a finite log p_i.
    """
    log_p = log_weights - torch.logsumexp(log_weights, dim=0)
    entropy = -(log_p.exp() * log_p).sum()
    return (log_p + entropy) / log_weights.exp().sum()


def regulariser_pull(log_weights: torch.Tensor, kind: str) -> torch.Tensor:
    """w_i * dOmega/dw_i, the regulariser's share of eq. 6 (R_i = w_i d_i - alpha * this). (n,) -> (n,).

    With p = w / sum w:
    - ``entropy``, Omega = -H(p): p_i (log p_i + H). It vanishes as p_i -> 0, so a crop whose
      weight has collapsed gets no pull back.
    - ``uniform_kl``, Omega = KL(u || p) = -(1/n) sum log(n p_i): p_i - 1/n. A log barrier:
      the pull up on a collapsing weight tends to 1/n instead of 0.
    """
    if kind == "entropy":
        return log_weights.exp() * entropy_grad(log_weights)
    if kind == "uniform_kl":
        log_p = log_weights - torch.logsumexp(log_weights, dim=0)
        return log_p.exp() - 1.0 / log_weights.numel()
    raise ValueError(f"unknown regulariser {kind!r}; expected one of {', '.join(REGULARISERS)}")


def crop_rewards(
    log_weights: torch.Tensor, align: torch.Tensor, alpha: float, reward_norm: str, regulariser: str,
    mix: float = 1.0,
) -> torch.Tensor:
    """Eq. 6, per crop: R_i = w_i * (mix * d_i - alpha * dOmega/dw_i). Inputs detached, (n,) -> (n,).

    ``log_weights`` are the policy's; ``mix`` (lambda) is its share in the weights that train,
    which scales the data term (see the module's docstring).
    """
    if reward_norm == "batch" and align.numel() > 1:
        # A per-batch baseline leaves the policy gradient unchanged (sum_i grad w_i = 0) but the
        # rescale makes alpha comparable across backbones, steps and learning rates.
        align = (align - align.mean()) / (align.std() + 1e-12)
    if mix != 1:
        align = mix * align
    if regulariser == "entropy":  # eq. 6 as the paper writes it
        return log_weights.exp() * (align - alpha * entropy_grad(log_weights))
    # w_i * dOmega/dw_i directly: dOmega/dw_i = 1/S - 1/(n w_i) overflows where a weight underflows.
    return log_weights.exp() * align - alpha * regulariser_pull(log_weights, regulariser)


def step_mix(log_policy: torch.Tensor, mix: float, ess_floor: float) -> float:
    """The step's lambda: ``mix``, lowered just enough that the mixed weights keep ESS >= ess_floor * n.

    sum_i w_i^2 = n + lambda^2 V with V = sum_i (w^pi_i)^2 - n, so ESS >= f n <=> lambda^2 V <= n (1/f - 1).
    """
    if ess_floor == 0 or mix == 0:
        return mix
    n = log_policy.numel()
    excess = float(torch.exp(2 * log_policy).sum()) - n  # V >= 0; 0 when the policy is uniform
    if excess <= 0:
        return mix
    return min(mix, math.sqrt(n * (1 / ess_floor - 1) / excess))


def mix_log_weights(log_policy: torch.Tensor, mix: float) -> torch.Tensor:
    """log w for w = (1 - mix) + mix * w^pi, from log w^pi (n,) -> (n,).

    ``mix`` = 1 returns log w^pi itself: the paper's step bit for bit, and log space keeps log w
    finite where a policy weight underflows. Below 1 every w_i >= 1 - mix > 0, so the log is finite.
    """
    if mix == 1:
        return log_policy
    return torch.log((1 - mix) + mix * log_policy.exp())


def policy_loss(rewards: torch.Tensor, log_weights: torch.Tensor) -> torch.Tensor:
    """Eq. 7, REINFORCE form: -(1/n) sum_i R_i.detach() * log w_i."""
    return -(rewards.detach() * log_weights).mean()


def _old_params(model: nn.Module) -> Params:
    return {k: p.detach().clone() for k, p in model.named_parameters() if p.requires_grad}


class _StageClock:
    def __init__(self, device: torch.device, sync: bool) -> None:
        self.sync = sync and device.type == "cuda"
        self.times: dict[str, float] = {}
        self._last = time.perf_counter()

    def lap(self, stage: str) -> None:
        if self.sync:
            torch.cuda.synchronize()
        now = time.perf_counter()
        self.times[stage] = now - self._last
        self._last = now


def _check_finite(loss: torch.Tensor, what: str) -> None:
    if not torch.isfinite(loss):
        raise NonFiniteLossError(f"{what} is {loss.item()}: stopping before the optimiser step")


def _inner_update(nets: BildNets, loss: torch.Tensor) -> None:
    """theta_t = optimiser step on ``loss``; under fp16 through the loss scaler (which skips overflowed steps)."""
    nets.inner_opt.zero_grad(set_to_none=True)
    if nets.scaler is None:
        loss.backward()
        nets.inner_opt.step()
        return
    nets.scaler.scale(loss).backward()
    nets.scaler.step(nets.inner_opt)
    nets.scaler.update()


def _gradient(loss: torch.Tensor, params: list[nn.Parameter], scaler: torch.amp.GradScaler | None) -> tuple[torch.Tensor, ...]:
    """grad_theta ``loss``; under fp16 taken at the scaler's scale (no underflow) and unscaled."""
    if scaler is None:
        return torch.autograd.grad(loss, params)
    scale = scaler.get_scale()
    return tuple(g / scale for g in torch.autograd.grad(loss * scale, params))


# Stage 4 as a replaceable function: (backbone, theta_{t-1}, g_v, batch, l_i(theta_{t-1})) -> (d (n,), its name).
# Studies of the method pass their own (a known synthetic reward, say) to bild_step.
AlignmentFn = Callable[[nn.Module, Params, Params, CropBatch, torch.Tensor], tuple[torch.Tensor, str]]


def bild_step(batch: CropBatch, nets: BildNets, cfg: BildConfig, *, alignment: AlignmentFn | None = None) -> StepStats:
    """Run one step of stages 1-6 (docs/design.md) and return its statistics.

    ``alignment`` replaces stage 4's estimator (``cfg.estimator``) when given.
    """
    backbone, device = nets.backbone, batch.hazy.device
    clock = _StageClock(device, cfg.sync_timing)
    reweight = cfg.mode != "plain"

    # 1. Weights: w = (1 - lambda) + lambda * n * softmax(s / tau) from the policy; w = 1 in plain mode.
    if reweight:
        scores = nets.reweighter(batch.hazy, batch.clear)  # (n,)
        log_policy = crop_log_weights(scores, temperature=cfg.temperature, kind=cfg.weighting)  # log w^pi (n,)
        # The guard rail: w = (1 - lambda) + lambda w^pi, lambda lowered this step if ESS would fall below the floor.
        mix = step_mix(log_policy.detach(), cfg.mix, cfg.ess_floor)
        log_w = mix_log_weights(log_policy.detach(), mix)  # log w (n,), the weights that train
        weights = log_w.exp()  # (n,)
        old_params = _old_params(backbone)  # theta_{t-1}, needed by stage 4
    else:
        weights = torch.ones(batch.hazy.shape[0], device=device)

    # Adam alignment: P from the second moment as it stands before this step (None at the first step).
    adam_space = reweight and cfg.alignment_space == "adam"
    precond = adam_preconditioner(backbone, nets.inner_opt) if adam_space else None

    # 2. Inner step (eq. 5): theta_t = step on (1/n) sum_i w_i l_i(theta_{t-1}).
    with autocast(cfg.precision, device):
        crop_losses = per_crop_l1(backbone(batch.hazy).float(), batch.clear)  # (n,)
    inner_loss = (weights * crop_losses).mean()
    _check_finite(inner_loss, "training loss")
    _inner_update(nets, inner_loss)
    clock.lap("inner")
    if reweight and cfg.alignment_space == "adam_exact":  # the exact derivative of the step just taken
        precond = adam_step_jacobian(backbone, nets.inner_opt)
    elif adam_space and precond is None:
        # The first step: v_0 = 0 carries nothing (its bias correction is 0/0); the step's own
        # v_1 = (1 - beta_2) g^2, i.e. v_hat = g^2, is the denominator the step divided by.
        precond = adam_preconditioner(backbone, nets.inner_opt)
    inner_stats = torch.stack([inner_loss.detach(), crop_losses.detach().mean()])
    if not reweight:
        loss, crop_loss = inner_stats.tolist()
        return StepStats(loss=loss, crop_loss=crop_loss, times=clock.times, estimator="none")

    # 3. Validation gradient g_v at the new parameters theta_t.
    params = [p for p in backbone.parameters() if p.requires_grad]
    with autocast(cfg.precision, device):
        val_loss = per_crop_l1(backbone(batch.val_hazy).float(), batch.val_clear).mean()
    _check_finite(val_loss, "validation loss")
    grad_val = dict(zip(old_params, _gradient(val_loss, params, nets.scaler)))
    if cfg.reward == "batch_wide":  # the reference code's reward: one global dot product, no per-crop alignment
        # p.grad still holds the inner step's gradient (1/n) sum_i w_i grad l_i(theta_{t-1}).
        # Summed on the device, then read once: one synchronisation, not one per parameter tensor.
        reward = float(sum((g * p.grad).sum() for g, p in zip(grad_val.values(), params) if p.grad is not None))
        rewards, align = _batch_wide_outer_step(nets, reward, log_policy)
        clock.lap("outer")
        return _reweighted_stats(inner_stats, val_loss, rewards, align, weights, log_w, clock.times, "none")
    if precond is not None:  # d_i = < P g_v , grad l_i >: every estimator moves along P g_v
        grad_val = {k: precond[k] * g for k, g in grad_val.items()}
    clock.lap("val_grad")
    if nets.scaler is not None and not all(torch.isfinite(g).all() for g in grad_val.values()):
        # fp16 overflowed: skip this step's outer update, as the scaler skips an inner one. Checked under
        # fp16 only: each test is a device sync, and fp32/bf16 losses were already checked finite.
        loss, crop_loss = inner_stats.tolist()
        return StepStats(loss=loss, crop_loss=crop_loss, val_loss=val_loss.item(), times=clock.times, estimator="none")

    # 4. Alignment d_i = < g_v , grad l_i(theta_{t-1}) >, one number per crop.
    estimate = alignment or (lambda *args: _alignment_with_fallback(cfg, *args))
    align, estimator = estimate(backbone, old_params, grad_val, batch, crop_losses)

    # 5. Rewards (eq. 6).
    rewards = crop_rewards(log_policy.detach(), align, cfg.alpha, cfg.reward_norm, cfg.regulariser, mix)  # (n,)
    clock.lap("reward")

    # 6. Outer step (eq. 7): phi_t = Adam step on -(1/n) sum_i R_i log w^pi_i.
    nets.outer_opt.zero_grad(set_to_none=True)
    policy_loss(rewards, log_policy).backward()
    nets.outer_opt.step()
    clock.lap("outer")

    return _reweighted_stats(inner_stats, val_loss, rewards, align, weights, log_w, clock.times, estimator)


def _reweighted_stats(
    inner_stats: torch.Tensor, val_loss: torch.Tensor, rewards: torch.Tensor, align: torch.Tensor,
    weights: torch.Tensor, log_w: torch.Tensor, times: dict[str, float], estimator: str,
) -> StepStats:
    """A reweighted step's statistics, all in one device-to-host copy: one synchronisation a step on a GPU, not nine."""
    p = weights / weights.sum()
    log_p = log_w - math.log(weights.shape[0])
    step_stats = torch.stack([
        val_loss.detach(), rewards.mean(), rewards.std(), align.mean(),
        -(p * log_p).sum(), weights.sum() ** 2 / (weights**2).sum(), weights.max(),
    ])
    loss, crop_loss, val, r_mean, r_std, a_mean, entropy, ess, w_max = torch.cat([inner_stats, step_stats]).tolist()
    return StepStats(
        loss=loss, crop_loss=crop_loss, val_loss=val, reward_mean=r_mean, reward_std=r_std, align_mean=a_mean,
        weight_entropy=entropy, ess=ess, max_weight=w_max, crop_weights=weights, crop_align=align.detach(),
        times=times, estimator=estimator,
    )


def batch_wide_policy_loss(advantage: float, log_policy: torch.Tensor) -> torch.Tensor:
    """The public reference code's outer loss: -(R - b) sum_i p_i, p = softmax(s / tau) the weights summing to 1.

    One reward for the whole batch multiplies sum_i p_i = 1, a constant in phi: the loss's
    gradient is exactly zero whatever the reward (docs/design.md).
    """
    return -advantage * (log_policy - math.log(log_policy.numel())).exp().sum()


def _batch_wide_outer_step(nets: BildNets, reward: float, log_policy: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Stages 5-6 as the reference code runs them: one reward R for the batch, a moving baseline b, one Adam step.

    R = < g_v , (1/n) sum_i w_i grad l_i >, the global dot product of the validation and the summed
    training gradients. Returns R - b broadcast to every crop and NaN alignments (none computed).
    """
    baseline = reward if nets.reward_baseline is None else nets.reward_baseline
    nets.outer_opt.zero_grad(set_to_none=True)
    batch_wide_policy_loss(reward - baseline, log_policy).backward()
    nets.outer_opt.step()
    nets.reward_baseline = BASELINE_DECAY * baseline + (1 - BASELINE_DECAY) * reward
    n = log_policy.numel()
    return torch.full((n,), reward - baseline, device=log_policy.device), torch.full((n,), math.nan, device=log_policy.device)


# Backbones whose forward has an op without forward-mode AD: class name -> reason.
_JVP_UNSUPPORTED: dict[str, str] = {}


def _alignment_with_fallback(
    cfg: BildConfig,
    backbone: nn.Module,
    old_params: Params,
    grad_val: Params,
    batch: CropBatch,
    crop_losses: torch.Tensor,
) -> tuple[torch.Tensor, str]:
    """Estimate d with cfg.estimator; fall back to finite differences (logged once) if jvp fails."""
    hazy, clear = batch.hazy, batch.clear
    name = type(backbone).__name__
    if cfg.estimator == "jvp" and name not in _JVP_UNSUPPORTED:
        try:  # a directional derivative keeps its relative precision under autocast
            with autocast(cfg.precision, hazy.device):
                return alignment_jvp(backbone, old_params, grad_val, hazy, clear).float(), "jvp"
        except (RuntimeError, NotImplementedError) as err:
            _JVP_UNSUPPORTED[name] = str(err).splitlines()[0]
            log.warning("jvp alignment unsupported for %s (%s); using finite differences", name, err)
    if cfg.estimator == "loop":
        return alignment_loop(backbone, old_params, grad_val, hazy, clear), "loop"
    # A difference of two losses needs full float32: under autocast (or TF32) the rounding of each
    # loss is larger than the change it measures, so fd re-evaluates l_i(theta_{t-1}) in float32.
    old_losses = crop_losses if cfg.precision == "fp32" else None
    with exact_float32():
        return alignment_fd(backbone, old_params, grad_val, hazy, clear, old_losses), "fd"
