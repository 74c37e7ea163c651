"""Losses of the joint reward model, as pure functions of tensors.

`L = L_pref + λ · L_lm` (DESIGN.md §2). The preference term is Davidson's (1970) extension of Bradley–Terry to
ties: with `Δ = r_i − r_j` and a tie parameter `ν ≥ 0`,

    P(i ≻ j) = e^{Δ/2} / Z,   P(j ≻ i) = e^{−Δ/2} / Z,   P(tie) = ν / Z,   Z = e^{Δ/2} + e^{−Δ/2} + ν.

At `ν = 0` it is exactly Bradley–Terry (`P(i ≻ j) = σ(Δ)`). *tie* and *both bad* votes are both scored with
`P(tie)`; see docs/method.md for why.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

IGNORE_INDEX = -100


@dataclass
class LossBreakdown:
    """The joint loss and its parts (scalars; `total` carries the graph)."""

    total: torch.Tensor
    pref: torch.Tensor
    lm: torch.Tensor
    n_pairs: int
    n_ties: int


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
) -> LossBreakdown:
    """`L_pref + λ·L_lm`: mean Davidson NLL over pairs plus the weighted rationale NLL (λ = 0: discriminative)."""
    if rewards_chosen.shape != rewards_rejected.shape or rewards_chosen.shape != is_tie.shape:
        raise ValueError(
            f"rewards_chosen {tuple(rewards_chosen.shape)}, rewards_rejected {tuple(rewards_rejected.shape)} and "
            f"is_tie {tuple(is_tie.shape)} must all be (B,)."
        )
    if lm_weight < 0:
        raise ValueError(f"lm_weight must be >= 0, got {lm_weight}.")
    delta = rewards_chosen.float() - rewards_rejected.float()  # (B,)
    pref = davidson_nll(delta, is_tie.bool(), tie_nu).mean()
    lm = lm_loss.float() if lm_loss is not None else torch.zeros((), device=pref.device)
    total = pref + lm_weight * lm if lm_weight > 0 else pref
    return LossBreakdown(
        total=total, pref=pref.detach(), lm=lm.detach(), n_pairs=int(delta.numel()), n_ties=int(is_tie.sum())
    )


def _check_nu(nu: float) -> None:
    if not nu >= 0 or math.isinf(nu):
        raise ValueError(f"tie_nu must be a finite number >= 0, got {nu}.")
