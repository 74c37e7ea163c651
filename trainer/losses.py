"""Losses of the joint reward model, as pure functions of tensors.

`L = L_pref + λ · L_lm` (DESIGN.md §2). The preference term is Davidson's (1970) extension of Bradley–Terry to
ties: with `Δ = r_i − r_j` and a tie parameter `ν ≥ 0`,

    P(i ≻ j) = e^{Δ/2} / Z,   P(j ≻ i) = e^{−Δ/2} / Z,   P(tie) = ν / Z,   Z = e^{Δ/2} + e^{−Δ/2} + ν.

At `ν = 0` it is exactly Bradley–Terry (`P(i ≻ j) = σ(Δ)`). *tie* and *both bad* votes are both scored with
`P(tie)`; see docs/method.md for why.

With an uncertainty head each reward is Gaussian, `r ~ N(μ, σ²)`, so `Δ ~ N(Δμ, s²)` with `s² = σ_i² + σ_j²`, and a
vote's probability is the expectation of Davidson's probability over Δ. `gaussian_davidson_nll` computes it by
Gauss–Hermite quadrature (`HERMITE_NODES` nodes, error < 1e-4 in the NLL over the allowed σ range), for every outcome,
ties included; `uncertain_davidson_nll` is the closed-form alternative, the probit approximation `E[σ(Δ)] ≈ σ(Δμ·κ)`,
`κ = 1 / sqrt(1 + π/8 · s²)`, applied to Davidson's margin (exact in the limit for Bradley–Terry, but it makes a tie
*more* likely as σ grows, where the true expectation makes it less likely). Dimension heads add a masked Davidson loss
per dimension (`dimension_nll`). See docs/training.md, "The uncertainty and dimension heads".
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F

IGNORE_INDEX = -100
LOG_SIGMA_CLAMP = (-4.0, 1.0)  # = trainer.heads.LOG_SIGMA_RANGE (a test keeps them equal); clamps raw inputs here
HERMITE_NODES = 32  # Gauss–Hermite nodes: NLL error < 1e-4 for s = sqrt(σ_i² + σ_j²) up to 2·e^1 (the clamp's top)
_HERMITE_X, _HERMITE_W = np.polynomial.hermite.hermgauss(HERMITE_NODES)  # ∫ e^{-x²} f(x) dx ≈ Σ w_k f(x_k)
UncertaintyLoss = Literal["gauss_hermite", "probit"]


@dataclass
class LossBreakdown:
    """The joint loss and its parts (scalars; `total` carries the graph)."""

    total: torch.Tensor
    pref: torch.Tensor
    lm: torch.Tensor
    n_pairs: int
    n_ties: int
    dims: torch.Tensor | None = None  # the dimension heads' loss (before its weight); None without them


@dataclass
class DimensionPairs:
    """Dimension-head scores of the chosen and rejected sequences and the votes' per-dimension labels."""

    chosen: torch.Tensor  # (B, D)
    rejected: torch.Tensor  # (B, D)
    labels: torch.Tensor  # (B, D): +1 the chosen edit is better on that dimension, -1 the rejected one, 0 the same
    mask: torch.Tensor  # (B, D) bool: False where the vote did not rate that dimension


def bradley_terry(delta: torch.Tensor) -> torch.Tensor:
    """Per-pair NLL `−log σ(Δ)` for decisive votes, Δ = r(chosen) − r(rejected)."""
    return F.softplus(-delta)  # = -log σ(Δ), stable for large |Δ|


def _davidson_log_z(delta: torch.Tensor, nu: float) -> torch.Tensor:
    """`log(e^{Δ/2} + e^{−Δ/2} + ν)` computed stably; shape of `delta`."""
    half = delta / 2
    log_nu = torch.full_like(delta, math.log(nu) if nu > 0 else -math.inf)
    return torch.logsumexp(torch.stack([half, -half, log_nu]), dim=0)


