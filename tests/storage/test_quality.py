"""storage.quality: per-annotator checks, the sequential outlier test and the report; numbers worked out by hand."""

import json
import math
import random
import re

import pytest

from storage.agreement import CATEGORIES, PairVote, Rate, categories_by_pair
from storage.quality import (
    REASON_CODES,
    OutlierEvidence,
    QualityThresholds,
    annotator_outlier,
    annotator_report,
    flip_likelihood_ratio,
    outlier_evidence,
    peer_agreement,
    smoothed_distribution,
)
from tests.storage.test_agreement import VOTES, by

BY_PAIR = {1: {"ann": "a", "bob": "a", "cy": "a"}, 2: {"ann": "b", "bob": "b", "cy": "a"}}
BY_PAIR |= {3: {"ann": "a", "bob": "b", "cy": "b"}, 4: {"ann": "tie", "bob": "tie"}, 5: {"ann": "a", "cy": "both_bad"}}


def test_by_pair_table():
    assert categories_by_pair(VOTES) == BY_PAIR  # the canonical table in test_agreement


def test_smoothed_distribution():
    # N = 3 others, a 2 and b 1: (N_c + 1) / (N + 4) -> a 3/7, b 2/7, tie 1/7, both_bad 1/7
    assert smoothed_distribution(["a", "a", "b"]) == pytest.approx(
        {"a": 3 / 7, "b": 2 / 7, "tie": 1 / 7, "both_bad": 1 / 7}
    )
    assert smoothed_distribution([]) == {c: 0.25 for c in CATEGORIES}


def test_flip_likelihood_ratio():
    # others a, a: q(a) = 3/6, q(b) = 1/6 -> voting a: (1/6)/(3/6) = 1/3, voting b: 3, tie maps to itself: 1
    assert flip_likelihood_ratio("a", ["a", "a"]) == pytest.approx(1 / 3)
    assert flip_likelihood_ratio("b", ["a", "a"]) == pytest.approx(3)
    assert flip_likelihood_ratio("tie", ["a", "a"]) == 1


def test_likelihood_ratio_has_mean_one_under_the_null():
    # E_q[L] = Σ_c q(c) q(flip c) / q(c) = Σ_c q(flip c) = 1: why the wealth is a martingale under the null
    others = ["a", "a", "b", "tie"]
    q = smoothed_distribution(others)
    assert sum(q[c] * flip_likelihood_ratio(c, others) for c in CATEGORIES) == pytest.approx(1)


def test_outlier_evidence_hand_computed():
    assert outlier_evidence([]) == OutlierEvidence(0.0, 0, 0)
    # one ratio 3: bettors end at 1 + 2λ = 1.5, 2, 2.5, 3, each with a quarter: W = 9/4
    assert outlier_evidence([3.0]).score == pytest.approx(math.log10(9 / 4))
    # ratios 1/3 then 3: per bettor (1 - 2λ/3)(1 + 2λ) = 5/6*3/2, 2/3*2, 1/2*5/2, 1/3*3 = 5/4, 4/3, 5/4, 1
    # W_1 = (5/6 + 2/3 + 1/2 + 1/3)/4 = 7/12 < 1; W_2 = (5/4 + 4/3 + 5/4 + 1)/4 = 29/24, the maximum
    assert outlier_evidence([1 / 3, 3.0, 1.0]) == OutlierEvidence(pytest.approx(math.log10(29 / 24)), 2, 3)


def test_outlier_evidence_does_not_overflow():
    # 2000 votes of L = 3: the λ = 1 bettor alone holds 3^2000 / 4, log10 = 2000 * 0.4771 - 0.6021 = 953.6
    assert outlier_evidence([3.0] * 2000).score == pytest.approx(2000 * math.log10(3) - math.log10(4), rel=1e-9)


