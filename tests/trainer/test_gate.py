"""The promotion gate's pure decision (trainer.gate.decide): hand-checked fixtures, a seeded bootstrap, no DB.

Each fixture gives, per strict vote, its task and how each scorer did (1 right, 0 wrong, ½ a tie of scores). Where a
scorer gets the same share right on every task, every bootstrap resample has that same accuracy, so the intervals
collapse to the point values and can be written down by hand.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from trainer.gate import CHANCE, GateConfig, GateInputs, decide

SPEC_KEYS = {  # the `gate` dict other code reads (docs/registry.md)
    "passed_floor", "floor", "chance", "candidate_accuracy", "active", "diff_vs_floor_ci95", "diff_vs_active_ci95",
    "n_tasks", "n_votes", "promoted", "reason",
}  # fmt: skip
CONFIG = GateConfig(n_resamples=500, seed=0)


def per_task(pattern: list[float], tasks: int) -> tuple[list[int], np.ndarray]:
    """`tasks` tasks that each have len(pattern) votes with these agreements: (task ids, agreements)."""
    return [t for t in range(tasks) for _ in pattern], np.array(pattern * tasks, dtype=np.float64)


def inputs(candidate: list[float], tasks: int = 20, *, rules: dict[str, list[float]] | None = None,
           active: list[float] | None = None, **extra) -> GateInputs:
    task_ids, cand = per_task(candidate, tasks)
    rules = rules if rules is not None else {"changed more wins": [0.5] * len(candidate)}
    return GateInputs(
        task_ids=task_ids,
        candidate=cand,
        rules={name: per_task(pattern, tasks)[1] for name, pattern in rules.items()},
        active=None if active is None else per_task(active, tasks)[1],
        **extra,
    )


def test_a_first_version_that_beats_the_floor_everywhere_is_promoted():
    # 20 tasks × 2 votes. Candidate right on all: 1.0. Both rules get 0.5 on every task (a tie of statistics, or one
    # right and one wrong), so the floor is 0.5 in every resample and the margin 1.0 − 0.5 = 0.5 in all of them.
    rules = {"changed more wins": [0.5, 0.5], "brighter wins": [1.0, 0.0]}
    decision = decide(inputs([1.0, 1.0], rules=rules), CONFIG)

    assert decision.promoted and decision.depends_on_active and decision.active_id is None
    assert decision.reason == (
        "held-out accuracy 1.00 (95 % CI of the margin over the best pixel rule 'changed more wins' 0.50: "
        "0.50 … 0.50) beats the floor; no active version to compare with"
    )  # of equal rules the first listed names the floor
    record = decision.record
    assert set(record) >= SPEC_KEYS and json.loads(json.dumps(record, allow_nan=False)) == record
    assert record["passed_floor"] is True and record["promoted"] is True and record["reason"] == decision.reason
    assert record["floor"] == {"rule": "changed more wins", "accuracy": 0.5} and record["chance"] == CHANCE == 0.5
    assert record["candidate_accuracy"] == 1.0 and record["active"] is None
    assert record["diff_vs_floor_ci95"] == pytest.approx([0.5, 0.5]) and record["diff_vs_active_ci95"] is None
    assert (record["n_tasks"], record["n_votes"]) == (20, 40)
    assert record["rules"] == {"changed more wins": 0.5, "brighter wins": 0.5}


def test_a_version_below_the_best_pixel_rule_is_rejected_with_the_margin():
    # 20 tasks × 4 votes. Candidate [1, 0, 1, 0]: 0.5 per task. "changed more wins" [1, 1, 1, 0]: 0.75 per task, so
    # the margin is 0.5 − 0.75 = −0.25 in every resample. "darker wins" 0.25 is never the floor.
    rules = {"changed more wins": [1, 1, 1, 0], "darker wins": [0, 0, 1, 0]}
    decision = decide(inputs([1, 0, 1, 0], rules=rules), CONFIG)

    assert not decision.promoted and not decision.depends_on_active
    assert decision.reason == (
        "held-out accuracy 0.50 (95 % CI of the margin over the best pixel rule 'changed more wins' 0.75: "
        "\u22120.25 … \u22120.25) does not beat the floor"
    )
    assert decision.record["passed_floor"] is False and decision.record["promoted"] is False
    assert decision.record["floor"] == {"rule": "changed more wins", "accuracy": 0.75}
    assert decision.record["diff_vs_floor_ci95"] == pytest.approx([-0.25, -0.25])


def test_chance_is_the_floor_when_every_rule_is_worse():
    # Candidate 0.5 everywhere; the only rule 0.25. Floor max(0.5, 0.25) = chance; margin 0 is not > 0.
    decision = decide(inputs([1, 0], rules={"brighter wins": [0.5, 0]}), CONFIG)
    assert not decision.promoted
    assert "margin over chance 0.5: 0.00 … 0.00) does not beat the floor" in decision.reason
    assert decision.record["floor"] == {"rule": "chance", "accuracy": 0.5}


def test_the_interval_resamples_tasks_and_pairs_the_scorers():
    # Two tasks of one vote: the candidate is right on task 0, wrong on task 1. Resamples: {0,0} → 1, {0,1} → 0.5,
    # {1,1} → 0; with 500 draws both extremes appear, so the margin over a 0.5 floor spans −0.5 … 0.5.
    decision = decide(_two_tasks(), GateConfig(min_tasks=2, n_resamples=500))
    assert decision.record["diff_vs_floor_ci95"] == [-0.5, 0.5] and not decision.promoted
    # The active version right and wrong on the same tasks: each accuracy varies 0 … 1, their difference never.
    waived = GateConfig(min_tasks=2, n_resamples=500, require_floor=False)
    paired = decide(_two_tasks(active=np.array([1.0, 0.0])), waived)
    assert paired.record["diff_vs_active_ci95"] == [0.0, 0.0] and paired.promoted


def _two_tasks(active: np.ndarray | None = None) -> GateInputs:
    return GateInputs(
        task_ids=[0, 1],
        candidate=np.array([1.0, 0.0]),
        rules={"brighter wins": np.array([0.5, 0.5])},
        active=active,
        active_id=None if active is None else 7,
        active_name=None if active is None else "v0007",
    )


def test_the_candidate_is_compared_with_the_active_version_on_the_same_votes():
    # Candidate 0.75 per task beats the 0.5 floor (margin 0.25 everywhere). Active right on everything: 1.0, so the
    # candidate is 0.25 worse in every resample: beyond the 0.01 tolerance → rejected.
    worse = decide(inputs([1, 1, 1, 0], active=[1, 1, 1, 1], active_id=3, active_name="v0003"), CONFIG)
    assert not worse.promoted and worse.depends_on_active and worse.active_id == 3
    assert worse.reason == (
        "held-out accuracy 0.75 (95 % CI of the margin over the best pixel rule 'changed more wins' 0.50: "
        "0.25 … 0.25) beats the floor, but 0.75 < active v0003's 1.00 \u2212 0.01 on the same 80 votes "
        "(95 % CI of the difference \u22120.25 … \u22120.25)"
    )
    assert worse.record["active"] == {"name": "v0003", "accuracy": 1.0}
    assert worse.record["diff_vs_active_ci95"] == pytest.approx([-0.25, -0.25])
    assert worse.record["passed_floor"] is True and worse.record["promoted"] is False

    # The same candidate against an active version at 0.5 (right on two of four): +0.25 → promoted.
    better = decide(inputs([1, 1, 1, 0], active=[1, 0, 1, 0], active_id=3, active_name="v0003"), CONFIG)
    assert better.promoted
    assert better.reason.endswith(
        "beats the floor; +0.25 vs active v0003's 0.50 on the same 80 votes (95 % CI of the difference 0.25 … 0.25) "
        "\u2265 \u22120.01"
    )


def test_a_difference_exactly_at_the_tolerance_passes():
    # Candidate 0.75 vs active 1.0 is −0.25: with tolerance 0.25 that is on the threshold, which passes.
    config = GateConfig(tolerance=0.25, n_resamples=500)
    decision = decide(inputs([1, 1, 1, 0], active=[1, 1, 1, 1], active_id=3, active_name="v0003"), config)
    assert decision.promoted and decision.record["tolerance"] == 0.25


def test_too_few_tasks_are_not_judged_unless_the_floor_is_waived():
    # 19 tasks × 2 votes, a perfect candidate: under the 20-task minimum.
    decision = decide(inputs([1, 1], tasks=19), CONFIG)
    assert not decision.promoted and not decision.depends_on_active
    assert decision.reason == (
        "too few held-out votes to judge (19 tasks, 38 left/right votes; the gate needs at least 20 tasks); "
        "add votes or promote by hand"
    )
    assert decision.record["passed_floor"] is False and decision.record["candidate_accuracy"] == 1.0

    waived = decide(inputs([1, 1], tasks=19), GateConfig(require_floor=False, n_resamples=500))
    assert waived.promoted and waived.record["floor_required"] is False
    assert waived.reason.startswith("floor not required (gate_floor off); held-out accuracy 1.00")


def test_no_strict_votes_is_a_rejection_whatever_the_floor_setting():
    empty = GateInputs(task_ids=[], candidate=np.zeros(0), rules={"brighter wins": np.zeros(0)}, heldout_votes=4)
    for config in (CONFIG, GateConfig(require_floor=False)):
        decision = decide(empty, config)
        assert not decision.promoted
        assert decision.reason == "no left/right held-out votes to judge on; add votes or promote by hand"
    assert decision.record["n_votes"] == 0 and decision.record["heldout_votes"] == 4
    assert json.loads(json.dumps(decision.record, allow_nan=False)) == decision.record


def test_an_active_version_that_cannot_be_scored_leaves_the_floor_to_decide():
    broken = inputs([1, 1], active_id=3, active_name="v0003", active_error="VersionFilesError: missing")
    decision = decide(broken, CONFIG)
    assert decision.promoted and decision.depends_on_active and decision.active_id == 3
    assert decision.reason.endswith(
        "; active v0003 could not be scored (VersionFilesError: missing): judged on the floor"
    )
    assert decision.record["active"] is None and decision.record["active_error"] == "v0003: VersionFilesError: missing"


def test_the_bootstrap_is_seeded_and_overruling_keeps_the_measurements():
    noisy = GateInputs(
        task_ids=[t for t in range(30) for _ in range(3)],
        candidate=np.random.default_rng(1).integers(0, 2, 90).astype(float),
        rules={"changed more wins": np.random.default_rng(2).integers(0, 2, 90).astype(float)},
    )
    first, again = decide(noisy, CONFIG), decide(noisy, CONFIG)
    assert first.record == again.record
    assert decide(noisy, GateConfig(n_resamples=500, seed=1)).record["diff_vs_floor_ci95"] != first.record[
        "diff_vs_floor_ci95"
    ]
    overruled = first.overruled("files failed verification: gone")
    assert (overruled.promoted, overruled.depends_on_active) == (False, False)
    assert overruled.record["reason"] == "files failed verification: gone" and overruled.record["promoted"] is False
    assert overruled.record["diff_vs_floor_ci95"] == first.record["diff_vs_floor_ci95"]


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [({"tolerance": -0.1}, "tolerance"), ({"min_tasks": 0}, "min_tasks"), ({"level": 1.0}, "level"),
     ({"n_resamples": 10}, "n_resamples")],
)  # fmt: skip
def test_gate_config_refuses_bad_values(kwargs, match):
    with pytest.raises(ValueError, match=match):
        GateConfig(**kwargs)
