"""The BILD update's maths: estimators agree, the policy gradient behaves, the entropy term spreads."""

from __future__ import annotations

import copy
import logging

import numpy as np
import pytest
import torch

from pipeline.backbones import create_backbone, list_backbones
from pipeline.bild import (
    BildConfig,
    BildNets,
    CropBatch,
    NonFiniteLossError,
    Reweighter,
    adam_preconditioner,
    adam_step_jacobian,
    alignment_fd,
    alignment_jvp,
    alignment_loop,
    batch_wide_policy_loss,
    bild_step,
    crop_log_weights,
    crop_rewards,
    entropy_grad,
    mix_log_weights,
    per_crop_l1,
    policy_loss,
    regulariser_pull,
    step_mix,
)
from pipeline.bild.reweighter import local_correlation


def _cfg(**changes: object) -> BildConfig:
    """A BildConfig for step tests: the default policy with alpha 0.1, changed by ``changes``."""
    settings = dict(mode="bild", alpha=0.1, temperature=1.0, weighting="softmax", estimator="fd",
                    reward_norm="batch", regulariser="uniform_kl", mix=1.0, ess_floor=0.0)
    return BildConfig(**{**settings, **changes})


def _problem(name: str, dtype: torch.dtype, n: int = 6, size: int = 24, seed: int = 0):
    """A backbone at theta_{t-1}, a validation gradient at theta_t after one Adam step, and n crops."""
    torch.manual_seed(seed)
    model = create_backbone(name, "tiny").to(dtype)
    hazy, clear = torch.rand(n, 3, size, size, dtype=dtype), torch.rand(n, 3, size, size, dtype=dtype)
    old = {k: p.detach().clone() for k, p in model.named_parameters()}
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    per_crop_l1(model(hazy), clear).mean().backward()
    opt.step()
    val_hazy, val_clear = torch.rand(3, 3, size, size, dtype=dtype), torch.rand(3, 3, size, size, dtype=dtype)
    params = [p for p in model.parameters()]
    grads = torch.autograd.grad(per_crop_l1(model(val_hazy), val_clear).mean(), params)
    grad_val = dict(zip(old, grads))
    return model, old, grad_val, hazy, clear


def _rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max())


@pytest.mark.parametrize("name", ["aodnet", "ffanet", "griddehazenet"])
def test_jvp_matches_the_loop_reference_in_float64(name: str) -> None:
    model, old, grad_val, hazy, clear = _problem(name, torch.float64)
    reference = alignment_loop(model, old, grad_val, hazy, clear)
    assert reference.abs().max() > 0
    assert _rel_err(alignment_jvp(model, old, grad_val, hazy, clear), reference) < 1e-8


@pytest.mark.parametrize("name", ["aodnet", "ffanet"])
def test_finite_difference_matches_the_loop_reference_in_float64(name: str) -> None:
    model, old, grad_val, hazy, clear = _problem(name, torch.float64)
    reference = alignment_loop(model, old, grad_val, hazy, clear)
    # ReLUs and the L1 loss are piecewise linear: a step small enough that no pixel crosses
    # a kink (1e-7 of |theta|) makes central differences exact up to rounding.
    central = alignment_fd(model, old, grad_val, hazy, clear, central=True, rel_step=1e-7)
    assert _rel_err(central, reference) < 1e-8
    # The one-sided default trades accuracy for reusing the inner forward's losses.
    losses = per_crop_l1(torch.func.functional_call(model, old, (hazy,)), clear)
    assert _rel_err(alignment_fd(model, old, grad_val, hazy, clear, losses), reference) < 1e-5


@pytest.mark.parametrize("name", ["aodnet", "ffanet", "msbdn"])
def test_estimators_correlate_in_float32(name: str) -> None:
    model, old, grad_val, hazy, clear = _problem(name, torch.float32, n=10)
    reference = alignment_loop(model, old, grad_val, hazy, clear)
    for estimate in (alignment_fd(model, old, grad_val, hazy, clear), alignment_jvp(model, old, grad_val, hazy, clear)):
        corr = np.corrcoef(estimate.numpy(), reference.numpy())[0, 1]
        assert corr > 0.99


def _tiny_nets(name: str, outer_lr: float) -> BildNets:
    torch.manual_seed(0)
    backbone = create_backbone(name, "tiny")
    reweighter = Reweighter(width=4, depth=2)
    return BildNets(
        backbone,
        torch.optim.Adam(backbone.parameters(), 1e-3),
        reweighter,
        torch.optim.Adam(reweighter.parameters(), outer_lr),
    )