def test_annotator_outlier_on_fixture():
    # ann, pairs 1-5: others (a,a) -> L = 1/3; (b,a) -> q(a) = q(b): 1; (b,b) voting a -> 3; tie -> 1;
    # (both_bad) voting a -> q(b)/q(a) = (1/5)/(1/5) = 1. Ratios 1/3, 1, 3, 1, 1: max W = 29/24 at vote 3.
    assert annotator_outlier(by("ann"), BY_PAIR) == OutlierEvidence(pytest.approx(math.log10(29 / 24)), 3, 5)
    lone = PairVote(9, "dan", "left", True)  # nobody else voted on pair 9: not scored
    assert annotator_outlier([lone], BY_PAIR | {9: {"dan": "a"}}) == OutlierEvidence(0.0, 0, 0)


def test_peer_agreement_on_fixture():
    # ann: p1 others a,a -> a, match; p2 b,a tied, skipped; p3 b,b -> b, ann a; p4 tie, match; p5 both_bad, ann a
    assert peer_agreement(by("ann"), BY_PAIR) == Rate(0.5, 4)
    # bob: p1 a match; p2 (b, a) and p3 (a, b) tied, skipped; p4 tie match -> 2/2
    assert peer_agreement(by("bob"), BY_PAIR) == Rate(1.0, 2)
    # cy: p1 a match; p2 b,b -> b, cy a; p3 tied; p5 a, cy both_bad -> 1/3
    assert peer_agreement(by("cy"), BY_PAIR) == Rate(1 / 3, 3)


def test_report_on_fixture():
    deltas, gold = {1: 0.5, 2: -1.0, 3: 0.0, 5: 2.0}, {1: "a", 4: "tie", 5: "both_bad"}
    report = annotator_report(VOTES, deltas=deltas, gold=gold)
    assert report.krippendorff_alpha == pytest.approx(5 / 14)  # test_agreement.test_alpha_on_fixture
    assert [(k.a, k.b) for k in report.pairwise_kappa] == [("ann", "bob"), ("ann", "cy"), ("bob", "cy")]
    assert report.model_agreement == Rate(0.75, 10)
    ann = report.annotators[0]
    assert (ann.name, ann.votes, ann.left_rate, ann.left_rate_p, ann.median_seconds) == ("ann", 5, 0.5, 1.0, 4.5)
    assert (ann.peer_agreement, ann.model_agreement, ann.gold_accuracy) == pytest.approx((0.5, 0.875, 2 / 3))
    assert ann.outlier_score == pytest.approx(math.log10(29 / 24))
    # Five votes each: every check is short of its minimum, so nobody is flagged.
    assert [(a.name, a.flagged, a.reasons) for a in report.annotators] == [(n, False, []) for n in ("ann", "bob", "cy")]


def test_to_json_is_plain():
    payload = annotator_report(VOTES, deltas={1: 1.0}).to_json()
    assert json.loads(json.dumps(payload)) == payload
    assert payload["krippendorff_alpha"] == pytest.approx(5 / 14)
    keys = {"name", "votes", "left_rate", "left_rate_p", "median_seconds", "model_agreement", "flagged", "reasons"}
    assert keys <= payload["annotators"][0].keys()
    assert payload["pairwise_kappa"][0] == {"a": "ann", "b": "bob", "kappa": pytest.approx(7 / 11), "n": 4}
    assert annotator_report(VOTES).to_json()["model_agreement"] is None


def _shown(category: str, left_is_a: bool) -> str:
    """The as-shown choice that canonicalises to `category` (the inverse of canonical_category)."""
    if category in ("a", "b"):
        return "left" if (category == "a") == left_is_a else "right"
    return category


# --- flags -----------------------------------------------------------------------------------------------------


def test_left_clicker_is_flagged_for_position_bias():
    # 19 left and 1 right: p = (1 + 20 + 20 + 1)/2^20 = 4.0e-05 <= 0.01, with 20 >= 10 decisive votes
    votes = [PairVote(pair, "clicker", "right" if pair == 0 else "left", pair % 2 == 0, 5.0) for pair in range(20)]
    (clicker,) = annotator_report(votes).annotators
    assert clicker.flagged and clicker.reason_codes == ["position_bias"]
    assert clicker.reasons == ["left on 19 of 20 decisive votes (p=4e-05)"]


def test_fast_annotator_is_flagged():
    votes = [PairVote(pair, "quick", ("left", "right")[pair % 2], True, 0.8) for pair in range(12)]
    (quick,) = annotator_report(votes).annotators
    assert quick.reason_codes == ["too_fast"]
    assert quick.reasons == ["median 0.8 s per vote over 12 timed votes, under 2 s"]


