"""Leaderboard: Bradley–Terry strengths checked by hand and against Hunter's MM, intervals, counts, mean scores."""

from __future__ import annotations

import itertools
import math
import time
import uuid

import numpy as np
import PIL.Image
import pytest
from sqlalchemy import func, select

from trainer.leaderboard import PRIOR, VoteTable, bootstrap_strengths, bradley_terry, leaderboard, win_matrix
from storage.errors import InvalidInput, NotFound
from storage.images import store_pil_image
from storage.models import Candidate
from storage.provenance import VoteSelection
from storage.repository import add_candidate, create_task, record_vote
from trainer.registry import publish_version, record_scores


def add_task(session, settings, generators: list[str], seed: int) -> dict[str, int]:
    """A task with one candidate per generator; generator → candidate id."""
    image = store_pil_image(session, image=PIL.Image.new("RGB", (16, 16), (seed % 256, 7, 9)), settings=settings)
    task = create_task(session, source_image_id=image.id, instruction="make it red", settings=settings)
    return {g: add_candidate(session, task_id=task.id, image_id=image.id, generator=g).id for g in generators}


def vote(
    session, settings, candidates: dict[str, int], left: str, right: str, choice: str, provenance: str = "human"
) -> None:
    """Record one anonymous vote on the candidates of `left` and `right` (as shown)."""
    record_vote(
        session,
        task_id=session.get(Candidate, candidates[left]).task_id,
        left_candidate_id=candidates[left],
        right_candidate_id=candidates[right],
        choice=choice,
        client_submission_id=uuid.uuid4().hex,
        provenance=provenance,
        settings=settings,
    )


def rows_by_name(rows) -> dict:
    return {row.generator: row for row in rows}


# --- the fit alone ---------------------------------------------------------------------------------------------


def two_player_strength(wins: float, losses: float, prior: float) -> float:
    """θ_a (= −θ_b) solving w − (w + l)·σ(2θ) − λθ = 0, by bisection (the hand check)."""
    low, high = -50.0, 50.0
    for _ in range(200):
        mid = (low + high) / 2
        gradient = wins - (wins + losses) / (1 + math.exp(-2 * mid)) - prior * mid
        low, high = (mid, high) if gradient > 0 else (low, mid)
    return (low + high) / 2


@pytest.mark.parametrize(("wins", "losses"), [(7, 3), (10, 0), (2.5, 2.5), (0, 4)])
def test_two_generators_match_the_closed_form(wins, losses):
    theta = bradley_terry(np.array([[0.0, wins], [losses, 0.0]]))
    expected = two_player_strength(wins, losses, PRIOR)
    assert theta == pytest.approx([expected, -expected], abs=1e-9)
    assert math.isfinite(theta[0])


def hunter_mm(wins: np.ndarray) -> np.ndarray:
    """Unpenalised BT by Hunter's (2004) MM update, log-strengths with mean 0."""
    games = wins + wins.T
    p = np.ones(len(wins))
    for _ in range(100_000):
        updated = wins.sum(1) / (games / (p[:, None] + p[None, :])).sum(1)
        updated /= np.exp(np.log(updated).mean())
        if np.abs(updated - p).max() < 1e-13:
            break
        p = updated
    return np.log(updated)


def test_newton_matches_hunters_mm_when_the_prior_vanishes():
    rng = np.random.default_rng(3)
    wins = rng.integers(1, 20, size=(5, 5)).astype(float)
    np.fill_diagonal(wins, 0)
    assert bradley_terry(wins, prior=1e-12) == pytest.approx(hunter_mm(wins), abs=1e-6)