@pytest.mark.parametrize("name", list_backbones())
def test_jvp_runs_on_every_backbone_or_falls_back_with_a_reason(name: str, caplog: pytest.LogCaptureFixture) -> None:
    nets = _tiny_nets(name, 1e-2)
    batch = CropBatch(torch.rand(4, 3, 32, 32), torch.rand(4, 3, 32, 32), torch.rand(2, 3, 32, 32), torch.rand(2, 3, 32, 32))
    with caplog.at_level(logging.WARNING):
        stats = bild_step(batch, nets, _cfg(estimator="jvp"))
    assert stats.estimator == "jvp" or (stats.estimator == "fd" and "jvp alignment unsupported" in caplog.text)
    assert np.isfinite(stats.reward_mean)


def test_entropy_grad_matches_autograd() -> None:
    w = torch.rand(7, dtype=torch.float64) + 0.1
    w.requires_grad_(True)
    p = w / w.sum()
    neg_entropy = (p * p.log()).sum()
    (expected,) = torch.autograd.grad(neg_entropy, w)
    assert torch.allclose(entropy_grad(w.detach().log()), expected, atol=1e-12)


def _neg_entropy(w: torch.Tensor) -> torch.Tensor:
    p = w / w.sum()
    return (p * p.log()).sum()


def _kl_from_uniform(w: torch.Tensor) -> torch.Tensor:
    p = w / w.sum()
    return -(p * w.numel()).log().mean()


@pytest.mark.parametrize(("kind", "omega"), [("entropy", _neg_entropy), ("uniform_kl", _kl_from_uniform)])
def test_regulariser_pull_is_w_times_the_gradient_of_omega(kind: str, omega) -> None:
    w = (torch.rand(7, dtype=torch.float64) + 0.1).requires_grad_(True)
    (grad,) = torch.autograd.grad(omega(w), w)
    assert torch.allclose(regulariser_pull(w.detach().log(), kind), w.detach() * grad, atol=1e-12)


@pytest.mark.parametrize("kind", ["entropy", "uniform_kl"])
def test_rewards_stay_finite_when_a_weight_underflows(kind: str) -> None:
    log_w = torch.tensor([0.0, 0.0, -800.0]) + torch.log(torch.tensor(3.0 / 2))
    assert log_w.exp()[2] == 0
    assert torch.isfinite(crop_rewards(log_w, torch.tensor([1.0, 0.0, -1.0]), 0.5, "batch", kind)).all()


def test_only_the_uniform_kl_pulls_a_collapsed_weight_back() -> None:
    # Two crops share the weight, the third has almost none; the rewards carry no signal.
    scores = torch.tensor([0.0, 0.0, -12.0], requires_grad=True)
    pulls = {}
    for kind in ("entropy", "uniform_kl"):
        log_w = crop_log_weights(scores)
        loss = policy_loss(crop_rewards(log_w.detach(), torch.zeros(3), 1.0, "none", kind), log_w)
        (grad,) = torch.autograd.grad(loss, scores)
        pulls[kind] = -grad[2].item()  # how fast a descent step raises the collapsed crop's score
    assert abs(pulls["entropy"]) < 1e-4 < pulls["uniform_kl"]


def _policy_grad(align: torch.Tensor, alpha: float = 0.0) -> list[torch.Tensor]:
    torch.manual_seed(0)
    reweighter = Reweighter(width=4, depth=2)
    torch.nn.init.normal_(reweighter.head.weight, std=0.5)  # non-uniform weights, as mid-training
    hazy, clear = torch.rand(align.numel(), 3, 16, 16), torch.rand(align.numel(), 3, 16, 16)
    log_w = crop_log_weights(reweighter(hazy, clear))
    rewards = crop_rewards(log_w.detach(), align, alpha, "none", "entropy")
    return torch.autograd.grad(policy_loss(rewards, log_w), list(reweighter.parameters()))


def test_equal_per_crop_signal_gives_zero_policy_gradient() -> None:
    # The trap of the public code: one reward for the whole batch. sum_i grad w_i = 0 kills it.
    grads = _policy_grad(torch.full((8,), 0.37))
    assert max(g.abs().max().item() for g in grads) < 1e-6


def test_per_crop_signal_gives_nonzero_policy_gradient() -> None:
    grads = _policy_grad(torch.linspace(-1, 1, 8))
    assert max(g.abs().max().item() for g in grads) > 1e-3


