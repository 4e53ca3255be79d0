"""Per-crop alignment d_i = < g_v , grad_theta l_i(theta_{t-1}) > without per-sample gradients.

g_v is the gradient of the validation loss at the NEW parameters theta_t; l_i is crop
i's loss at the OLD parameters theta_{t-1}. A positive d_i means a step along crop i's
gradient would also have lowered the validation loss. Three estimators:

- ``fd`` (default): finite difference along g_v,
  d_i ~ [l_i(theta_{t-1} + h g_v) - l_i(theta_{t-1})] / h. It reuses the per-crop losses
  of the inner forward, so it costs one extra no-grad forward of the n crops, whatever n.
- ``jvp``: one forward-mode pass, ``torch.func.jvp`` of (l_1..l_n)(theta) along g_v at
  theta_{t-1}: exact, all d_i at once, about the cost of a forward plus a backward.
- ``loop``: n backward passes, one per crop. The exact reference, for tests only.

benchmarks/step_cost.py measured ``fd`` as the cheapest (docs/benchmarks.md), hence the default.

Every estimator takes the direction as given: ``bild.alignment_space: adam`` passes P g_v
(``adam_preconditioner``) instead of g_v, so d_i = < P g_v , grad l_i > (pipeline/bild/step.py).
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import torch
from torch import nn
from torch.func import functional_call, jvp

__all__ = ["ALIGNMENT_SPACES", "ESTIMATORS", "Params", "adam_preconditioner", "adam_step_jacobian", "per_crop_l1",
           "alignment_fd", "alignment_jvp", "alignment_loop"]

ESTIMATORS = ("fd", "jvp", "loop")
ALIGNMENT_SPACES = ("sgd", "adam", "adam_exact")

Params = dict[str, torch.Tensor]


def per_crop_l1(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """l_i = mean |f(x_i) - y_i| over one crop's pixels: (n,3,H,W) x2 -> (n,)."""
    return (pred - target).abs().flatten(1).mean(1)


def _adam_parameters(model: nn.Module, opt: torch.optim.Optimizer) -> Iterator[tuple[str, torch.Tensor, dict, dict]]:
    """(name, parameter, its Adam state (empty before its first gradient), its param group) per trained parameter."""
    group_of = {p: g for g in opt.param_groups for p in g["params"]}
    for name, p in model.named_parameters():
        if p.requires_grad:
            yield name, p, opt.state.get(p, {}), group_of[p]


def adam_preconditioner(model: nn.Module, opt: torch.optim.Optimizer) -> Params | None:
    """P = 1 / (sqrt(v_hat) + eps) per parameter, from the Adam second moment ``opt`` holds now; None before its first step.

    v_hat = v / (1 - beta_2^s) with s the optimiser's own step count: the denominator torch's Adam
    (no amsgrad) divides by. A parameter Adam holds no state for (it never had a gradient) gets
    P = 1: its gradients are zero, so any finite P leaves d unchanged.
    """
    if not any("exp_avg_sq" in state for state in opt.state.values()):
        return None
    precond: Params = {}
    for name, p, state, group in _adam_parameters(model, opt):
        if "exp_avg_sq" not in state:
            precond[name] = torch.ones_like(p)
            continue
        correction = 1 - group["betas"][1] ** float(state["step"])
        precond[name] = 1.0 / ((state["exp_avg_sq"] / correction).sqrt() + group["eps"])
    return precond


def adam_step_jacobian(model: nn.Module, opt: torch.optim.Optimizer) -> Params:
    """J = d u / d g per parameter, u = m_hat / (sqrt(v_hat) + eps) the Adam step ``opt`` has just taken on gradient g.

    Adam is elementwise, so the exact derivative of its step with respect to this step's
    gradient is diagonal: with c = (1 - beta_1) / (1 - beta_1^t), D = sqrt(v_hat) + eps,
    J = c / D - (1 - beta_2) / (1 - beta_2^t) m_hat g / (sqrt(v_hat) D^2), all from the state after
    the step and the gradient still in ``p.grad``. Nothing is held fixed; where v_hat = 0 the
    gradient is 0 and so is the second term. A parameter without state or gradient gets J = 1.
    """
    jacobian: Params = {}
    for name, p, state, group in _adam_parameters(model, opt):
        if "exp_avg_sq" not in state or p.grad is None:
            jacobian[name] = torch.ones_like(p)
            continue
        (beta1, beta2), t = group["betas"], float(state["step"])
        second = 1 - beta2**t
        root = (state["exp_avg_sq"] / second).sqrt()
        denom = root + group["eps"]
        m_hat = state["exp_avg"] / (1 - beta1**t)
        through_v = torch.where(root > 0, (1 - beta2) / second * m_hat * p.grad / (root * denom**2), 0.0)
        jacobian[name] = (1 - beta1) / (1 - beta1**t) / denom - through_v
    return jacobian


