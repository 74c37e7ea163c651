"""Evaluation metrics for reward models: pure functions on plain arrays (no model, no database).

Conventions, shared by every metric here (docs/evaluation.md, "Evaluation metrics", explains them):

- `delta[i] = r(left) - r(right)` for vote `i`, with left and right the candidates *as shown* to the annotator.
- Labels are "left" | "right" | "tie" | "both_bad". A *strict* vote is "left" or "right"; a *human tie* is
  "tie" or "both_bad" (both mean "neither is preferred").
- On a strict vote, `delta == 0` scores one half in pairwise accuracy (the expected score of a coin flip), and
  counts as a model tie in accuracy-with-ties (|Δ| ≤ ε holds for every ε ≥ 0).
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np

from trainer.bootstrap import bootstrap_ci as bootstrap_ci  # re-exported: tests and callers import it from here
from trainer.bootstrap import interval_function
from trainer.bootstrap import paired_task_bootstrap as paired_task_bootstrap  # re-exported, as bootstrap_ci

LABELS = ("left", "right", "tie", "both_bad")
_SIGN = {"left": 1, "right": -1, "tie": 0, "both_bad": 0}
TIE_COUNT_KEYS = ("C", "D", "T_h", "T_m", "T_hm")


# --- inputs ---------------------------------------------------------------------------------------------------


def human_sign(labels: Sequence[str]) -> np.ndarray:
    """Vote labels → +1 (left preferred), -1 (right preferred), 0 (tie or both bad)."""
    return np.array([_label_sign(label) for label in labels], dtype=np.int64)


def _label_sign(label: str) -> int:
    try:
        return _SIGN[str(label)]
    except KeyError:
        raise ValueError(f"unknown vote label {label!r}; expected one of {LABELS}") from None


def _as_deltas(values: Any, name: str = "delta") -> np.ndarray:
    """A finite 1-D float64 array, or a ValueError that says what is wrong."""
    d = np.asarray(values, dtype=np.float64)
    if d.ndim != 1:
        raise ValueError(f"{name} must be 1-D (one score difference per vote), got shape {d.shape}")
    if not np.all(np.isfinite(d)):
        raise ValueError(f"{name} contains NaN or inf; check the scorer's outputs before evaluating")
    return d


def _check_votes(delta: Any, labels: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """(delta as float64, human signs), validated to be the same length."""
    d, s = _as_deltas(delta), human_sign(labels)
    if len(d) != len(s):
        raise ValueError(f"delta has {len(d)} entries but labels has {len(s)}; pass one label per vote")
    return d, s


def _agreement(d: np.ndarray, s: np.ndarray) -> np.ndarray:
    """Per strict vote: 1 if the model prefers the human's side, 1/2 if Δ = 0, 0 if it prefers the other."""
    return (np.sign(d) * s + 1.0) / 2.0


# --- 1. pairwise accuracy --------------------------------------------------------------------------------------


def pairwise_accuracy(delta: Any, labels: Sequence[str]) -> float:
    """Accuracy on strict votes (ties and both_bad excluded); Δ = 0 counts one half; NaN with no strict vote."""
    return _pairwise_accuracy(*_check_votes(delta, labels))


def _pairwise_accuracy(d: np.ndarray, s: np.ndarray) -> float:
    strict = s != 0
    return float(np.mean(_agreement(d[strict], s[strict]))) if strict.any() else math.nan


# --- 2. accuracy with ties (EditReward-Bench) ------------------------------------------------------------------


class TieAccuracy(NamedTuple):
    """Accuracy with ties at threshold `epsilon`, with the five counts it is made of."""

    accuracy: float
    epsilon: float
    counts: dict[str, int]


def tie_counts(delta: Any, labels: Sequence[str], epsilon: float) -> dict[str, int]:
    """C, D, T_h, T_m, T_hm when the model predicts a tie wherever |Δ| ≤ epsilon."""
    return _tie_counts(*_check_votes(delta, labels), epsilon)


def _tie_counts(d: np.ndarray, s: np.ndarray, epsilon: float) -> dict[str, int]:
    model = np.where(np.abs(d) <= epsilon, 0, np.sign(d))
    human_tie, model_tie = s == 0, model == 0
    both_strict = ~human_tie & ~model_tie
    return {
        "C": int(np.sum(both_strict & (model == s))),
        "D": int(np.sum(both_strict & (model != s))),
        "T_h": int(np.sum(human_tie & ~model_tie)),
        "T_m": int(np.sum(~human_tie & model_tie)),
        "T_hm": int(np.sum(human_tie & model_tie)),
    }


