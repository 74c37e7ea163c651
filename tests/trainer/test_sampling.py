"""The next-pair priority mix against hand-computed values."""

from __future__ import annotations

import math

import pytest

from trainer.sampling import (
    COVERAGE_ONLY,
    PRESETS,
    UNCERTAINTY_ONLY,
    UNSCORED_UNCERTAINTY,
    PairState,
    SamplingWeights,
    coverage_term,
    disagreement_term,
    pair_priorities,
    uncertainty_term,
    win_probability,
)


def state(pair_id: int = 1, vote_count: int = 0, delta: float | None = None, sigma: float | None = None, **votes):
    return PairState(pair_id=pair_id, vote_count=vote_count, delta=delta, sigma=sigma, **votes)


@pytest.mark.parametrize(
    ("votes", "target", "expected"), [(0, 2, 1.0), (1, 2, 0.5), (2, 2, 0.0), (5, 2, 0.0), (1, 3, 2 / 3), (0, 1, 1.0)]
)
def test_coverage_term(votes, target, expected):
    assert coverage_term(votes, target) == pytest.approx(expected)


def test_uncertainty_term_hand_values():
    # σ(0) = 1/2 → 1 − |0| = 1;  σ(±ln 3) = 3/4 or 1/4 → 1 − |±1/2| = 1/2
    assert uncertainty_term(0.0) == pytest.approx(1.0)
    assert uncertainty_term(math.log(3.0)) == pytest.approx(0.5)
    assert uncertainty_term(-math.log(3.0)) == pytest.approx(0.5)
    assert uncertainty_term(math.log(3.0), None) == uncertainty_term(math.log(3.0), 0.0)


def test_uncertainty_widens_with_sigma():
    # σ_Δ² = 24/π → sqrt(1 + π/8 · 24/π) = sqrt(4) = 2, so Δ = 2 ln 3 reads as ln 3: p = 3/4, term 1/2.
    sigma = math.sqrt(24 / math.pi)
    assert win_probability(2 * math.log(3.0), sigma) == pytest.approx(0.75)
    assert uncertainty_term(2 * math.log(3.0), sigma) == pytest.approx(0.5)
    assert uncertainty_term(2 * math.log(3.0), sigma) > uncertainty_term(2 * math.log(3.0))  # 1 − |2·9/10 − 1| = 0.2
    assert uncertainty_term(2 * math.log(3.0)) == pytest.approx(0.2)


def test_uncertainty_of_unscored_pair_is_neutral_and_extremes_are_stable():
    assert uncertainty_term(None) == UNSCORED_UNCERTAINTY == 0.5
    assert uncertainty_term(1000.0) == pytest.approx(0.0)
    assert uncertainty_term(-1000.0) == pytest.approx(0.0)


@pytest.mark.parametrize(
    ("a", "b", "tie", "expected"),
    [
        (1, 1, 0, 1.0),  # an even split
        (2, 0, 0, 0.0),  # agreement
        (0, 3, 0, 0.0),
        (1, 0, 1, 0.5),  # a tie counts half: 1.5 against 0.5 → 1 − 1/2
        (0, 0, 2, 1.0),  # both call it even
        (2, 1, 0, 2 / 3),  # 1 − 1/3
        (3, 1, 1, 0.6),  # 1 − 2/5
        (1, 0, 0, 0.0),  # one vote cannot disagree
        (0, 0, 1, 0.0),
        (0, 0, 0, 0.0),
    ],
)
def test_disagreement_term(a, b, tie, expected):
    assert disagreement_term(a, b, tie) == pytest.approx(expected)


def test_priority_is_the_weighted_sum():
    weights = SamplingWeights(coverage=1.0, uncertainty=2.0, disagreement=0.5)
    pair = state(7, vote_count=1, delta=math.log(3.0), votes_a=1, votes_tie=1)
    # coverage 1 − 1/2 = 0.5; uncertainty 0.5; disagreement 0.5 → 0.5 + 2·0.5 + 0.5·0.5
    assert pair_priorities([pair], weights, overlap_target=2) == {7: pytest.approx(1.75)}


def test_unscored_pair_gets_the_neutral_uncertainty():
    priorities = pair_priorities([state(1, delta=None), state(2, delta=0.0)], UNCERTAINTY_ONLY, overlap_target=2)
    assert priorities == {1: pytest.approx(0.5), 2: pytest.approx(1.0)}


def test_pure_coverage_is_fewest_votes_first():
    counts = [2, 0, 1, 0, 3, 1]
    states = [state(i, vote_count=n, delta=0.1 * i, votes_a=n) for i, n in enumerate(counts, start=1)]
    priorities = pair_priorities(states, COVERAGE_ONLY, overlap_target=3)
    by_priority = sorted(priorities, key=lambda pair_id: (-priorities[pair_id], pair_id))  # the query's order
    by_votes = sorted(priorities, key=lambda pair_id: (counts[pair_id - 1], pair_id))
    assert by_priority == by_votes == [2, 4, 3, 6, 1, 5]
    assert priorities[1] == pytest.approx(1 / 3) and priorities[5] == 0.0


def test_uncertainty_only_ranks_the_models_coin_flips_first():
    states = [state(1, delta=2.0), state(2, delta=-0.1), state(3, delta=0.5), state(4, delta=-3.0)]
    priorities = pair_priorities(states, UNCERTAINTY_ONLY, overlap_target=2)
    assert sorted(priorities, key=lambda pair_id: -priorities[pair_id]) == [2, 3, 1, 4]


def test_scaling_the_weights_keeps_the_order():
    states = [state(i, vote_count=i % 3, delta=0.3 * i - 1, votes_a=i % 2, votes_b=1) for i in range(1, 9)]
    base = pair_priorities(states, SamplingWeights(1.0, 0.5, 0.25), overlap_target=3)
    scaled = pair_priorities(states, SamplingWeights(4.0, 2.0, 1.0), overlap_target=3)
    assert scaled == {pair_id: pytest.approx(4 * value) for pair_id, value in base.items()}


def test_presets():
    assert PRESETS == {"coverage": COVERAGE_ONLY, "uncertainty": UNCERTAINTY_ONLY}
    assert (COVERAGE_ONLY.coverage, COVERAGE_ONLY.uncertainty, COVERAGE_ONLY.disagreement) == (1.0, 0.0, 0.0)


@pytest.mark.parametrize(
    "weights", [(-1.0, 1.0, 0.0), (0.0, 0.0, 0.0), (math.nan, 1.0, 0.0), (1.0, math.inf, 0.0), (True, 0.0, 0.0)]
)
def test_weights_are_validated(weights):
    with pytest.raises(ValueError, match="SamplingWeights"):
        SamplingWeights(*weights)


@pytest.mark.parametrize(
    "fields",
    [
        {"vote_count": -1},
        {"votes_a": -2},
        {"votes_tie": 1.5},
        {"delta": math.inf},
        {"sigma": -0.1},
        {"sigma": math.nan},
    ],
)
def test_pair_state_is_validated(fields):
    with pytest.raises(ValueError, match="PairState"):
        state(3, **fields)


def test_bad_target_and_duplicate_pairs_are_refused():
    with pytest.raises(ValueError, match="overlap_target"):
        pair_priorities([state(1)], COVERAGE_ONLY, overlap_target=0)
    with pytest.raises(ValueError, match="appears twice"):
        pair_priorities([state(1), state(1)], COVERAGE_ONLY, overlap_target=2)