def _trained_weights(alpha: float, steps: int = 300, regulariser: str = "entropy") -> torch.Tensor:
    """Free scores as the policy, a fixed reward favouring the first two of eight crops."""
    scores = torch.zeros(8, requires_grad=True)
    opt = torch.optim.Adam([scores], lr=0.1)
    align = torch.tensor([1.0, 1.0, -1, -1, -1, -1, -1, -1])
    for _ in range(steps):
        log_w = crop_log_weights(scores)
        loss = policy_loss(crop_rewards(log_w.detach(), align, alpha, "batch", regulariser), log_w)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return crop_log_weights(scores).exp().detach()


@pytest.mark.parametrize("regulariser", ["entropy", "uniform_kl"])
def test_large_alpha_keeps_weights_uniform(regulariser: str) -> None:
    weights = _trained_weights(alpha=1e3, regulariser=regulariser)
    assert (weights - 1).abs().max() < 0.05


@pytest.mark.parametrize("regulariser", ["entropy", "uniform_kl"])
def test_zero_alpha_concentrates_weights_on_rewarded_crops(regulariser: str) -> None:
    weights = _trained_weights(alpha=0.0, regulariser=regulariser)
    assert weights[:2].sum() > 0.95 * 8


def test_moderate_uniform_kl_keeps_every_weight_off_zero() -> None:
    # The log barrier's equilibrium: the unrewarded crops keep a finite share, unlike alpha = 0.
    weights = _trained_weights(alpha=1.0, regulariser="uniform_kl", steps=600)
    assert weights[:2].min() > weights[2:].max() and weights[2:].min() > 0.05


def test_bild_step_moves_the_reweighter_and_reports_stats() -> None:
    nets = _tiny_nets("aodnet", 1e-1)
    reweighter = nets.reweighter
    before = [p.detach().clone() for p in reweighter.parameters()]
    batch = CropBatch(torch.rand(6, 3, 32, 32), torch.rand(6, 3, 32, 32), torch.rand(3, 3, 32, 32), torch.rand(3, 3, 32, 32))
    stats = bild_step(batch, nets, _cfg())
    assert any(not torch.equal(a, b) for a, b in zip(before, reweighter.parameters()))
    assert set(stats.times) == {"inner", "val_grad", "reward", "outer"}
    assert 1.0 <= stats.ess <= 6.0 + 1e-6 and stats.max_weight >= 1.0 - 1e-6
    assert stats.weight_entropy <= np.log(6) + 1e-6
    # Per-crop statistics line up with the batch: the weights the inner step used, one d_i per crop.
    assert stats.crop_weights.shape == stats.crop_align.shape == (6,)
    assert abs(stats.crop_weights.sum().item() - 6.0) < 1e-4 and stats.crop_weights.max().item() == stats.max_weight
    assert abs(stats.crop_align.mean().item() - stats.align_mean) < 1e-6


def test_plain_step_uses_uniform_weights() -> None:
    torch.manual_seed(0)
    backbone = create_backbone("aodnet", "tiny")
    nets = BildNets(backbone, torch.optim.Adam(backbone.parameters(), 1e-3))
    stats = bild_step(CropBatch(torch.rand(4, 3, 32, 32), torch.rand(4, 3, 32, 32)), nets, _cfg(mode="plain"))
    assert stats.loss == pytest.approx(stats.crop_loss)
    assert np.isnan(stats.reward_mean) and set(stats.times) == {"inner"}


def test_nan_loss_stops_before_touching_parameters() -> None:
    backbone = create_backbone("aodnet", "tiny")
    nets = BildNets(backbone, torch.optim.Adam(backbone.parameters(), 1e-3))
    before = [p.detach().clone() for p in backbone.parameters()]
    hazy = torch.rand(2, 3, 32, 32)
    hazy[0, 0, 0, 0] = float("nan")
    with pytest.raises(NonFiniteLossError, match="training loss is nan"):
        bild_step(CropBatch(hazy, torch.rand(2, 3, 32, 32)), nets, _cfg(mode="plain"))
    assert all(torch.equal(a, b) for a, b in zip(before, backbone.parameters()))


def test_bad_bild_config_names_the_field() -> None:
    with pytest.raises(ValueError, match="estimator='magic'"):
        _cfg(estimator="magic")
    with pytest.raises(ValueError, match="regulariser='l2'"):
        _cfg(regulariser="l2")
    with pytest.raises(ValueError, match="bild.mix"):
        _cfg(mix=1.5)


