"""The reweighting policy f_phi: one score per (hazy, clear) training crop.

BILD sees the reweighter as a stochastic policy whose action is a crop's weight.
It only ever exists during training; a promoted model is the backbone alone.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

__all__ = ["FEATURE_NORMS", "WEIGHTINGS", "Reweighter", "build_reweighter", "crop_log_weights"]

WEIGHTINGS = ("softmax", "sigmoid")
FEATURE_NORMS = ("none", "batch")


class Reweighter(nn.Module):
    """A small strided CNN over the hazy and clear crops stacked (6 channels) -> one score.

    Kept deliberately cheap: it runs on every training crop of every BILD step, so its
    cost is part of the step-cost budget (docs/benchmarks.md, "Step cost").

    The defaults are the policy that follows a known reward on every seed measured (docs/experiments.md,
    "Does BILD learn?"):
    - ``score_bound=0``: unbounded scores; the ``uniform_kl`` regulariser bounds the weights.
      b > 0 maps scores into [-b, b] with a tanh (weight ratios up to e^(2b)).
    - ``feature_norm="batch"`` standardises the pooled features over the batch, so that the
      head's learning rate means the same whatever scale the convolutions start at.
    - ``pair_consistency=True`` adds ``local_correlation`` of the pair as three features: a
      wrong target is hard to see from pooled convolution features, easy from this.
    """

    def __init__(
        self, width: int = 16, depth: int = 3, score_bound: float = 0.0, feature_norm: str = "batch",
        pair_consistency: bool = True,
    ) -> None:
        super().__init__()
        if feature_norm not in FEATURE_NORMS:
            raise ValueError(f"reweighter feature_norm={feature_norm!r}; expected one of {', '.join(FEATURE_NORMS)}")
        if score_bound < 0:
            raise ValueError(f"reweighter score_bound={score_bound}; expected > 0, or 0 for unbounded scores")
        # Why the bound is an option, not the default: with the paper's entropy regulariser an
        # unbounded score lets a few Adam steps saturate the softmax, after which w_i ~ 0 gets no
        # gradient (R_i has a factor w_i) and not even the entropy brings the crop back. A tanh
        # bound stops that but has a trap of its own: the scores reach its flat ends within ~20
        # steps and the split freezes there. The KL barrier pulls a collapsing weight back instead
        # (docs/experiments.md). Centring costs nothing (softmax ignores a common shift).
        self.score_bound = score_bound
        layers: list[nn.Module] = []
        channels = 6
        for level in range(depth):
            out = width * (2 ** min(level, 2))
            layers += [nn.Conv2d(channels, out, 3, stride=2, padding=1), nn.LeakyReLU(0.1)]
            channels = out
        self.features = nn.Sequential(*layers)
        self.pair_consistency = pair_consistency
        channels += 3 if pair_consistency else 0
        self.feature_norm = nn.BatchNorm1d(channels, affine=False) if feature_norm == "batch" else nn.Identity()
        self.head = nn.Linear(channels, 1)
        # Start from uniform weights: every crop scores 0 until the rewards say otherwise.
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)

    def forward(self, hazy: torch.Tensor, clear: torch.Tensor) -> torch.Tensor:
        """(n,3,H,W) x2 -> scores (n,), relative to the batch (only differences matter to the weights)."""
        if hazy.shape[0] == 1:  # one crop: its weight is 1 whatever it scores (and batch statistics need two)
            return hazy.new_zeros(1)
        stacked = torch.cat([hazy, clear], dim=1)  # (n,6,H,W)
        pooled = F.adaptive_avg_pool2d(self.features(stacked), 1).flatten(1)  # (n,C)
        if self.pair_consistency:
            pooled = torch.cat([pooled, local_correlation(hazy, clear)], dim=1)  # (n,C+3)
        raw = self.head(self.feature_norm(pooled)).squeeze(1)  # (n,)
        centred = raw - raw.mean()
        if self.score_bound == 0:
            return centred
        return self.score_bound * torch.tanh(centred / self.score_bound)


def local_correlation(hazy: torch.Tensor, clear: torch.Tensor, window: int = 4) -> torch.Tensor:
    """Per-channel normalised cross-correlation of hazy and clear in window x window tiles, averaged: (n,3).

    Under the scattering model I = t J + A (1 - t), a tile with one t and A makes the hazy crop
    an affine function of the clear one, so a right pair scores near 1 however dense the haze.
    A misaligned pair, or a target from another scene, scores near 0.
    """
    def tile_mean(x: torch.Tensor) -> torch.Tensor:
        return F.avg_pool2d(x, window)

    mu_h, mu_c = tile_mean(hazy), tile_mean(clear)
    cov = tile_mean(hazy * clear) - mu_h * mu_c
    var_h, var_c = tile_mean(hazy * hazy) - mu_h**2, tile_mean(clear * clear) - mu_c**2
    return (cov / (var_h.clamp_min(0) * var_c.clamp_min(0) + 1e-6).sqrt()).mean((2, 3))


def build_reweighter(bild: Mapping[str, Any]) -> Reweighter:
    """The reweighter a config's ``bild`` block describes (a saved one through ``pipeline.config.saved_config``)."""
    return Reweighter(
        bild["reweighter_width"],
        bild["reweighter_depth"],
        bild["score_bound"],
        bild["reweighter_norm"],
        bild["pair_consistency"],
    )


def crop_log_weights(scores: torch.Tensor, *, temperature: float = 1.0, kind: str = "softmax") -> torch.Tensor:
    """Normalise scores s (n,) into log crop weights log w (n,), with sum(w) = n (mean weight 1).

    softmax: w = n * softmax(s / tau). sigmoid: w = n * sigma(s / tau) / sum sigma(s / tau).
    Keeping sum(w) = n holds the weighted loss on the scale of the plain loss. Working in
    log space keeps log w finite for the policy gradient even when a weight underflows.
    """
    n = scores.shape[0]
    log_n = math.log(n)
    if kind == "softmax":
        return log_n + torch.log_softmax(scores / temperature, dim=0)
    if kind == "sigmoid":
        log_gates = F.logsigmoid(scores / temperature)
        return log_n + log_gates - torch.logsumexp(log_gates, dim=0)
    raise ValueError(f"unknown weighting {kind!r}; expected one of {', '.join(WEIGHTINGS)}")
