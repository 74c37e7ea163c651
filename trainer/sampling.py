"""Which pair to offer next: a priority per pair mixed from coverage, model uncertainty and annotator disagreement.

The worker writes `pairs.priority` from `pair_priorities` after each model promotion; the next-pair query offers
the fewest-filled pairs first and, within one `filled` level, the highest priority (storage/repository.py). Every
term is in [0, 1] and the priority is their weighted sum, so scaling all weights together changes no order:

- **coverage** `1 − min(vote_count, target) / target`: 1 for an unvoted pair, 0 once it has `overlap_target` votes;
  alone (`COVERAGE_ONLY`) it ranks pairs by fewest votes first, what the queue did before priorities;
- **uncertainty** `1 − |2p − 1|` with `p = σ(Δ / sqrt(1 + π/8 · σ_Δ²))`, the probability that A beats B under the
  active model (the probit approximation to the mean of a sigmoid over a Gaussian Δ; σ_Δ = 0 without an uncertainty
  head): 1 when the model is 50/50, → 0 when it is sure. A pair the model has not scored yet (added after the
  promotion) gets `UNSCORED_UNCERTAINTY` = 0.5, the middle of the range: it neither jumps the queue nor waits behind
  every scored pair until the next promotion scores it;
- **disagreement** `1 − |a − b| / (a + b + t)` over the earlier canonical votes (a tie counts half to each side):
  the same "how close to 50/50" reading as the uncertainty term, taken from the annotators instead of the model;
  1 for an even split (a vs b, or all ties: the annotators call the pair even), 0 when they all agree on a side,
  and 0 below `MIN_VOTES_FOR_DISAGREEMENT` votes (one vote cannot disagree with itself).

See docs/active-learning.md for the design and the benchmark (bench/active_learning.py).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

UNSCORED_UNCERTAINTY = 0.5  # an unscored pair: the middle of the uncertainty term's range (see the module doc)
MIN_VOTES_FOR_DISAGREEMENT = 2
_PROBIT_SCALE = math.pi / 8  # σ(x / sqrt(1 + π/8 · s²)) ≈ E[σ(x + s·z)], z ~ N(0, 1) (MacKay 1992)


@dataclass(frozen=True)
class SamplingWeights:
    """How much each term counts in a pair's priority (non-negative, not all zero)."""

    coverage: float
    uncertainty: float
    disagreement: float

    def __post_init__(self) -> None:
        for name in ("coverage", "uncertainty", "disagreement"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value < 0:
                raise ValueError(f"SamplingWeights.{name} must be a finite number >= 0, got {value!r}.")
        if self.coverage == self.uncertainty == self.disagreement == 0:
            raise ValueError(
                "SamplingWeights are all 0, which ranks nothing; give at least one term a weight > 0 "
                "(COVERAGE_ONLY = coverage 1, the others 0, is the queue's plain 'fewest votes first')."
            )


COVERAGE_ONLY = SamplingWeights(coverage=1.0, uncertainty=0.0, disagreement=0.0)  # fewest votes first
UNCERTAINTY_ONLY = SamplingWeights(coverage=0.0, uncertainty=1.0, disagreement=0.0)  # the model's 50/50 pairs first
PRESETS: dict[str, SamplingWeights] = {"coverage": COVERAGE_ONLY, "uncertainty": UNCERTAINTY_ONLY}


@dataclass(frozen=True)
class PairState:
    """What the priority of one pair depends on.

    `delta` is r(A) − r(B) from the active scorer (A = candidate_a, the lower id; None when unscored), `sigma` the
    combined std of that Δ when the model has an uncertainty head (else None), `votes_*` the earlier votes in
    canonical orientation (a "both bad" vote is the caller's to count as a tie or leave out).
    """

    pair_id: int
    vote_count: int
    delta: float | None
    sigma: float | None
    votes_a: int = 0
    votes_b: int = 0
    votes_tie: int = 0

    def __post_init__(self) -> None:
        for name in ("vote_count", "votes_a", "votes_b", "votes_tie"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"PairState.{name} of pair {self.pair_id} must be a whole number >= 0, got {value!r}.")
        if self.delta is not None and not math.isfinite(self.delta):
            raise ValueError(f"PairState.delta of pair {self.pair_id} must be finite or None, got {self.delta!r}.")
        if self.sigma is not None and not (math.isfinite(self.sigma) and self.sigma >= 0):
            raise ValueError(f"PairState.sigma of pair {self.pair_id} must be >= 0 or None, got {self.sigma!r}.")


def _sigmoid(x: float) -> float:
    if x >= 0:
        return 1.0 / (1.0 + math.exp(-x))
    z = math.exp(x)  # no overflow for very negative x
    return z / (1.0 + z)


def win_probability(delta: float, sigma: float | None = None) -> float:
    """P(A beats B) for a model Δ = r(A) − r(B) with std `sigma` (None or 0: the plain sigmoid of Δ)."""
    s = sigma or 0.0
    return _sigmoid(delta / math.sqrt(1.0 + _PROBIT_SCALE * s * s))


def coverage_term(vote_count: int, overlap_target: int) -> float:
    """1 − min(votes, target) / target: 1 for an unvoted pair, 0 once it has its target."""
    return 1.0 - min(vote_count, overlap_target) / overlap_target


def uncertainty_term(delta: float | None, sigma: float | None = None) -> float:
    """1 − |2p − 1| for p = `win_probability`: 1 when the model is 50/50; `UNSCORED_UNCERTAINTY` when unscored."""
    if delta is None:
        return UNSCORED_UNCERTAINTY
    return 1.0 - abs(2.0 * win_probability(delta, sigma) - 1.0)


def disagreement_term(votes_a: int, votes_b: int, votes_tie: int) -> float:
    """1 − |a − b| / (a + b + ties), a tie counting half to each side; 0 below two votes."""
    total = votes_a + votes_b + votes_tie
    if total < MIN_VOTES_FOR_DISAGREEMENT:
        return 0.0
    return 1.0 - abs(votes_a - votes_b) / total


def _priority(state: PairState, weights: SamplingWeights, overlap_target: int) -> float:
    """The weighted sum of one pair's three terms."""
    return (
        weights.coverage * coverage_term(state.vote_count, overlap_target)
        + weights.uncertainty * uncertainty_term(state.delta, state.sigma)
        + weights.disagreement * disagreement_term(state.votes_a, state.votes_b, state.votes_tie)
    )


def pair_priorities(states: Iterable[PairState], weights: SamplingWeights, *, overlap_target: int) -> dict[int, float]:
    """`pairs.priority` for each pair (higher is offered first within a `filled` level), by pair id."""
    if isinstance(overlap_target, bool) or not isinstance(overlap_target, int) or overlap_target < 1:
        raise ValueError(f"overlap_target must be a whole number >= 1 (JRM_OVERLAP_TARGET), got {overlap_target!r}.")
    priorities: dict[int, float] = {}
    for state in states:
        if state.pair_id in priorities:
            raise ValueError(f"pair {state.pair_id} appears twice in the states; pass one PairState per pair.")
        priorities[state.pair_id] = _priority(state, weights, overlap_target)
    return priorities