def test_unbounded_batch_normalised_reweighter_scores_and_trains() -> None:
    torch.manual_seed(0)
    reweighter = Reweighter(width=4, depth=2, score_bound=0, feature_norm="batch")
    torch.nn.init.normal_(reweighter.head.weight, std=10.0)
    hazy, clear = torch.rand(6, 3, 16, 16), torch.rand(6, 3, 16, 16)
    scores = reweighter(hazy, clear)
    assert abs(scores.mean().item()) < 1e-5 and scores.abs().max() > 3.0  # centred, no tanh bound
    assert reweighter(hazy[:1], clear[:1]).tolist() == [0.0]  # a lone crop: weight 1, no batch statistics
    with pytest.raises(ValueError, match="feature_norm='layer'"):
        Reweighter(feature_norm="layer")
    nets = _tiny_nets("aodnet", 1e-1)
    nets.reweighter = reweighter
    nets.outer_opt = torch.optim.Adam(reweighter.parameters(), 1e-1)
    batch = CropBatch(hazy, clear, torch.rand(3, 3, 16, 16), torch.rand(3, 3, 16, 16))
    stats = bild_step(batch, nets, _cfg(regulariser="uniform_kl"))
    assert np.isfinite(stats.reward_mean) and 1.0 <= stats.ess <= 6.0 + 1e-6


def test_local_correlation_sees_haze_through_but_not_a_wrong_target() -> None:
    torch.manual_seed(0)
    clear, other = torch.rand(2, 3, 32, 32), torch.rand(2, 3, 32, 32)
    t = torch.rand(2, 1, 8, 8).repeat_interleave(4, 2).repeat_interleave(4, 3) * 0.8 + 0.1  # one t per 4x4 tile
    hazy = t * clear + 0.9 * (1 - t)  # I = t J + A (1 - t)
    assert local_correlation(hazy, clear).min() > 0.99  # dense or light, a right pair correlates
    assert local_correlation(hazy, other).abs().max() < 0.2  # another scene's image does not


def test_pair_consistency_adds_three_features_and_trains() -> None:
    torch.manual_seed(0)
    reweighter = Reweighter(width=4, depth=2, score_bound=0, feature_norm="batch", pair_consistency=True)
    assert reweighter.head.in_features == 8 + 3
    nets = _tiny_nets("aodnet", 1e-1)
    nets.reweighter, nets.outer_opt = reweighter, torch.optim.Adam(reweighter.parameters(), 1e-1)
    batch = CropBatch(torch.rand(6, 3, 16, 16), torch.rand(6, 3, 16, 16), torch.rand(3, 3, 16, 16), torch.rand(3, 3, 16, 16))
    before = reweighter.head.weight.detach().clone()
    stats = bild_step(batch, nets, _cfg(regulariser="uniform_kl"))
    assert np.isfinite(stats.reward_mean) and not torch.equal(before, reweighter.head.weight)


@pytest.mark.parametrize("name", list_backbones())
def test_bf16_autocast_in_channels_last_keeps_the_alignments(name: str) -> None:
    # The GPU options on the CPU: bf16 forwards (the fd estimator re-evaluates its losses in
    # fp32) and NHWC tensors must leave one step's per-crop alignments as they are in fp32.
    torch.manual_seed(0)
    backbone = create_backbone(name, "tiny").to(memory_format=torch.channels_last)
    reweighter = Reweighter(width=4, depth=2)
    g = torch.Generator().manual_seed(1)
    crops = lambda k: torch.rand(k, 3, 32, 32, generator=g).contiguous(memory_format=torch.channels_last)  # noqa: E731
    batch = CropBatch(crops(8), crops(8), crops(4), crops(4))
    align = {}
    for precision in ("fp32", "bf16"):
        nets = BildNets(copy.deepcopy(backbone), None, copy.deepcopy(reweighter), None)
        nets.inner_opt = torch.optim.Adam(nets.backbone.parameters(), 1e-3)
        nets.outer_opt = torch.optim.Adam(nets.reweighter.parameters(), 1e-2)
        align[precision] = bild_step(batch, nets, _cfg(precision=precision)).crop_align.numpy()
    assert np.isfinite(align["bf16"]).all()
    assert np.corrcoef(align["fp32"], align["bf16"])[0, 1] > 0.999


# --- the guard rail: w = (1 - lambda) + lambda * w^pi ---------------------------------------------


