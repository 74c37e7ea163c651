"""Held-out report of the extra heads (trainer/heads.py): is σ informative, do the dimension scores agree with votes.

`trainer.evaluate.score_pairs` keeps each pair's σ and dimension scores (left, right as shown) in a `HeadPairScores`
when the model has those heads; `report_scores` adds `heads_report(...)` under the report's "heads" key. Both reuse
`metrics.pairwise_accuracy` (strict votes; Δ = 0 counts one half).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from trainer.heads import shown_sign
from trainer.metrics import pairwise_accuracy


@dataclass
class HeadPairScores:
    """Per pair, left and right as shown: σ (P,) and dimension scores (P, D); None where the model lacks the head."""

    left_sigma: np.ndarray | None
    right_sigma: np.ndarray | None
    left_dims: np.ndarray | None
    right_dims: np.ndarray | None
    dimension_names: tuple[str, ...]


def pair_head_scores(
    heads: dict[str, torch.Tensor], left: np.ndarray, right: np.ndarray, names: tuple[str, ...]
) -> HeadPairScores | None:
    """The extra heads' outputs per scored row ("log_sigma" (N,), "dimension_scores" (N, D)) picked for each pair's
    left and right rows (P,); None when the model has no extra head."""
    if not heads:
        return None
    sigma = heads["log_sigma"].double().exp().numpy() if "log_sigma" in heads else None  # (N,)
    dims = heads["dimension_scores"].double().numpy() if "dimension_scores" in heads else None  # (N, D)
    return HeadPairScores(
        None if sigma is None else sigma[left],
        None if sigma is None else sigma[right],
        None if dims is None else dims[left],
        None if dims is None else dims[right],
        names,
    )


def heads_report(heads: HeadPairScores, delta: np.ndarray, labels: Sequence[str], ratings: Sequence[Any]) -> dict:
    """ "uncertainty": σ's spread and the accuracy of the pairs below / above the median pair σ; "dimensions": per
    dimension, the accuracy of its scores on the pairs whose vote rated it (`ratings`: each vote's dimension_scores)."""
    report: dict[str, Any] = {}
    if heads.left_sigma is not None and heads.right_sigma is not None:
        report["uncertainty"] = _uncertainty(heads.left_sigma, heads.right_sigma, np.asarray(delta), list(labels))
    if heads.left_dims is not None and heads.right_dims is not None:
        dims_delta = heads.left_dims - heads.right_dims  # (P, D) left − right, as the reward's Δ
        report["dimensions"] = {
            name: _dimension_accuracy(dims_delta[:, j], [_rated(r, name) for r in ratings])
            for j, name in enumerate(heads.dimension_names)
        }
    return report


def _uncertainty(left: np.ndarray, right: np.ndarray, delta: np.ndarray, labels: list[str]) -> dict:
    sigma = np.concatenate([left, right])
    pair_sigma = np.sqrt(left**2 + right**2)  # σ of Δ
    strict = np.array([label in ("left", "right") for label in labels], dtype=bool)
    median = float(np.median(pair_sigma[strict])) if strict.any() else float("nan")
    low, high = strict & (pair_sigma <= median), strict & (pair_sigma > median)
    return {
        "sigma_mean": float(sigma.mean()) if sigma.size else None,
        "sigma_min": float(sigma.min()) if sigma.size else None,
        "sigma_max": float(sigma.max()) if sigma.size else None,
        "accuracy_low_sigma": _accuracy(delta, labels, low),
        "accuracy_high_sigma": _accuracy(delta, labels, high),
        "n_low_sigma": int(low.sum()),
        "n_high_sigma": int(high.sum()),
    }


def _accuracy(delta: np.ndarray, labels: list[str], mask: np.ndarray) -> float | None:
    if not mask.any():
        return None
    return pairwise_accuracy(delta[mask], [label for label, m in zip(labels, mask, strict=True) if m])


def _rated(ratings: Any, name: str) -> str | None:
    """A vote's rating of one dimension as a label: "left", "right", "tie" (rated 0) or None (not rated)."""
    return {-1: "left", 1: "right", 0: "tie", None: None}[shown_sign(ratings, name)]


def _dimension_accuracy(delta: np.ndarray, labels: list[str | None]) -> dict[str, float | int | None]:
    rated = np.array([label in ("left", "right") for label in labels], dtype=bool)
    accuracy = _accuracy(delta, [label or "tie" for label in labels], rated)
    return {"accuracy": accuracy, "n": int(rated.sum())}