def test_low_gold_accuracy_is_flagged():
    # 10 gold pairs, all gold "a"; votes a on pairs 0-4, b on 5-9: 5/10 = 50% < 60% (left on 6 of 10: p = 0.75)
    votes = [PairVote(p, "g", _shown("a" if p < 5 else "b", p % 2 == 0), p % 2 == 0, 5.0) for p in range(10)]
    (annotator,) = annotator_report(votes, gold=dict.fromkeys(range(10), "a")).annotators
    assert annotator.gold_accuracy == 0.5
    assert annotator.reason_codes == ["low_gold_accuracy"]
    assert annotator.reasons == ["gold accuracy 5 of 10 (50%), under 60%"]


def _simulate(seed: int, *, contrarian: bool, n_pairs: int = 120, per_pair: int = 4) -> list[PairVote]:
    """Six honest annotators (votes drawn from each pair's true preference), plus one contrarian if asked.

    Pair k has strength s ~ N(0, 2): P(a) = 0.9·σ(s), P(b) = 0.9 − P(a), P(tie) = 0.06, P(both_bad) = 0.04.
    The contrarian always picks the candidate the true preference rejects. Layouts are random.
    """
    rng = random.Random(seed)
    names = [f"honest{i}" for i in range(6)] + (["contrarian"] if contrarian else [])
    votes = []
    for pair in range(n_pairs):
        p_a = 0.9 / (1 + math.exp(-rng.gauss(0, 2)))
        for name in rng.sample(names, per_pair):
            if name == "contrarian":
                category = "b" if p_a > 0.45 else "a"
            else:
                category = rng.choices(CATEGORIES, weights=(p_a, 0.9 - p_a, 0.06, 0.04))[0]
            left_is_a = rng.random() < 0.5
            votes.append(PairVote(pair, name, _shown(category, left_is_a), left_is_a, rng.uniform(3, 20)))
    return votes


def test_honest_annotators_are_not_flagged():
    report = annotator_report(_simulate(0, contrarian=False))
    assert [a.reasons for a in report.annotators] == [[]] * 6
    assert max(a.outlier_score for a in report.annotators) < 3  # log10(1 / 0.001)
    assert min(a.peer_agreement for a in report.annotators) > 0.6


def test_contrarian_is_flagged_by_the_outlier_test():
    report = annotator_report(_simulate(0, contrarian=True))
    contrarian, *honest = report.annotators
    assert contrarian.name == "contrarian" and contrarian.flagged
    assert contrarian.outlier_score > 3
    assert contrarian.reason_codes == ["low_peer_agreement", "outlier"]
    assert re.fullmatch(
        r"prefers the candidate the others rejected: evidence 10\^\d+\.\d after \d+ of \d+ votes with peers "
        r"\(flag at 10\^3\.0\)",
        contrarian.reasons[1],
    )
    assert set(contrarian.reason_codes) <= set(REASON_CODES)
    assert not any(a.flagged for a in honest)


# --- thresholds ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"left_rate_alpha": 0.0}, "left_rate_alpha = 0.0; use a significance level in (0, 1)"),
        ({"outlier_alpha": 1.5}, "outlier_alpha = 1.5; use a significance level in (0, 1)"),
        ({"min_peer_agreement": -0.1}, "min_peer_agreement = -0.1; use a share in [0, 1]"),
        ({"min_gold_accuracy": 2}, "min_gold_accuracy = 2; use a share in [0, 1]"),
        ({"min_votes": 0}, "min_votes = 0; use a whole number of votes >= 1"),
        ({"min_gold_votes": 2.5}, "min_gold_votes = 2.5; use a whole number"),
        ({"min_median_seconds": -1.0}, "min_median_seconds = -1.0; use a finite number of seconds >= 0"),
    ],
)
def test_thresholds_refuse_bad_values(changes, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        QualityThresholds(**changes)


def test_report_refuses_empty_votes():
    with pytest.raises(ValueError, match="no votes given"):
        annotator_report([])