def _hypergradient_problem(mix: float, alpha: float, regulariser: str, eta: float = 0.05):
    """The policy gradient bild_step's stages compute, and an autograd reference for it (float64).

    Reference: F(phi) = L_v(theta_t(w(phi))) / eta + (alpha / n) Omega(w^pi(phi)), with theta_t one
    differentiable SGD step of rate eta on (1/n) sum_i w_i l_i(theta_{t-1}), w the mixed weights.
    Since dL_v(theta_t)/dw_i = -(eta / n) d_i, eq. 7's gradient must equal grad_phi F exactly.
    """
    torch.manual_seed(0)
    model = create_backbone("aodnet", "tiny").double()
    reweighter = Reweighter(width=4, depth=2).double()
    torch.nn.init.normal_(reweighter.head.weight, std=0.5)  # non-uniform weights, as mid-training
    phi = list(reweighter.parameters())
    crops = lambda k: torch.rand(k, 3, 16, 16, dtype=torch.float64)  # noqa: E731
    hazy, clear, val_hazy, val_clear = crops(6), crops(6), crops(3), crops(3)
    log_policy = crop_log_weights(reweighter(hazy, clear))
    weights = (1 - mix) + mix * log_policy.exp()  # the mixture, differentiable in phi
    old = {k: p.detach().clone().requires_grad_(True) for k, p in model.named_parameters()}

    # The reference: autograd through the inner step into the validation loss.
    inner = (weights * per_crop_l1(torch.func.functional_call(model, old, (hazy,)), clear)).mean()
    grads = torch.autograd.grad(inner, list(old.values()), create_graph=True)  # linear in w
    new = {k: p - eta * g for (k, p), g in zip(old.items(), grads)}
    val_loss = per_crop_l1(torch.func.functional_call(model, new, (val_hazy,)), val_clear).mean()
    omega = _neg_entropy if regulariser == "entropy" else _kl_from_uniform
    reference = torch.autograd.grad(val_loss / eta + alpha / 6 * omega(log_policy.exp()), phi, retain_graph=True)

    # The step's way: exact d_i at theta_{t-1} along g_v at theta_t, eq. 6 rewards, eq. 7 loss.
    grad_val = dict(zip(old, torch.autograd.grad(val_loss, list(new.values()), retain_graph=True)))
    align = alignment_loop(model, old, grad_val, hazy, clear)
    rewards = crop_rewards(log_policy.detach(), align, alpha, "none", regulariser, mix)
    policy = torch.autograd.grad(policy_loss(rewards, log_policy), phi, retain_graph=True)
    return reference, policy, (align, weights, log_policy, phi)


@pytest.mark.parametrize("mix", [1.0, 0.3])
@pytest.mark.parametrize(("alpha", "regulariser"), [(0.0, "entropy"), (0.7, "entropy"), (0.7, "uniform_kl")])
def test_mixed_policy_gradient_is_the_exact_hypergradient(mix: float, alpha: float, regulariser: str) -> None:
    reference, policy, _ = _hypergradient_problem(mix, alpha, regulariser)
    scale = max(g.abs().max().item() for g in reference)
    assert scale > 1e-6
    assert max((a - b).abs().max().item() for a, b in zip(policy, reference)) < 1e-8 * scale


def test_reinforce_with_the_mixed_weights_reward_would_be_wrong() -> None:
    # The check can fail: eq. 6's R_i = w_i d_i with the mixed w_i, against log w^pi, weighs each
    # crop's gradient by w_i / w^pi_i instead of lambda.
    reference, _, (align, weights, log_policy, phi) = _hypergradient_problem(0.3, 0.0, "entropy")
    naive = torch.autograd.grad(policy_loss(weights.detach() * align, log_policy), phi)
    scale = max(g.abs().max().item() for g in reference)
    assert max((a - b).abs().max().item() for a, b in zip(naive, reference)) > 1e-3 * scale


def test_mix_zero_is_a_plain_step_plus_the_reweighters_cost() -> None:
    batch = CropBatch(torch.rand(6, 3, 32, 32), torch.rand(6, 3, 32, 32), torch.rand(3, 3, 32, 32), torch.rand(3, 3, 32, 32))
    plain, guarded = _tiny_nets("aodnet", 1e-1), _tiny_nets("aodnet", 1e-1)  # the same seed: the same networks
    plain_stats = bild_step(batch, plain, _cfg(mode="plain"))
    stats = bild_step(batch, guarded, _cfg(mix=0.0))
    for a, b in zip(plain.backbone.parameters(), guarded.backbone.parameters()):
        assert torch.equal(a, b)
    assert stats.loss == plain_stats.loss and torch.equal(stats.crop_weights, torch.ones(6))
    assert stats.ess == pytest.approx(6.0) and set(stats.times) == {"inner", "val_grad", "reward", "outer"}