def davidson_probabilities(delta: torch.Tensor, nu: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(P(win), P(loss), P(tie)) of the first item under Davidson's model; they sum to 1."""
    _check_nu(nu)
    log_z = _davidson_log_z(delta, nu)
    p_win = torch.exp(delta / 2 - log_z)
    p_loss = torch.exp(-delta / 2 - log_z)
    p_tie = torch.exp(math.log(nu) - log_z) if nu > 0 else torch.zeros_like(delta)
    return p_win, p_loss, p_tie


def davidson_nll(delta: torch.Tensor, is_tie: torch.Tensor, nu: float) -> torch.Tensor:
    """Per-pair NLL: `−log P(win)` where `is_tie` is False, `−log P(tie)` where it is True."""
    _check_nu(nu)
    log_z = _davidson_log_z(delta, nu)  # (B,)
    nll_win = log_z - delta / 2
    if nu == 0:
        if bool(is_tie.any()):
            raise ValueError("Tie votes need tie_nu > 0 (ν = 0 is plain Bradley–Terry: ties get probability 0).")
        return nll_win
    nll_tie = log_z - math.log(nu)
    return torch.where(is_tie, nll_tie, nll_win)


def delta_variance(log_sigma_chosen: torch.Tensor, log_sigma_rejected: torch.Tensor) -> torch.Tensor:
    """`s² = σ_c² + σ_r²` (B,), the variance of Δ, with log σ clamped to `LOG_SIGMA_CLAMP` first."""
    low, high = LOG_SIGMA_CLAMP
    return sum((2 * ls.float().clamp(low, high)).exp() for ls in (log_sigma_chosen, log_sigma_rejected))


def probit_factor(log_sigma_chosen: torch.Tensor, log_sigma_rejected: torch.Tensor) -> torch.Tensor:
    """`κ = 1 / sqrt(1 + π/8 · (σ_c² + σ_r²))` (B,)."""
    return torch.rsqrt(1 + math.pi / 8 * delta_variance(log_sigma_chosen, log_sigma_rejected))


def gaussian_davidson_nll(
    delta_mu: torch.Tensor,
    log_sigma_chosen: torch.Tensor,
    log_sigma_rejected: torch.Tensor,
    is_tie: torch.Tensor,
    nu: float,
) -> torch.Tensor:
    """Per-pair `−log E[P(vote | Δ)]`, Δ ~ N(Δμ, σ_c² + σ_r²), by Gauss–Hermite quadrature (computed in log space)."""
    _check_nu(nu)
    if nu == 0 and bool(is_tie.any()):
        raise ValueError("Tie votes need tie_nu > 0 (ν = 0 is plain Bradley–Terry: ties get probability 0).")
    nodes = torch.as_tensor(_HERMITE_X, dtype=torch.float32, device=delta_mu.device)  # (K,)
    log_w = torch.as_tensor(np.log(_HERMITE_W / math.sqrt(math.pi)), dtype=torch.float32, device=delta_mu.device)
    spread = (2 * delta_variance(log_sigma_chosen, log_sigma_rejected)).sqrt()  # (B,) √2·s: Δ_k = Δμ + √2·s·x_k
    deltas = delta_mu.float()[:, None] + spread[:, None] * nodes  # (B, K)
    log_z = _davidson_log_z(deltas, nu)  # (B, K)
    log_p = deltas / 2 - log_z  # log P(win | Δ_k)
    if nu > 0:
        log_p = torch.where(is_tie[:, None], math.log(nu) - log_z, log_p)
    return -torch.logsumexp(log_p + log_w, dim=1)  # (B,)


def uncertain_davidson_nll(
    delta_mu: torch.Tensor,
    log_sigma_chosen: torch.Tensor,
    log_sigma_rejected: torch.Tensor,
    is_tie: torch.Tensor,
    nu: float,
) -> torch.Tensor:
    """Per-pair Davidson NLL of the probit-scaled margin `Δμ · κ`: the vote's probability with Gaussian rewards."""
    return davidson_nll(delta_mu * probit_factor(log_sigma_chosen, log_sigma_rejected), is_tie, nu)


UNCERTAINTY_LOSSES = {"gauss_hermite": gaussian_davidson_nll, "probit": uncertain_davidson_nll}


def dimension_nll(pairs: DimensionPairs, nu: float) -> torch.Tensor:
    """Mean over the rated dimensions of each one's masked mean Davidson NLL; 0 (on the graph) when none is rated."""
    delta = pairs.chosen.float() - pairs.rejected.float()  # (B, D)
    signed = torch.where(pairs.labels < 0, -delta, delta)  # the better side first: a loss is a win of the other side
    mask = pairs.mask.bool()
    if not bool(mask.any()):
        return delta.sum() * 0.0
    nll = davidson_nll(signed[mask], pairs.labels[mask] == 0, nu)  # (N,) over the rated (pair, dimension) cells
    column = mask.nonzero()[:, 1]  # (N,) each cell's dimension
    counts = torch.bincount(column, minlength=delta.shape[1])  # (D,)
    sums = torch.zeros(delta.shape[1], device=delta.device).index_add(0, column, nll)  # (D,)
    rated = counts > 0
    return (sums[rated] / counts[rated]).mean()


def lm_nll(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean token NLL over positions whose label is not -100; logits (..., V), labels (...) already aligned."""
    logits = logits.reshape(-1, logits.shape[-1]).float()  # (N, V)
    labels = labels.reshape(-1)  # (N,)
    if not bool((labels != IGNORE_INDEX).any()):
        return logits.sum() * 0.0  # no rationale tokens: zero, still on the graph
    return F.cross_entropy(logits, labels, ignore_index=IGNORE_INDEX, reduction="mean")


def joint_loss(
    rewards_chosen: torch.Tensor,
    rewards_rejected: torch.Tensor,
    is_tie: torch.Tensor,
    lm_loss: torch.Tensor | None,
    lm_weight: float,
    *,
    tie_nu: float = 1.0,
    log_sigma: tuple[torch.Tensor, torch.Tensor] | None = None,
    uncertainty_loss: UncertaintyLoss = "gauss_hermite",
    dimensions: DimensionPairs | None = None,
    dimension_weight: float = 0.0,
) -> LossBreakdown:
    """`L_pref + λ·L_lm (+ w·L_dims)`: mean Davidson NLL over pairs (its expectation over Gaussian rewards when
    `log_sigma` = (chosen, rejected) is given: `uncertainty_loss`), the weighted rationale NLL (λ = 0: discriminative)
    and the dimension heads' loss."""
    if rewards_chosen.shape != rewards_rejected.shape or rewards_chosen.shape != is_tie.shape:
        raise ValueError(
            f"rewards_chosen {tuple(rewards_chosen.shape)}, rewards_rejected {tuple(rewards_rejected.shape)} and "
            f"is_tie {tuple(is_tie.shape)} must all be (B,)."
        )
    if lm_weight < 0:
        raise ValueError(f"lm_weight must be >= 0, got {lm_weight}.")
    if dimension_weight < 0:
        raise ValueError(f"dimension_weight must be >= 0, got {dimension_weight}.")
    delta = rewards_chosen.float() - rewards_rejected.float()  # (B,)
    if log_sigma is None:
        pref = davidson_nll(delta, is_tie.bool(), tie_nu).mean()
    elif uncertainty_loss in UNCERTAINTY_LOSSES:
        pref = UNCERTAINTY_LOSSES[uncertainty_loss](delta, *log_sigma, is_tie.bool(), tie_nu).mean()
    else:
        raise ValueError(f"uncertainty_loss must be one of {sorted(UNCERTAINTY_LOSSES)}, got {uncertainty_loss!r}.")
    lm = lm_loss.float() if lm_loss is not None else torch.zeros((), device=pref.device)
    total = pref + lm_weight * lm if lm_weight > 0 else pref
    dims = dimension_nll(dimensions, tie_nu) if dimensions is not None else None
    if dims is not None:
        total = total + dimension_weight * dims
    return LossBreakdown(
        total=total,
        pref=pref.detach(),
        lm=lm.detach(),
        n_pairs=int(delta.numel()),
        n_ties=int(is_tie.sum()),
        dims=None if dims is None else dims.detach(),
    )


def _check_nu(nu: float) -> None:
    if not nu >= 0 or math.isinf(nu):
        raise ValueError(f"tie_nu must be a finite number >= 0, got {nu}.")
