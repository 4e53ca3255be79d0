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
    alignment_fd,
    alignment_jvp,
    alignment_loop,
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