def accuracy_with_ties(delta: Any, labels: Sequence[str], epsilon: float | None = None) -> TieAccuracy:
    """EditReward-Bench accuracy (C + T_hm) / all votes, at the best ε ≥ 0 on |Δ| (or at `epsilon` if given)."""
    if epsilon is not None and not epsilon >= 0:
        raise ValueError(f"epsilon must be >= 0 (the model predicts a tie when |delta| <= epsilon), got {epsilon}")
    return _accuracy_with_ties(*_check_votes(delta, labels), epsilon)


def _accuracy_with_ties(d: np.ndarray, s: np.ndarray, epsilon: float | None = None) -> TieAccuracy:
    if len(d) == 0:
        return TieAccuracy(math.nan, 0.0 if epsilon is None else float(epsilon), dict.fromkeys(TIE_COUNT_KEYS, 0))
    eps = _best_epsilon(d, s) if epsilon is None else float(epsilon)
    counts = _tie_counts(d, s, eps)
    return TieAccuracy((counts["C"] + counts["T_hm"]) / len(d), eps, counts)


def _best_epsilon(d: np.ndarray, s: np.ndarray) -> float:
    """Smallest ε among 0 and the |Δ_i| maximising C(ε) + T_hm(ε): one sort, then cumulative counts."""
    abs_d = np.abs(d)
    order = np.argsort(abs_d, kind="stable")
    sorted_abs = abs_d[order]
    # Vote i turning into a model tie (ε ≥ |Δ_i|) adds 1 to T_hm if the human tied, removes 1 from C if concordant.
    concordant = (s != 0) & (np.sign(d) == s)
    gain = (s == 0).astype(np.int64) - concordant.astype(np.int64)
    cumulative_gain = np.concatenate([[0], np.cumsum(gain[order])])  # (n + 1,)
    candidates = np.unique(np.concatenate([[0.0], sorted_abs]))
    n_tied = np.searchsorted(sorted_abs, candidates, side="right")  # votes with |Δ| ≤ ε, per candidate ε
    return float(candidates[int(np.argmax(cumulative_gain[n_tied]))])  # argmax → the first (smallest) maximiser


# --- 3. group accuracy -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CandidateGroup:
    """One task's candidates: model scores by candidate id, and the task's votes as (left id, right id, label)."""

    scores: Mapping[Hashable, float]
    votes: Sequence[tuple[Hashable, Hashable, str]]


def human_ranking(votes: Sequence[tuple[Hashable, Hashable, str]]) -> list[Hashable] | None:
    """Best-to-worst order from pairwise majorities, or None unless they form a strict total order."""
    wins: dict[Hashable, int] = {}  # candidate → pairwise majorities won, in order of first appearance
    beats: dict[tuple[Hashable, Hashable], int] = {}  # (winner, loser) → strict votes
    for left, right, label in votes:
        wins.setdefault(left, 0)
        wins.setdefault(right, 0)
        sign = _label_sign(label)
        if sign and left != right:
            key = (left, right) if sign > 0 else (right, left)
            beats[key] = beats.get(key, 0) + 1
    candidates = list(wins)
    for i, a in enumerate(candidates):
        for b in candidates[i + 1 :]:
            margin = beats.get((a, b), 0) - beats.get((b, a), 0)
            if margin == 0:
                return None  # this pair has no strict majority (unvoted, only ties, or split evenly)
            wins[a if margin > 0 else b] += 1
    # A complete tournament is transitive exactly when its win counts are all distinct (k-1, ..., 1, 0).
    if len(set(wins.values())) != len(candidates):
        return None
    return sorted(candidates, key=lambda c: -wins[c])


def _group_outcome(group: CandidateGroup) -> tuple[float, float] | None:
    """(exact-order 0/1, mean pairwise agreement) for one group, or None if it does not qualify."""
    voted = {c for left, right, _ in group.votes for c in (left, right)}
    missing = sorted(map(repr, voted - set(group.scores)))
    if missing:
        raise ValueError(f"candidates {missing} have votes but no model score; score every voted candidate")
    ranking = human_ranking(group.votes) if len(voted) >= 3 else None
    if ranking is None:
        return None
    scores = np.array([float(group.scores[c]) for c in ranking])  # (k,) in human order, best first
    upper = np.triu_indices(len(ranking), k=1)
    diff = (scores[:, None] - scores[None, :])[upper]  # s(better) - s(worse), one per human-ordered pair
    agreement = (np.sign(diff) + 1.0) / 2.0
    return float(np.all(diff > 0)), float(agreement.mean())


def group_accuracy(groups: Sequence[CandidateGroup]) -> dict[str, float | int]:
    """Fraction of qualifying tasks ranked exactly right, and their mean within-task pairwise agreement."""
    return _group_summary(*_group_outcomes(groups))


