"""storage.agreement: every expected number is worked out by hand in a comment."""

import math
import re

import pytest

from storage.agreement import (
    Kappa,
    LeftRate,
    PairVote,
    PairwiseKappa,
    Rate,
    alpha_nominal,
    binomial_two_sided_p,
    canonical_category,
    cohen_kappa,
    coincidences,
    gold_accuracy,
    krippendorff_alpha_nominal,
    left_rate_test,
    median_seconds,
    model_agreement,
    pairwise_kappas,
)

# Three annotators on five pairs. Columns: pair, annotator, choice as shown, left_is_a, seconds -> canonical.
ROWS = [
    (1, "ann", "left", True, 4.0),  # a
    (1, "bob", "right", False, 6.0),  # a (A was shown on the right)
    (1, "cy", "left", True, 3.0),  # a
    (2, "ann", "right", True, 5.0),  # b
    (2, "bob", "left", False, 7.0),  # b
    (2, "cy", "right", False, 2.0),  # a
    (3, "ann", "left", True, 3.0),  # a
    (3, "bob", "right", True, None),  # b
    (3, "cy", "left", False, 9.0),  # b
    (4, "ann", "tie", True, None),  # tie
    (4, "bob", "tie", False, 5.0),  # tie
    (5, "ann", "right", False, 8.0),  # a
    (5, "cy", "both_bad", True, 4.0),  # both_bad
]
# Canonical table:   pair 1   2   3   4    5
#               ann       a   b   a   tie  a
#               bob       a   b   b   tie  -
#               cy        a   a   b   -    both_bad
VOTES = [PairVote(*row) for row in ROWS]


def by(name: str) -> list[PairVote]:
    return [vote for vote in VOTES if vote.annotator == name]


@pytest.mark.parametrize(
    ("choice", "left_is_a", "expected"),
    [
        ("left", True, "a"),
        ("left", False, "b"),
        ("right", True, "b"),
        ("right", False, "a"),
        ("tie", True, "tie"),
        ("tie", False, "tie"),
        ("both_bad", True, "both_bad"),
        ("both_bad", False, "both_bad"),
    ],
)
def test_canonical_category(choice, left_is_a, expected):
    assert canonical_category(choice, left_is_a=left_is_a) == expected
    assert PairVote(1, "ann", choice, left_is_a).category == expected


def test_opposite_layouts_same_candidate_agree():
    # ann saw A on the left and clicked left; bob saw A on the right and clicked right: both chose A.
    votes = [PairVote(1, "ann", "left", True), PairVote(1, "bob", "right", False)]
    assert [v.category for v in votes] == ["a", "a"]
    assert pairwise_kappas(votes) == [PairwiseKappa("ann", "bob", None, 1)]  # one label only: p_e = 1


# --- Cohen's kappa -------------------------------------------------------------------------------------------


def test_cohen_kappa_hand_computed():
    # p_o = 3/4; rater 1: x 2, y 2; rater 2: x 1, y 3 -> p_e = (2*1 + 2*3)/16 = 1/2; kappa = (3/4 - 1/2)/(1/2) = 1/2
    assert cohen_kappa([("x", "x"), ("x", "y"), ("y", "y"), ("y", "y")]) == Kappa(0.5, 4)


def test_cohen_kappa_perfect_and_undefined():
    assert cohen_kappa([("a", "a"), ("b", "b")]) == Kappa(1.0, 2)  # p_o = 1, p_e = 1/2 -> 1
    assert cohen_kappa([]) == Kappa(None, 0)
    assert cohen_kappa([("a", "a"), ("a", "a")]) == Kappa(None, 2)  # p_e = 1: 0/0


def test_pairwise_kappas_on_fixture():
    # ann-bob on pairs 1-4: (a,a) (b,b) (a,b) (tie,tie): p_o = 3/4; ann a2 b1 tie1, bob a1 b2 tie1
    #   p_e = (2*1 + 1*2 + 1*1)/16 = 5/16; kappa = (12/16 - 5/16)/(11/16) = 7/11
    # ann-cy on pairs 1,2,3,5: (a,a) (b,a) (a,b) (a,both_bad): p_o = 1/4; ann a3 b1, cy a2 b1 bb1
    #   p_e = (3*2 + 1*1)/16 = 7/16; kappa = (4/16 - 7/16)/(9/16) = -1/3
    # bob-cy on pairs 1-3: (a,a) (b,a) (b,b): p_o = 2/3; bob a1 b2, cy a2 b1; p_e = (1*2 + 2*1)/9 = 4/9
    #   kappa = (6/9 - 4/9)/(5/9) = 2/5
    result = pairwise_kappas(VOTES)
    assert [(k.a, k.b, k.n) for k in result] == [("ann", "bob", 4), ("ann", "cy", 4), ("bob", "cy", 3)]
    assert [k.kappa for k in result] == pytest.approx([7 / 11, -1 / 3, 2 / 5])