def _crop_losses(model: nn.Module, params: Params, hazy: torch.Tensor, clear: torch.Tensor) -> torch.Tensor:
    return per_crop_l1(functional_call(model, params, (hazy,)), clear)


def _norm(tensors: Params) -> float:
    # One fused kernel per call: a Python loop over a big backbone's hundreds of tensors
    # costs more than the forward it serves.
    return float(torch.linalg.vector_norm(torch.stack(torch._foreach_norm(list(tensors.values())))))


def alignment_fd(
    model: nn.Module,
    old_params: Params,
    grad_val: Params,
    hazy: torch.Tensor,
    clear: torch.Tensor,
    old_losses: torch.Tensor | None = None,
    *,
    central: bool = False,
    rel_step: float | None = None,
) -> torch.Tensor:
    """Finite difference of the n crop losses along g_v: one extra forward (two if central).

    The step h makes the perturbation h*|g_v| a fixed fraction ``rel_step`` of (1 + |theta|),
    sqrt(eps) for one-sided and cbrt(eps) for central differences, the textbook balance of
    truncation against rounding error in the parameters' dtype.
    """
    dtype = next(iter(old_params.values())).dtype
    eps = torch.finfo(dtype).eps
    if rel_step is None:
        rel_step = eps ** (1 / 3) if central else math.sqrt(eps)
    g_norm = _norm(grad_val)
    if g_norm == 0.0:
        return torch.zeros(hazy.shape[0], device=hazy.device, dtype=dtype)
    h = rel_step * (1.0 + _norm(old_params)) / g_norm

    def shifted(sign: float) -> Params:
        moved = torch._foreach_add(list(old_params.values()), [grad_val[k] for k in old_params], alpha=sign * h)
        return dict(zip(old_params, moved))

    with torch.no_grad():
        plus = _crop_losses(model, shifted(1.0), hazy, clear)
        if central:
            minus = _crop_losses(model, shifted(-1.0), hazy, clear)
            return (plus - minus) / (2 * h)
        if old_losses is None:
            old_losses = _crop_losses(model, old_params, hazy, clear)
        return (plus - old_losses.detach()) / h


def alignment_jvp(
    model: nn.Module, old_params: Params, grad_val: Params, hazy: torch.Tensor, clear: torch.Tensor
) -> torch.Tensor:
    """Exact d (n,) in one forward-mode pass: the directional derivative of (l_1..l_n) along g_v."""
    tangents = {k: grad_val[k] for k in old_params}
    _, d = jvp(lambda p: _crop_losses(model, p, hazy, clear), (old_params,), (tangents,))
    return d.detach()


def alignment_loop(
    model: nn.Module, old_params: Params, grad_val: Params, hazy: torch.Tensor, clear: torch.Tensor
) -> torch.Tensor:
    """Reference: one backward per crop, then a dot product with g_v. O(n) backwards; tests only."""
    params = {k: p.detach().requires_grad_(True) for k, p in old_params.items()}
    rows = []
    for i in range(hazy.shape[0]):
        loss = _crop_losses(model, params, hazy[i : i + 1], clear[i : i + 1]).sum()
        grads = torch.autograd.grad(loss, list(params.values()), allow_unused=True)
        dot = sum((g * grad_val[k]).sum() for k, g in zip(params, grads) if g is not None)
        rows.append(torch.as_tensor(dot, dtype=hazy.dtype, device=hazy.device))
    return torch.stack(rows).detach()