def test_ten_thousand_votes_fit_with_intervals_in_well_under_a_few_seconds():
    rng = np.random.default_rng(0)
    g, v = 20, 10_000
    truth = np.linspace(1.5, -1.5, g)
    first, second = rng.integers(0, g, v), rng.integers(0, g, v)
    keep = first != second
    first, second = first[keep], second[keep]
    p_first = 1 / (1 + np.exp(truth[second] - truth[first]))
    points = (rng.random(len(first)) < p_first).astype(float)
    points[rng.random(len(first)) < 0.1] = 0.5
    table = VoteTable([f"g{i:02d}" for i in range(g)], rng.integers(0, 2000, len(first)), first, second, points)
    started = time.perf_counter()
    theta = bradley_terry(win_matrix(table))
    samples = bootstrap_strengths(table, n_bootstrap=200, seed=0)
    elapsed = time.perf_counter() - started
    assert elapsed < 5.0, f"{elapsed:.2f} s"
    assert np.corrcoef(theta, truth)[0, 1] > 0.98
    assert samples.shape == (200, g) and not np.isnan(samples).any()
    assert np.all(np.percentile(samples, 2.5, axis=0) <= theta) and np.all(theta <= np.percentile(samples, 97.5, 0))


# --- through the store -----------------------------------------------------------------------------------------


def test_a_beats_b_beats_c_orders_the_board(session, settings):
    for seed in range(4):
        candidates = add_task(session, settings, ["A", "B", "C"], seed)
        vote(session, settings, candidates, "A", "B", "left")
        vote(session, settings, candidates, "C", "B", "right")  # shown the other way round: B won
    rows = leaderboard(session, version_id=None, n_bootstrap=50)
    assert [r.generator for r in rows] == ["A", "B", "C"]
    assert rows[0].strength > rows[1].strength > rows[2].strength
    assert sum(r.strength for r in rows) == pytest.approx(0, abs=1e-9)
    assert all(math.isfinite(r.strength) for r in rows), "A never loses and C never wins: the prior keeps them finite"
    board = rows_by_name(rows)
    assert (board["A"].wins, board["A"].losses, board["A"].ties, board["A"].n_votes) == (4, 0, 0, 4)
    assert (board["B"].wins, board["B"].losses, board["B"].n_votes) == (4, 4, 8)
    assert (board["C"].wins, board["C"].losses, board["C"].n_votes) == (0, 4, 4)
    assert all(r.mean_score is None and r.n_scored == 0 for r in rows)


def test_the_board_counts_only_the_selected_provenances(session, settings):
    candidates = add_task(session, settings, ["a", "b"], seed=1)
    vote(session, settings, candidates, "a", "b", "left")
    for _ in range(3):  # simulated votes the other way must not move a board of human votes
        vote(session, settings, candidates, "b", "a", "left", provenance="demo")
    humans = rows_by_name(leaderboard(session, version_id=None, n_bootstrap=10,
                                      selection=VoteSelection(("human", "import"))))
    assert (humans["a"].wins, humans["a"].losses) == (1, 0)
    everyone = rows_by_name(leaderboard(session, version_id=None, n_bootstrap=10))
    assert (everyone["a"].wins, everyone["a"].losses) == (1, 3)


def test_symmetric_votes_and_ties_give_equal_strengths_at_zero(session, settings):
    for seed in range(3):
        candidates = add_task(session, settings, ["A", "B", "C"], seed)
        for first, second in itertools.permutations("ABC", 2):
            vote(session, settings, candidates, first, second, "left")
        vote(session, settings, candidates, "A", "B", "tie")
        vote(session, settings, candidates, "B", "C", "both_bad")
    rows = leaderboard(session, version_id=None, n_bootstrap=50)
    assert [r.strength for r in rows] == pytest.approx([0, 0, 0], abs=1e-9)
    board = rows_by_name(rows)
    assert (board["A"].ties, board["B"].ties, board["C"].ties) == (3, 6, 3), "tie and both_bad count as ties"
    assert board["B"].n_votes == board["B"].wins + board["B"].losses + board["B"].ties == 18


def test_intervals_contain_the_estimate_and_are_reproducible(session, settings):
    rng = np.random.default_rng(1)
    truth = {"A": 1.0, "B": 0.0, "C": -1.0}
    for seed in range(30):
        candidates = add_task(session, settings, list(truth), seed)
        for first, second in itertools.combinations(truth, 2):
            won = rng.random() < 1 / (1 + math.exp(truth[second] - truth[first]))
            vote(session, settings, candidates, first, second, "left" if won else "right")
    rows = leaderboard(session, version_id=None, n_bootstrap=200, seed=7)
    for row in rows:
        assert row.ci_low < row.strength < row.ci_high
    assert rows == leaderboard(session, version_id=None, n_bootstrap=200, seed=7)
    assert rows != leaderboard(session, version_id=None, n_bootstrap=200, seed=8)
    assert all(r.ci_low is None for r in leaderboard(session, version_id=None, n_bootstrap=0))