def test_pairwise_kappas_skips_annotators_without_overlap():
    votes = [PairVote(1, "ann", "left", True), PairVote(2, "bob", "left", True)]
    assert pairwise_kappas(votes) == []


# --- Krippendorff's alpha --------------------------------------------------------------------------------------


def test_alpha_on_fixture():
    # Units (pairs): [a,a,a] [b,b,a] [a,b,b] [tie,tie] [a,both_bad]; o[c,k] += n_c * (n_k - [c=k]) / (m - 1):
    #   pair 1: o[a,a] += 3*2/2 = 3
    #   pair 2: o[b,b] += 2*1/2 = 1, o[a,b] += 1*2/2 = 1, o[b,a] += 1 (o[a,a] += 1*0)
    #   pair 3: same as pair 2: o[b,b] += 1, o[a,b] += 1, o[b,a] += 1
    #   pair 4: o[tie,tie] += 2*1/1 = 2;  pair 5: o[a,bb] += 1, o[bb,a] += 1
    # n_a = 3+2+1 = 6, n_b = 2+2 = 4, n_tie = 2, n_bb = 1, n = 13; off-diagonal Σ = 2+2+1+1 = 6
    # Σ_{c≠k} n_c n_k = 13² - (36 + 16 + 4 + 1) = 112; alpha = 1 - 12 * 6 / 112 = 5/14
    assert krippendorff_alpha_nominal(VOTES) == pytest.approx(5 / 14)


# Krippendorff (2011), "Computing Krippendorff's Alpha-Reliability", section C: 4 observers, 12 units, values
# 1-5, None = missing. Unit 12 has one value and is not pairable.
KRIPPENDORFF_2011 = [
    [1, 2, 3, 3, 2, 1, 4, 1, 2, None, None, None],
    [1, 2, 3, 3, 2, 2, 4, 1, 2, 5, None, 3],
    [None, 3, 3, 3, 2, 3, 4, 2, 2, 5, 1, None],
    [1, 2, 3, 3, 2, 4, 4, 1, 2, 5, 1, None],
]


def test_alpha_textbook_example():
    units = [[v for v in unit if v is not None] for unit in zip(*KRIPPENDORFF_2011, strict=True)]
    matrix = coincidences(units)
    # The paper's coincidence matrix margins: n_1..n_5 = 9, 13, 10, 5, 3 (n = 40); off-diagonal Σ = 8 (its
    # cells: o[1,2] = o[2,3] = 4/3, o[1,3] = o[1,4] = o[2,4] = o[3,4] = 1/3, and their mirrors).
    totals = [sum(matrix[c, k] for k in range(1, 6)) for c in range(1, 6)]
    assert totals == pytest.approx([9, 13, 10, 5, 3])
    assert matrix[1, 2] == pytest.approx(4 / 3) and matrix[1, 3] == pytest.approx(1 / 3)
    # Σ_{c≠k} n_c n_k = 1600 - (81 + 169 + 100 + 25 + 9) = 1216; alpha = 1 - 39 * 8 / 1216 = 0.743 (the paper)
    assert alpha_nominal(units) == pytest.approx(1 - 39 * 8 / 1216)
    assert round(alpha_nominal(units), 3) == 0.743


def test_alpha_undefined():
    assert alpha_nominal([["a"], ["b"]]) is None  # no unit with two values
    assert alpha_nominal([["a", "a"], ["a", "a", "a"]]) is None  # one category: expected disagreement 0
    assert alpha_nominal([["a", "a"], ["b", "b"]]) == 1.0  # observed disagreement 0, expected > 0


# --- position bias ---------------------------------------------------------------------------------------------


def test_binomial_two_sided_hand_computed():
    # 19 of 20: C(20,19) = 20; counts no likelier: 0, 1, 19, 20 -> (1 + 20 + 20 + 1) / 2^20 = 42 / 1048576
    assert binomial_two_sided_p(19, 20) == 42 / 2**20  # 4.0e-05
    # 8 of 10: C(10,8) = 45; no likelier: 0,1,2,8,9,10 -> (1 + 10 + 45 + 45 + 10 + 1) / 1024 = 112/1024
    assert binomial_two_sided_p(8, 10) == 112 / 1024
    assert binomial_two_sided_p(5, 10) == 1.0  # the mode: every count is no likelier
    assert binomial_two_sided_p(0, 0) == 1.0


