"""Hand-checked tests for trainer.metrics: every expected number is worked out in a comment beside it."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from trainer.metrics import (
    CandidateGroup,
    accuracy_with_ties,
    bootstrap_ci,
    effective_rank,
    evaluation_report,
    expected_calibration_error,
    group_accuracy,
    human_ranking,
    human_sign,
    instruction_swap_accuracy,
    paired_task_bootstrap,
    pairwise_accuracy,
    reliability_bins,
    strict_agreement,
    tie_counts,
)

# The 6-vote fixture. delta = r(left) - r(right); human sign +1 left, -1 right, 0 tie/both_bad.
#   vote  delta  label     |delta|  human
#   0      2.0   left      2.0      +1
#   1     -1.0   left      1.0      +1
#   2      0.5   right     0.5      -1
#   3      0.2   tie       0.2       0
#   4     -0.1   both_bad  0.1       0
#   5      1.5   tie       1.5       0
DELTA = [2.0, -1.0, 0.5, 0.2, -0.1, 1.5]
LABELS = ["left", "left", "right", "tie", "both_bad", "tie"]


def test_human_sign_maps_labels_and_rejects_unknown_ones():
    assert human_sign(["left", "right", "tie", "both_bad"]).tolist() == [1, -1, 0, 0]
    with pytest.raises(ValueError, match="unknown vote label 'skip'"):
        human_sign(["left", "skip"])


def test_inputs_are_validated():
    with pytest.raises(ValueError, match="delta has 2 entries but labels has 1"):
        pairwise_accuracy([1.0, 2.0], ["left"])
    with pytest.raises(ValueError, match="NaN or inf"):
        pairwise_accuracy([1.0, math.nan], ["left", "right"])
    with pytest.raises(ValueError, match="epsilon must be >= 0"):
        accuracy_with_ties(DELTA, LABELS, epsilon=-0.1)


def test_pairwise_accuracy_excludes_ties():
    # Strict votes 0, 1, 2: vote 0 right (+2.0 vs left), vote 1 wrong (-1.0 vs left), vote 2 wrong (+0.5 vs right).
    # 1 / 3.
    assert pairwise_accuracy(DELTA, LABELS) == pytest.approx(1 / 3)


def test_pairwise_accuracy_counts_zero_delta_as_half():
    # right 1 + coin flip 0.5 + wrong 0 = 1.5 over 3 votes = 0.5
    assert pairwise_accuracy([1.0, 0.0, -1.0], ["left", "left", "left"]) == pytest.approx(0.5)


def test_pairwise_accuracy_is_nan_without_strict_votes():
    assert math.isnan(pairwise_accuracy([1.0, 2.0], ["tie", "both_bad"]))


def test_tie_counts_at_zero_epsilon():
    # ε = 0: the model is strict everywhere (no Δ is 0). C = vote 0; D = votes 1, 2; T_h = votes 3, 4, 5.
    assert tie_counts(DELTA, LABELS, 0.0) == {"C": 1, "D": 2, "T_h": 3, "T_m": 0, "T_hm": 0}


def test_accuracy_with_ties_on_six_votes():
    # (C + T_hm) / 6 at each candidate ε (model tie when |Δ| <= ε):
    #   ε=0    C=1 (v0)                     → 1/6
    #   ε=0.1  + v4 human tie → T_hm=1      → 2/6
    #   ε=0.2  + v3 human tie → T_hm=2      → 3/6
    #   ε=0.5  v2 was D, now T_m            → 3/6
    #   ε=1.0  v1 was D, now T_m            → 3/6
    #   ε=1.5  + v5 human tie → T_hm=3      → 4/6   ← best
    #   ε=2.0  v0 was C, now T_m → C=0      → 3/6
    accuracy, epsilon, counts = accuracy_with_ties(DELTA, LABELS)
    assert accuracy == pytest.approx(4 / 6)
    assert epsilon == 1.5
    assert counts == {"C": 1, "D": 0, "T_h": 0, "T_m": 2, "T_hm": 3}


def test_accuracy_with_ties_at_a_given_epsilon():
    # ε fixed at 0 (e.g. calibrated on another split): 1/6, as in the table above.
    result = accuracy_with_ties(DELTA, LABELS, epsilon=0.0)
    assert (result.accuracy, result.epsilon) == (pytest.approx(1 / 6), 0.0)


def test_accuracy_with_ties_takes_the_smallest_best_epsilon():
    # Δ=[0.2, -0.6], labels [tie, left]: ε=0 → T_h + D = 0/2; ε=0.2 → T_hm + D = 1/2; ε=0.6 → T_hm + T_m = 1/2.
    result = accuracy_with_ties([0.2, -0.6], ["tie", "left"])
    assert (result.accuracy, result.epsilon) == (0.5, 0.2)


def test_accuracy_with_ties_counts_zero_delta_as_model_tie():
    # Δ=0 is a model tie at ε=0: on a human tie that is T_hm, so 1/1 with ε=0.
    assert accuracy_with_ties([0.0], ["tie"]) == (1.0, 0.0, {"C": 0, "D": 0, "T_h": 0, "T_m": 0, "T_hm": 1})


def test_accuracy_with_ties_matches_brute_force_search():
    rng = np.random.default_rng(0)
    delta = np.round(rng.normal(size=300), 1)  # rounding makes many |Δ| equal, and some Δ exactly 0
    labels = rng.choice(["left", "right", "tie", "both_bad"], size=300).tolist()
    best = max(
        (tie_counts(delta, labels, eps)["C"] + tie_counts(delta, labels, eps)["T_hm"], -eps)
        for eps in [0.0, *np.abs(delta)]
    )
    result = accuracy_with_ties(delta, labels)
    assert result.accuracy == pytest.approx(best[0] / 300)
    assert result.epsilon == -best[1]


def test_accuracy_with_ties_on_no_votes_is_nan():
    assert math.isnan(accuracy_with_ties([], []).accuracy)


def test_human_ranking_from_pairwise_majorities():
    # a beats b 2-1, b beats c, a beats c: Copeland wins a=2, b=1, c=0.
    votes = [("a", "b", "left"), ("a", "b", "left"), ("b", "a", "left"), ("b", "c", "left"), ("c", "a", "right")]
    assert human_ranking(votes) == ["a", "b", "c"]


@pytest.mark.parametrize(
    "votes",
    [
        [("a", "b", "left"), ("b", "c", "left"), ("c", "a", "left")],  # a > b > c > a: a cycle
        [("a", "b", "left"), ("b", "c", "tie"), ("a", "c", "left")],  # b vs c only tied
        [("a", "b", "left"), ("b", "c", "both_bad"), ("a", "c", "left")],  # both_bad is a tie too
        [("a", "b", "left"), ("a", "b", "right"), ("b", "c", "left"), ("a", "c", "left")],  # a vs b split 1-1
        [("a", "b", "left"), ("b", "c", "left")],  # a vs c never voted
    ],
)
def test_human_ranking_is_none_without_a_strict_total_order(votes):
    assert human_ranking(votes) is None


ORDERED = [("a", "b", "left"), ("c", "b", "right"), ("c", "a", "right")]  # human order a > b > c


def test_group_accuracy():
    groups = [
        CandidateGroup({"a": 3.0, "b": 2.0, "c": 1.0}, ORDERED),  # exact; pairs ab ac bc all right → 1
        CandidateGroup({"a": 1.0, "b": 3.0, "c": 2.0}, ORDERED),  # ab wrong, ac wrong, bc right → 1/3
        CandidateGroup({"a": 2.0, "b": 2.0, "c": 1.0}, ORDERED),  # ab score tie ½, ac 1, bc 1 → 2.5/3 = 5/6
        CandidateGroup({"a": 1.0, "b": 0.0, "c": 0.0}, [("a", "b", "left"), ("b", "c", "left"), ("c", "a", "left")]),
        CandidateGroup({"a": 1.0, "b": 0.0}, [("a", "b", "left")]),  # 2 candidates: skipped
    ]
    # exact (1 + 0 + 0) / 3 = 1/3; pairwise (1 + 1/3 + 5/6) / 3 = (6/6 + 2/6 + 5/6) / 3 = 13/18
    result = group_accuracy(groups)
    assert result["exact"] == pytest.approx(1 / 3)
    assert result["pairwise"] == pytest.approx(13 / 18)
    assert (result["n_groups"], result["n_skipped"]) == (3, 2)


def test_group_accuracy_needs_a_score_for_every_voted_candidate():
    with pytest.raises(ValueError, match="have votes but no model score"):
        group_accuracy([CandidateGroup({"a": 1.0, "b": 0.0}, ORDERED)])


def test_group_accuracy_without_qualifying_groups_is_nan():
    result = group_accuracy([])
    assert math.isnan(result["exact"]) and result["n_groups"] == 0


# Calibration fixture. Δ = ln(17/3) → σ = 1 / (1 + 3/17) = 17/20 = 0.85;  Δ = ln(13/7) → σ = 13/20 = 0.65.
HIGH, LOW = math.log(17 / 3), math.log(13 / 7)
CAL_DELTA = [HIGH, HIGH, HIGH, -HIGH, LOW, -LOW, 5.0]
CAL_LABELS = ["left", "left", "right", "right", "left", "left", "tie"]


def test_reliability_bins():
    # 5 bins of width 0.1 on [0.5, 1]. Confidence 0.85 → bin 3: correct, correct, wrong, correct → acc 3/4.
    # Confidence 0.65 → bin 1: correct, wrong → acc 1/2. The tie is left out.
    rows = reliability_bins(CAL_DELTA, CAL_LABELS, n_bins=5)
    assert [row["count"] for row in rows] == [0, 2, 0, 4, 0]
    assert [row["lower"] for row in rows] == pytest.approx([0.5, 0.6, 0.7, 0.8, 0.9])
    assert (rows[1]["confidence"], rows[1]["accuracy"]) == (pytest.approx(0.65), 0.5)
    assert (rows[3]["confidence"], rows[3]["accuracy"]) == (pytest.approx(0.85), 0.75)
    assert rows[0]["confidence"] is None and rows[0]["accuracy"] is None


def test_expected_calibration_error():
    # 4/6 · |0.75 - 0.85| + 2/6 · |0.5 - 0.65| = 0.4/6 + 0.3/6 = 0.7/6 = 7/60
    assert expected_calibration_error(CAL_DELTA, CAL_LABELS, n_bins=5) == pytest.approx(7 / 60)


def test_expected_calibration_error_of_zero_deltas_is_zero():
    # Δ = 0: confidence 0.5, accuracy ½ (coin flip) → |0.5 - 0.5| = 0
    assert expected_calibration_error([0.0, 0.0], ["left", "right"]) == pytest.approx(0.0)


def test_expected_calibration_error_puts_certainty_in_the_last_bin():
    # Δ = 50: σ rounds to 1.0 → last (closed) bin, accuracy 1 → ECE ≈ 0
    rows = reliability_bins([50.0], ["left"], n_bins=10)
    assert rows[-1]["count"] == 1
    assert expected_calibration_error([50.0], ["left"]) == pytest.approx(0.0)


def test_effective_rank_of_identity_like_features_is_k():
    assert effective_rank(np.eye(4), center=False) == pytest.approx(4.0)  # four equal singular values
    # [I; -I] has mean 0, so centring changes nothing; XᵀX = 2I → three equal singular values √2.
    assert effective_rank(np.vstack([np.eye(3), -np.eye(3)])) == pytest.approx(3.0)
    # Centring I_4 removes its mean direction: I - J/4 has eigenvalues 1, 1, 1, 0 → 3.
    assert effective_rank(np.eye(4)) == pytest.approx(3.0)


def test_effective_rank_of_rank_one_features_is_one():
    x = np.outer([1.0, 2.0, 3.0], [1.0, -1.0, 2.0, 0.5])  # centred, u becomes (-1, 0, 1): still rank 1
    assert effective_rank(x, center=False) == pytest.approx(1.0)
    assert effective_rank(x) == pytest.approx(1.0)


def test_effective_rank_by_hand():
    # Singular values 3, 1 → p = (0.75, 0.25); H = -(0.75 ln 0.75 + 0.25 ln 0.25) = 0.215762 + 0.346574 = 0.562335;
    # exp(0.562335) = 1.754765
    assert effective_rank(np.diag([3.0, 1.0]), center=False) == pytest.approx(1.754765, abs=1e-6)


def test_effective_rank_centring_drops_a_shared_offset():
    constant = np.ones((5, 3))
    assert effective_rank(constant, center=False) == pytest.approx(1.0)
    assert effective_rank(constant) == 0.0  # nothing varies across samples


def test_effective_rank_accepts_torch_tensors():
    assert effective_rank(torch.eye(3, dtype=torch.bfloat16), center=False) == pytest.approx(3.0)


def test_instruction_swap_accuracy():
    # original > 0: T T F T → 3/4; swapped < 0: T F T F → 2/4; both: T F F F → 1/4 (Δ = 0 is never correct)
    result = instruction_swap_accuracy([1.0, 1.0, -1.0, 0.5], [-1.0, 2.0, -1.0, 0.0])
    assert result == {"original_accuracy": 0.75, "flip_rate": 0.5, "both_correct": 0.25, "n": 4}


def test_instruction_blind_scorer_never_gets_both_right():
    delta = [1.0, 2.0, -0.5]
    assert instruction_swap_accuracy(delta, delta)["both_correct"] == 0.0


def test_instruction_swap_accuracy_checks_lengths():
    with pytest.raises(ValueError, match="delta_original has 2 pairs but delta_swapped has 1"):
        instruction_swap_accuracy([1.0, 2.0], [1.0])


def test_bootstrap_ci_of_a_constant_is_that_constant():
    assert bootstrap_ci(np.full(20, 0.7)) == pytest.approx((0.7, 0.7))


def test_bootstrap_ci_of_two_values():
    # Means of 2 draws from {0, 1}: 0 (¼), ½ (½), 1 (¼). The 2.5th percentile is 0, the 97.5th is 1.
    assert bootstrap_ci([0.0, 1.0], n_resamples=2000, seed=1) == (0.0, 1.0)


def test_bootstrap_ci_is_reproducible_and_brackets_the_mean():
    values = np.random.default_rng(3).normal(size=200)
    low, high = bootstrap_ci(values, seed=5)
    assert (low, high) == bootstrap_ci(values, seed=5)
    assert low < values.mean() < high


def test_bootstrap_ci_resamples_whole_clusters():
    clusters = np.array(["a", "a", "b", "b", "b", "c"])
    sizes = {"a": 2, "b": 3, "c": 1}

    def clusters_whole(indices: np.ndarray) -> float:
        picked, counts = np.unique(clusters[indices], return_counts=True)
        return float(all(count % sizes[str(name)] == 0 for name, count in zip(picked, counts, strict=True)))

    assert bootstrap_ci(np.arange(6), clusters_whole, clusters=clusters, n_resamples=200) == (1.0, 1.0)


def test_bootstrap_ci_ignores_nan_statistics():
    assert all(math.isnan(x) for x in bootstrap_ci([1.0, 2.0], lambda v: math.nan, n_resamples=10))
    assert all(math.isnan(x) for x in bootstrap_ci([], n_resamples=10))


def test_strict_agreement_keeps_strict_votes_in_order():
    # The fixture's strict votes 0, 1, 2: left with Δ 2 (agrees: 1), left with Δ −1 (0), right with Δ 0.5 (0).
    assert strict_agreement(DELTA, LABELS).tolist() == [1.0, 0.0, 0.0]
    assert strict_agreement([0.0, 3.0], ["right", "tie"]).tolist() == [0.5]  # Δ = 0 counts one half


def test_paired_task_bootstrap_resamples_whole_tasks_with_the_same_draws():
    # Task a has votes [1, 0], task b [1]. Two tasks drawn with replacement: aa → 1/2, ab or ba → 2/3, bb → 1.
    draws = paired_task_bootstrap(
        {"x": [1, 0, 1], "same": [1, 0, 1], "flipped": [0, 1, 0]}, ["a", "a", "b"], n_resamples=4000, seed=3
    )
    assert set(np.round(draws["x"], 6)) == {0.5, round(2 / 3, 6), 1.0}
    assert draws["x"].mean() == pytest.approx((0.5 + 2 * 2 / 3 + 1) / 4, abs=0.01)  # 0.7083
    assert np.array_equal(draws["x"], draws["same"])  # one set of draws for every scorer: differences are paired
    assert np.allclose(draws["x"] + draws["flipped"], 1.0)
    assert np.array_equal(draws["x"], paired_task_bootstrap({"x": [1, 0, 1]}, ["a", "a", "b"], n_resamples=4000,
                                                            seed=3)["x"])  # reproducible for a seed
    with pytest.raises(ValueError, match="one per vote"):
        paired_task_bootstrap({"x": [1, 0]}, ["a", "a", "b"])


def test_evaluation_report_assembles_every_metric_as_json():
    report = evaluation_report(
        DELTA,
        LABELS,
        task_ids=["t1", "t1", "t2", "t2", "t3", "t3"],
        features=np.eye(4),
        groups=[CandidateGroup({"a": 3.0, "b": 2.0, "c": 1.0}, ORDERED)],
        swap_deltas=([1.0, -1.0], [-1.0, -1.0]),
        n_bootstrap=50,
    )
    json.dumps(report, allow_nan=False)
    assert (report["n_votes"], report["n_strict"], report["n_tasks"]) == (6, 3, 3)
    assert report["pairwise_accuracy"]["value"] == pytest.approx(1 / 3)
    low, high = report["pairwise_accuracy"]["ci95"]
    assert 0.0 <= low <= high <= 1.0
    ties = report["accuracy_with_ties"]
    assert (ties["accuracy"], ties["epsilon"], ties["counts"]["T_hm"]) == (pytest.approx(4 / 6), 1.5, 3)
    assert report["calibration"]["ece"] == pytest.approx(expected_calibration_error(DELTA, LABELS))
    assert len(report["calibration"]["bins"]) == 10
    assert report["effective_rank"] == pytest.approx(3.0)  # centred I_4
    assert report["group_accuracy"]["exact"] == 1.0
    assert report["instruction_swap"]["both_correct"] == 0.5
    assert report["bootstrap"] == {"n_resamples": 50, "seed": 0, "unit": "task"}


def test_evaluation_report_with_only_ties_and_no_optional_inputs():
    report = evaluation_report([0.3, -0.2], ["tie", "both_bad"], n_bootstrap=0)
    json.dumps(report, allow_nan=False)
    assert report["pairwise_accuracy"] == {"value": None, "ci95": None}
    assert report["calibration"]["ece"] is None
    assert report["accuracy_with_ties"]["accuracy"] == 1.0  # ε = 0.3 makes both model ties: T_hm = 2
    assert report["effective_rank"] is None and report["group_accuracy"] is None
    assert report["instruction_swap"] is None and report["bootstrap"]["unit"] == "vote"