def test_generators_without_votes_are_listed_last_with_none(session, settings):
    candidates = add_task(session, settings, ["A", "B", "Z-unvoted", "A-unvoted"], 0)
    vote(session, settings, candidates, "A", "B", "left")
    rows = leaderboard(session, version_id=None)
    assert [r.generator for r in rows] == ["A", "B", "A-unvoted", "Z-unvoted"]
    for row in rows[2:]:
        assert (row.strength, row.ci_low, row.ci_high, row.n_votes, row.wins) == (None, None, None, 0, 0)


def test_votes_between_candidates_of_one_generator_are_left_out(session, settings):
    image = store_pil_image(session, image=PIL.Image.new("RGB", (16, 16), (1, 2, 3)), settings=settings)
    other = store_pil_image(session, image=PIL.Image.new("RGB", (16, 16), (3, 2, 1)), settings=settings)
    task = create_task(session, source_image_id=image.id, instruction="make it red", settings=settings)
    first = add_candidate(session, task_id=task.id, image_id=image.id, generator="A")
    second = add_candidate(session, task_id=task.id, image_id=other.id, generator="A")
    vote(session, settings, {"one": first.id, "two": second.id}, "one", "two", "left")
    (row,) = leaderboard(session, version_id=None)
    assert (row.generator, row.strength, row.n_votes) == ("A", None, 0)


def test_mean_scores_come_from_the_given_version(session, settings):
    a = add_task(session, settings, ["A", "B"], 0)
    b = add_task(session, settings, ["A", "B"], 1)
    vote(session, settings, a, "A", "B", "left")
    versions = [
        publish_version(session, save=_save, settings=settings, backbone="tiny", config={}, metrics=None).id
        for _ in range(2)
    ]
    record_scores(session, version_id=versions[0], scores={a["A"]: 1.0, b["A"]: 2.0, a["B"]: -1.0})
    record_scores(session, version_id=versions[1], scores={a["A"]: 10.0})
    board = rows_by_name(leaderboard(session, version_id=versions[0]))
    assert (board["A"].mean_score, board["A"].n_scored) == (pytest.approx(1.5), 2)
    assert (board["B"].mean_score, board["B"].n_scored) == (pytest.approx(-1.0), 1)
    board = rows_by_name(leaderboard(session, version_id=versions[1]))
    assert (board["A"].mean_score, board["B"].mean_score, board["B"].n_scored) == (pytest.approx(10.0), None, 0)
    with pytest.raises(NotFound):
        leaderboard(session, version_id=versions[1] + 100)


@pytest.mark.parametrize(
    "kwargs", [{"version_id": "1"}, {"version_id": None, "n_bootstrap": -1}, {"version_id": None, "seed": 1.5}]
)
def test_bad_arguments(session, kwargs):
    with pytest.raises(InvalidInput):
        leaderboard(session, **kwargs)


def test_an_empty_store_gives_an_empty_board(session):
    assert leaderboard(session, version_id=None) == []


def _save(folder) -> None:
    (folder / "weights.bin").write_bytes(b"w")


def test_the_demo_store_board_with_live_scores(app_store, scoring_service):
    with app_store.factory() as session:
        candidate_ids = list(session.scalars(select(Candidate.id)))
    scoring_service.score_candidates(candidate_ids)
    with app_store.factory() as session:
        rows = leaderboard(session, version_id=app_store.version_id)
        query = select(Candidate.generator, func.count()).group_by(Candidate.generator)
        generators = dict(session.execute(query).all())
    assert {r.generator: r.n_scored for r in rows} == generators
    voted = [r for r in rows if r.strength is not None]
    assert voted and sum(r.strength for r in voted) == pytest.approx(0, abs=1e-9)
    assert all(r.ci_low <= r.strength <= r.ci_high for r in voted)