def test_binomial_matches_scipy():
    stats = pytest.importorskip("scipy.stats")
    for n in [*range(1, 31), 101, 500]:
        for k in {0, 1, n // 3, n // 2, n - 1, n}:
            assert binomial_two_sided_p(k, n) == pytest.approx(stats.binomtest(k, n).pvalue, rel=1e-9), (k, n)


def test_left_rate_on_fixture():
    # ann shown left, right, left, tie, right: left 2 of 4 decisive -> 1/2, the mode: p = 1
    assert left_rate_test(by("ann")) == LeftRate(2, 4, 0.5, 1.0)
    # bob: right, left, right, tie -> 1 of 3; C(3, i) = 1, 3, 3, 1 are all <= 3: p = 1
    assert left_rate_test(by("bob")) == LeftRate(1, 3, 1 / 3, 1.0)
    assert left_rate_test([PairVote(1, "ann", "tie", True)]) == LeftRate(0, 0, None, None)


# --- speed, model, gold ----------------------------------------------------------------------------------------


def test_median_seconds():
    assert median_seconds(by("ann")) == 4.5  # known times 4, 5, 3, 8 (pair 4 untimed) -> (4 + 5) / 2
    assert median_seconds(by("cy")) == 3.5  # 3, 2, 9, 4 -> (3 + 4) / 2
    assert median_seconds([PairVote(1, "ann", "tie", True)]) is None


def test_model_agreement_hand_computed():
    deltas = {1: 0.5, 2: -1.0, 3: 0.0, 5: 2.0}  # Δ = r(A) - r(B); pair 4 has no Δ (and holds only ties)
    result = model_agreement(VOTES, deltas)
    # ann: p1 a, Δ>0 -> 1; p2 b, Δ<0 -> 1; p3 a, Δ=0 -> 1/2; p5 a, Δ>0 -> 1; p4 tie left out: 3.5/4
    # bob: p1 a -> 1; p2 b -> 1; p3 b, Δ=0 -> 1/2: 2.5/3
    # cy: p1 a -> 1; p2 a, Δ<0 -> 0; p3 b, Δ=0 -> 1/2; p5 both_bad left out: 1.5/3
    assert result.per_annotator == {"ann": Rate(0.875, 4), "bob": Rate(2.5 / 3, 3), "cy": Rate(0.5, 3)}
    assert result.overall == Rate(0.75, 10)  # (3.5 + 2.5 + 1.5) / (4 + 3 + 3)


def test_model_agreement_without_decisive_votes():
    votes = [PairVote(4, "ann", "tie", True)]
    assert model_agreement(votes, {4: 1.0}).per_annotator == {"ann": Rate(None, 0)}


def test_gold_accuracy_hand_computed():
    gold = {1: "a", 4: "tie", 5: "both_bad"}
    # ann: p1 a ok, p4 tie ok, p5 a wrong -> 2/3; bob: p1, p4 ok -> 2/2; cy: p1 ok, p5 both_bad ok -> 2/2
    assert gold_accuracy(VOTES, gold) == {"ann": Rate(2 / 3, 3), "bob": Rate(1.0, 2), "cy": Rate(1.0, 2)}
    assert gold_accuracy(VOTES, {})["ann"] == Rate(None, 0)


# --- bad input -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: PairVote(1, "ann", "up", True), "choice 'up'; use one of left, right, tie, both_bad"),
        (lambda: PairVote(1, "", "left", True), "empty annotator"),
        (lambda: PairVote(1, "ann", "left", True, -1.0), "took -1.0 s"),
        (lambda: PairVote(1, "ann", "left", True, math.nan), "took nan s"),
        (lambda: pairwise_kappas([]), "no votes given"),
        (lambda: krippendorff_alpha_nominal([]), "no votes given"),
        (lambda: krippendorff_alpha_nominal([VOTES[0], VOTES[0]]), "'ann' voted twice on pair 1"),
        (lambda: left_rate_test(VOTES), "one annotator's votes; got 3"),
        (lambda: model_agreement(VOTES, {1: math.inf}), "NaN or inf"),
        (lambda: gold_accuracy(VOTES, {1: "left"}), "gold labels ['left'] are not canonical"),
        (lambda: binomial_two_sided_p(3, 2), "k must be in 0..n"),
    ],
)
def test_bad_input_is_a_clear_value_error(make, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        make()