def _group_outcomes(groups: Sequence[CandidateGroup]) -> tuple[np.ndarray, int]:
    """(G, 2) array of (exact, pairwise) for the qualifying groups, and how many groups were skipped."""
    outcomes = [_group_outcome(group) for group in groups]
    kept = np.array([o for o in outcomes if o is not None], dtype=np.float64).reshape(-1, 2)
    return kept, len(outcomes) - len(kept)


def _group_summary(kept: np.ndarray, n_skipped: int) -> dict[str, float | int]:
    return {
        "exact": float(kept[:, 0].mean()) if len(kept) else math.nan,
        "pairwise": float(kept[:, 1].mean()) if len(kept) else math.nan,
        "n_groups": len(kept),
        "n_skipped": n_skipped,
    }


# --- 4. calibration --------------------------------------------------------------------------------------------


def reliability_bins(delta: Any, labels: Sequence[str], n_bins: int = 10) -> list[dict[str, float | int | None]]:
    """Per confidence bin on strict votes: edges, count, mean confidence max(p, 1-p), accuracy; p = sigmoid(Δ)."""
    return _reliability_bins(*_check_votes(delta, labels), n_bins)


def _reliability_bins(d: np.ndarray, s: np.ndarray, n_bins: int) -> list[dict[str, float | int | None]]:
    if n_bins < 1:
        raise ValueError(f"n_bins must be >= 1, got {n_bins}")
    strict = s != 0
    d, s = d[strict], s[strict]
    confidence = 1.0 / (1.0 + np.exp(-np.abs(d)))  # max(p, 1 - p) = sigmoid(|Δ|), in [0.5, 1]
    correct = _agreement(d, s)
    edges = np.linspace(0.5, 1.0, n_bins + 1)
    index = np.clip(np.searchsorted(edges, confidence, side="right") - 1, 0, n_bins - 1)  # [lo, hi); last is closed
    rows: list[dict[str, float | int | None]] = []
    for b in range(n_bins):
        in_bin = index == b
        count = int(in_bin.sum())
        rows.append(
            {
                "lower": float(edges[b]),
                "upper": float(edges[b + 1]),
                "count": count,
                "confidence": float(confidence[in_bin].mean()) if count else None,
                "accuracy": float(correct[in_bin].mean()) if count else None,
            }
        )
    return rows


def expected_calibration_error(delta: Any, labels: Sequence[str], n_bins: int = 10) -> float:
    """ECE of p = sigmoid(Δ) on strict votes: Σ_b (n_b / n) |accuracy_b - confidence_b|; NaN with no strict vote."""
    return _ece(reliability_bins(delta, labels, n_bins))


def _ece(rows: list[dict[str, float | int | None]]) -> float:
    total = sum(row["count"] for row in rows)
    if total == 0:
        return math.nan
    return float(sum(row["count"] / total * abs(row["accuracy"] - row["confidence"]) for row in rows if row["count"]))


# --- 5. effective rank -----------------------------------------------------------------------------------------


def effective_rank(features: Any, center: bool = True) -> float:
    """Roy & Vetterli (2007) effective rank exp(entropy(s / sum(s))) of (N, H) features' singular values s.

    Mean-centred by default, so a constant offset shared by every feature vector (a common direction that says
    nothing about how the samples differ) is not counted; `center=False` is the textbook definition. 0.0 for an
    all-zero (after centring) matrix.
    """
    if hasattr(features, "detach"):  # a torch tensor (any dtype, any device)
        features = features.detach().float().cpu().numpy()
    x = np.asarray(features, dtype=np.float64)
    if x.ndim != 2:
        raise ValueError(f"features must be 2-D (N samples, H dims), got shape {x.shape}")
    if center:
        x = x - x.mean(axis=0, keepdims=True)
    singular = np.linalg.svd(x, compute_uv=False) if x.size else np.zeros(0)
    if singular.size == 0 or singular[0] <= 0:
        return 0.0
    # Singular values below the matrix_rank tolerance are rounding noise, not directions.
    singular = singular[singular > singular[0] * max(x.shape) * np.finfo(np.float64).eps]
    p = singular / singular.sum()
    return float(np.exp(-np.sum(p * np.log(p))))


# --- 6. instruction swap ---------------------------------------------------------------------------------------