def test_mix_keeps_the_mean_weight_and_a_floor_under_every_weight() -> None:
    log_policy = crop_log_weights(torch.tensor([4.0, 0.0, -3.0, -30.0]))
    weights = mix_log_weights(log_policy, 0.4).exp()
    assert weights.mean().item() == pytest.approx(1.0) and weights.min().item() >= 0.6 - 1e-12
    assert mix_log_weights(log_policy, 1.0) is log_policy  # lambda = 1: the paper's weights, bit for bit


@pytest.mark.parametrize("floor", [0.3, 0.8, 1.0])
def test_ess_floor_lowers_lambda_just_enough(floor: float) -> None:
    log_policy = crop_log_weights(torch.tensor([3.0, 1.0, 0.0, 0.0, -1.0, -2.0], dtype=torch.float64))
    ess = lambda log_w: (log_w.exp().sum() ** 2 / (2 * log_w).exp().sum()).item()  # noqa: E731
    assert ess(log_policy) < floor * 6  # the policy alone is below every floor tried
    lam = step_mix(log_policy, 1.0, floor)
    assert lam < 1.0 and ess(mix_log_weights(log_policy, lam)) == pytest.approx(floor * 6)
    assert step_mix(log_policy, 1.0, 0.0) == 1.0 and step_mix(log_policy, 0.5 * lam, floor) == 0.5 * lam
    nets = _tiny_nets("aodnet", 1e-1)
    torch.nn.init.normal_(nets.reweighter.head.weight, std=5.0)
    batch = CropBatch(torch.rand(6, 3, 32, 32), torch.rand(6, 3, 32, 32), torch.rand(3, 3, 32, 32), torch.rand(3, 3, 32, 32))
    assert bild_step(batch, nets, _cfg(ess_floor=floor)).ess >= floor * 6 - 1e-4


# --- Adam alignment: d_i = < P g_v , grad l_i >, P = 1 / (sqrt(v_hat) + eps) ------------------------


def _adam_problem(warm_steps: int):
    """A tiny AOD-Net in float64 whose Adam has taken ``warm_steps`` steps, a weighted batch and validation crops."""
    torch.manual_seed(0)
    model = create_backbone("aodnet", "tiny").double()
    crops = lambda k: torch.rand(k, 3, 16, 16, dtype=torch.float64)  # noqa: E731
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    for _ in range(warm_steps):
        opt.zero_grad()
        per_crop_l1(model(crops(4)), crops(4)).mean().backward()
        opt.step()
    weights = (torch.rand(6, dtype=torch.float64) + 0.5).requires_grad_(True)
    return model, opt, weights, crops(6), crops(6), crops(3), crops(3)


def _differentiable_adam_step(model, opt, weights, hazy, clear, *, hold_fixed: bool):
    """theta_{t-1} and theta_t(w) of one Adam step on (1/n) sum w_i l_i, differentiable in w.

    ``hold_fixed``: the denominator is sqrt(v_hat_{t-1}) + eps as it stood before the step (as
    ``bild.alignment_space=adam`` holds it), else torch's Adam exactly, v_t = beta_2 v + (1 - beta_2) g^2
    and all. Returns (theta_{t-1}, theta_t, the momentum factor (1 - beta_1) / (1 - beta_1^t)).
    """
    group = opt.param_groups[0]
    (beta1, beta2), eps, lr = group["betas"], group["eps"], group["lr"]
    old = {k: p.detach().clone().requires_grad_(True) for k, p in model.named_parameters()}
    inner = (weights * per_crop_l1(torch.func.functional_call(model, old, (hazy,)), clear)).mean()
    grads = torch.autograd.grad(inner, list(old.values()), create_graph=True)
    new = {}
    for (name, p), g, param in zip(old.items(), grads, model.parameters()):
        state = opt.state.get(param, {})
        m, v = state.get("exp_avg", torch.zeros_like(p)), state.get("exp_avg_sq", torch.zeros_like(p))
        t = int(state.get("step", 0)) + 1
        if hold_fixed:
            # Before the first step v_0 = 0 says nothing: the step's own v_1 (v_hat = g^2), held fixed.
            v_hat = v / (1 - beta2 ** (t - 1)) if t > 1 else g.detach() ** 2
        else:
            # clamp: where a parameter never had a gradient, sqrt's derivative at 0 would be inf * 0.
            v_hat = ((beta2 * v + (1 - beta2) * g * g) / (1 - beta2**t)).clamp_min(1e-300)
        m_hat = (beta1 * m + (1 - beta1) * g) / (1 - beta1**t)
        new[name] = p - lr * m_hat / (v_hat.sqrt() + eps)
    return old, new, (1 - beta1) / (1 - beta1**t), lr