def instruction_swap_accuracy(delta_original: Any, delta_swapped: Any) -> dict[str, float | int]:
    """Does the scorer read the instruction? Preference must hold under the original and flip under the swapped one.

    Each pair is (chosen, rejected) where the rejected edit is a correct edit for some *other* instruction.
    `delta_original[i] = r(chosen | original) - r(rejected | original)` should be > 0, and
    `delta_swapped[i] = r(chosen | other) - r(rejected | other)` should be < 0. A scorer that ignores the
    instruction gives delta_swapped == delta_original and so scores 0 on `both_correct`. Inequalities are strict:
    Δ = 0 is neither correct nor a flip. Returns `original_accuracy` (Δ_orig > 0), `flip_rate` (Δ_swap < 0),
    `both_correct` (both at once) and `n`; rates are NaN when there are no pairs.
    """
    original, swapped = _as_deltas(delta_original, "delta_original"), _as_deltas(delta_swapped, "delta_swapped")
    if len(original) != len(swapped):
        raise ValueError(f"delta_original has {len(original)} pairs but delta_swapped has {len(swapped)}")
    n = len(original)
    rate = (lambda mask: float(mask.mean())) if n else (lambda mask: math.nan)
    return {
        "original_accuracy": rate(original > 0),
        "flip_rate": rate(swapped < 0),
        "both_correct": rate((original > 0) & (swapped < 0)),
        "n": n,
    }


# --- 7. per-vote agreement (the promotion gate's input; its resampling is in trainer.bootstrap) ----------------


def strict_agreement(delta: Any, labels: Sequence[str]) -> np.ndarray:
    """Per strict vote, in order (ties and both_bad left out): 1 if Δ sides with the human, ½ if Δ = 0, else 0."""
    d, s = _check_votes(delta, labels)
    strict = s != 0
    return _agreement(d[strict], s[strict])


# --- 8. the report ---------------------------------------------------------------------------------------------


def evaluation_report(
    delta: Any,
    labels: Sequence[str],
    *,
    task_ids: Sequence[Hashable] | None = None,
    features: Any = None,
    groups: Sequence[CandidateGroup] | None = None,
    swap_deltas: tuple[Any, Any] | None = None,
    n_bins: int = 10,
    n_bootstrap: int = 1000,
    seed: int = 0,
) -> dict[str, Any]:
    """Every metric above in one JSON-serialisable dict (NaN → None), with 95% bootstrap intervals.

    Intervals resample whole tasks when `task_ids` is given (votes on one task are not independent), votes
    otherwise; `n_bootstrap=0` leaves them out. Sections whose inputs are absent are None.
    """
    d, s = _check_votes(delta, labels)
    if task_ids is not None and len(task_ids) != len(d):
        raise ValueError(f"task_ids has {len(task_ids)} entries but there are {len(d)} votes; pass one per vote")
    ci = interval_function(len(d), task_ids, n_bootstrap, seed)
    ties = _accuracy_with_ties(d, s)
    bins = _reliability_bins(d, s, n_bins)
    report = {
        "n_votes": len(d),
        "n_strict": int(np.sum(s != 0)),
        "n_tasks": len(set(task_ids)) if task_ids is not None else None,
        "pairwise_accuracy": {"value": _pairwise_accuracy(d, s), "ci95": ci(lambda i: _pairwise_accuracy(d[i], s[i]))},
        "accuracy_with_ties": {**ties._asdict(), "ci95": ci(lambda i: _accuracy_with_ties(d[i], s[i]).accuracy)},
        "calibration": {
            "ece": _ece(bins),
            "ci95": ci(lambda i: _ece(_reliability_bins(d[i], s[i], n_bins))),
            "bins": bins,
        },
        "effective_rank": effective_rank(features) if features is not None else None,
        "group_accuracy": _group_section(groups, n_bootstrap, seed) if groups is not None else None,
        "instruction_swap": _swap_section(swap_deltas, n_bootstrap, seed) if swap_deltas is not None else None,
        "bootstrap": {"n_resamples": n_bootstrap, "seed": seed, "unit": "vote" if task_ids is None else "task"},
    }
    return _jsonable(report)


def _group_section(groups: Sequence[CandidateGroup], n_bootstrap: int, seed: int) -> dict[str, Any]:
    kept, n_skipped = _group_outcomes(groups)  # (G, 2)
    ci = interval_function(len(kept), None, n_bootstrap, seed)
    return {
        **_group_summary(kept, n_skipped),
        "exact_ci95": ci(lambda i: kept[i, 0].mean()),
        "pairwise_ci95": ci(lambda i: kept[i, 1].mean()),
    }


def _swap_section(swap_deltas: tuple[Any, Any], n_bootstrap: int, seed: int) -> dict[str, Any]:
    original, swapped = (np.asarray(x, dtype=np.float64) for x in swap_deltas)
    ci = interval_function(len(original), None, n_bootstrap, seed)
    return {
        **instruction_swap_accuracy(original, swapped),
        "both_correct_ci95": ci(lambda i: instruction_swap_accuracy(original[i], swapped[i])["both_correct"]),
    }


def _jsonable(value: Any) -> Any:
    """Plain Python types all the way down, NaN as None (so `json.dumps(..., allow_nan=False)` succeeds)."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value