def _through_the_step(model, old, new, weights, val_hazy, val_clear):
    """(g_v at theta_t keyed by parameter name, dL_v/dw) by autograd through the differentiable step."""
    val_loss = per_crop_l1(torch.func.functional_call(model, new, (val_hazy,)), val_clear).mean()
    grad_val = dict(zip(old, torch.autograd.grad(val_loss, list(new.values()), retain_graph=True)))
    (dl_dw,) = torch.autograd.grad(val_loss, weights)
    return grad_val, dl_dw


def _real_adam_step(model, opt, weights, hazy, clear) -> None:
    """The optimiser's own step on the same weighted batch, as bild_step takes it."""
    opt.zero_grad()
    (weights.detach() * per_crop_l1(model(hazy), clear)).mean().backward()
    opt.step()


def _adam_alignments(warm_steps: int, hold_fixed: bool):
    """(-n / (eta c) dL_v/dw from autograd, d along P g_v by the loop reference, the problem's parts)."""
    model, opt, weights, hazy, clear, val_hazy, val_clear = _adam_problem(warm_steps)
    old, new, momentum, lr = _differentiable_adam_step(model, opt, weights, hazy, clear, hold_fixed=hold_fixed)
    grad_val, dl_dw = _through_the_step(model, old, new, weights, val_hazy, val_clear)
    reference = -dl_dw * weights.numel() / (lr * momentum)
    precond = adam_preconditioner(model, opt)
    if precond is None:  # the first step, as bild_step does it: P from the step's own v_1 = (1 - beta_2) g^2
        _real_adam_step(model, opt, weights, hazy, clear)
        precond = adam_preconditioner(model, opt)
    direction = {k: precond[k] * g for k, g in grad_val.items()}
    frozen = {k: p.detach() for k, p in old.items()}
    return reference, direction, grad_val, (model, frozen, hazy, clear)


@pytest.mark.parametrize("warm_steps", [0, 3], ids=["first-step", "after-3-steps"])
def test_adam_alignment_is_the_hypergradient_with_the_preconditioner_held_fixed(warm_steps: int) -> None:
    reference, direction, _, (model, old, hazy, clear) = _adam_alignments(warm_steps, hold_fixed=True)
    assert reference.abs().max() > 0
    loop = alignment_loop(model, old, direction, hazy, clear)
    assert _rel_err(loop, reference) < 1e-8
    # fd and jvp estimate the same d when handed P g_v, as bild_step hands it to them.
    assert _rel_err(alignment_jvp(model, old, direction, hazy, clear), reference) < 1e-8
    # Central differences stay an estimate: P's entries span orders of magnitude (1 / eps where a
    # gradient is ~0), so a step along P g_v moves a few parameters far and some pixels cross a ReLU's
    # kink; 1e-5 is still far below any use of d.
    central = alignment_fd(model, old, direction, hazy, clear, central=True, rel_step=1e-7)
    assert _rel_err(central, reference) < 1e-5


def test_adam_alignment_against_the_exact_derivative_of_the_adam_step(capsys: pytest.CaptureFixture) -> None:
    """How far d along P g_v is from the exact derivative of torch's Adam step, nothing held fixed.

    Holding v fixed drops v_t's own dependence on this step's gradient, which the bias
    correction weighs by (1 - beta_2) / (1 - beta_2^t), about 1/t: large for the first tens of
    steps, negligible after a few hundred (measured here: docs/design.md).
    """
    errors = {}
    for warm_steps in (3, 300):
        exact, direction, grad_val, (model, old, hazy, clear) = _adam_alignments(warm_steps, hold_fixed=False)
        adam = alignment_loop(model, old, direction, hazy, clear)
        sgd = alignment_loop(model, old, grad_val, hazy, clear)
        corr = lambda a: float(np.corrcoef(a.numpy(), exact.numpy())[0, 1])  # noqa: E731
        errors[warm_steps] = float((adam - exact).norm() / exact.norm())
        with capsys.disabled():
            print(f"\nstep {warm_steps + 1}: Adam alignment vs the exact derivative of the Adam step: relative "
                  f"error {errors[warm_steps]:.3g}, correlation {corr(adam):+.4f} (SGD alignment's {corr(sgd):+.4f})")
    assert errors[3] > 1  # early on the held-fixed v is a poor model of the step ...
    assert errors[300] < 0.1  # ... and a close one once the bias correction has settled


@pytest.mark.parametrize("warm_steps", [0, 3, 30], ids=["first-step", "after-3-steps", "after-30-steps"])
def test_adam_exact_alignment_is_the_exact_derivative_of_the_adam_step(warm_steps: int) -> None:
    # The reference holds nothing fixed; adam_step_jacobian reads the state after a real step on the same batch.
    model, opt, weights, hazy, clear, val_hazy, val_clear = _adam_problem(warm_steps)
    old, new, momentum, lr = _differentiable_adam_step(model, opt, weights, hazy, clear, hold_fixed=False)
    grad_val, dl_dw = _through_the_step(model, old, new, weights, val_hazy, val_clear)
    _real_adam_step(model, opt, weights, hazy, clear)
    jacobian = adam_step_jacobian(model, opt)
    direction = {k: jacobian[k] * g for k, g in grad_val.items()}
    frozen = {k: p.detach() for k, p in old.items()}
    exact = alignment_loop(model, frozen, direction, hazy, clear)
    assert _rel_err(exact, -dl_dw * weights.numel() / lr) < 1e-8  # dL_v/dw_i = -(eta / n) d_i, nothing dropped


def test_adam_alignment_space_runs_a_bild_step_from_the_first_step() -> None:
    batch = CropBatch(torch.rand(6, 3, 32, 32), torch.rand(6, 3, 32, 32), torch.rand(3, 3, 32, 32), torch.rand(3, 3, 32, 32))
    sgd, adam = _tiny_nets("aodnet", 1e-2), _tiny_nets("aodnet", 1e-2)
    for space in ("adam", "adam_exact"):
        for estimator in ("fd", "jvp"):
            first = bild_step(batch, adam, _cfg(estimator=estimator, alignment_space=space))
            second = bild_step(batch, adam, _cfg(estimator=estimator, alignment_space=space))
            assert np.isfinite(first.reward_mean) and np.isfinite(second.reward_mean) and second.estimator == estimator
    # The same batch, the same networks: only the alignment's space differs.
    sgd_stats = bild_step(batch, sgd, _cfg(alignment_space="sgd"))
    adam_nets = _tiny_nets("aodnet", 1e-2)
    adam_stats = bild_step(batch, adam_nets, _cfg(alignment_space="adam"))
    assert not torch.allclose(sgd_stats.crop_align, adam_stats.crop_align)


# --- the public reference code's reweighter: one batch-wide reward ------------------------------------


def test_batch_wide_reward_gives_a_policy_gradient_of_zero() -> None:
    torch.manual_seed(0)
    reweighter = Reweighter(width=4, depth=2).double()
    torch.nn.init.normal_(reweighter.head.weight, std=0.5)  # non-uniform weights, as mid-training
    hazy, clear = torch.rand(10, 3, 24, 24, dtype=torch.float64), torch.rand(10, 3, 24, 24, dtype=torch.float64)
    log_policy = crop_log_weights(reweighter(hazy, clear))
    assert log_policy.exp().std() > 0.1  # the weights are far from uniform, yet ...
    for advantage in (0.37, -5.0):
        grads = torch.autograd.grad(batch_wide_policy_loss(advantage, log_policy), list(reweighter.parameters()),
                                    retain_graph=True)
        assert max(g.abs().max().item() for g in grads) < 1e-10
    # ... while eq. 7's per-crop rewards on the same batch move it.
    per_crop = torch.autograd.grad(policy_loss(torch.linspace(-1, 1, 10, dtype=torch.float64), log_policy),
                                   list(reweighter.parameters()))
    assert max(g.abs().max().item() for g in per_crop) > 1e-3


def test_batch_wide_reward_leaves_the_reweighter_where_it_started() -> None:
    batch = CropBatch(torch.rand(6, 3, 32, 32), torch.rand(6, 3, 32, 32), torch.rand(3, 3, 32, 32), torch.rand(3, 3, 32, 32))
    moved = {}
    for reward in ("batch_wide", "per_crop"):
        nets = _tiny_nets("aodnet", 1e-2)
        start = [p.detach().clone() for p in nets.reweighter.parameters()]
        for _ in range(4):
            stats = bild_step(batch, nets, _cfg(reward=reward))
        moved[reward] = max((p - s).abs().max().item() for p, s in zip(nets.reweighter.parameters(), start))
        assert np.isfinite(stats.reward_mean)
    assert nets.reward_baseline is None and moved["per_crop"] > 1e-3
    assert moved["batch_wide"] < 1e-6  # Adam rescales a rounding-level gradient; it stays at rounding level
