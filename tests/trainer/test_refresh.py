"""After a promotion: every candidate scored by the version, queue priorities written, quality flags stored."""

from __future__ import annotations

import dataclasses

from sqlalchemy import func, select

from storage.db import transaction
from storage.demo import build_demo
from storage.models import AnnotatorFlag, ModelVersion, Pair, Score
from storage.provenance import ALL_VOTES
from trainer.refresh import pair_states, refresh_after_publish


def _version(factory) -> int:
    with transaction(factory) as session:
        version = ModelVersion(name="v0001", path="/nowhere", backbone="tiny", status="active")
        session.add(version)
        session.flush()
        return version.id


def test_refresh_scores_every_candidate_and_writes_priorities_and_flags(factory, settings, make_model):
    with transaction(factory) as session:
        build_demo(session, tasks=3, seed=7, settings=settings, size=48)
    version_id = _version(factory)
    with factory() as session:
        before = dict(session.execute(select(Pair.id, Pair.priority)).all())
    by_uncertainty = dataclasses.replace(settings, sampling_coverage_weight=0.0, sampling_disagreement_weight=0.0,
                                         sampling_uncertainty_weight=1.0)
    summary = refresh_after_publish(
        factory, model=make_model("tiny"), version_id=version_id, promoted=True, settings=by_uncertainty
    )
    with factory() as session:
        candidates = session.scalar(select(func.count()).select_from(Score).where(Score.version_id == version_id))
        after = dict(session.execute(select(Pair.id, Pair.priority)).all())
        flags = session.scalar(select(func.count()).select_from(AnnotatorFlag))
    assert summary.candidates_scored == candidates > 0
    assert summary.pairs_prioritised == len(after) == len(before)
    assert set(before.values()) == {0.0} and len(set(after.values())) > 1  # the model's Δ now ranks the pairs
    assert all(0.0 <= value <= 1.0 for value in after.values())  # the uncertainty term alone, in [0, 1]
    assert flags == summary.annotators_checked > 0


def test_pair_states_put_votes_in_canonical_order(factory, settings):
    with transaction(factory) as session:
        build_demo(session, tasks=2, seed=3, settings=settings, size=48)
    with factory() as session:
        pairs = session.execute(select(Pair.id, Pair.candidate_a_id, Pair.candidate_b_id, Pair.vote_count)).all()
        scores = {c: (float(c), None, None) for _, a, b, _ in pairs for c in (a, b)}
        states = {s.pair_id: s for s in pair_states(session, scores, ALL_VOTES)}
    for pair_id, a, b, count in pairs:
        state = states[pair_id]
        assert state.delta == a - b and state.sigma is None  # Δ = r(A) − r(B); no uncertainty head
        assert state.votes_a + state.votes_b + state.votes_tie == count == state.vote_count


def test_an_unpromoted_version_scores_only_held_out_candidates_and_the_board_compares_like_with_like(
    factory, settings, make_model
):
    from trainer.version_board import heldout_candidate_ids, version_board

    with transaction(factory) as session:
        build_demo(session, tasks=12, seed=5, settings=settings, size=48)
    first = _version(factory)
    with transaction(factory) as session:
        second = ModelVersion(name="v0002", path="/nowhere", backbone="tiny", status="rejected")
        never = ModelVersion(name="v0003", path="/nowhere", backbone="tiny", status="candidate")
        session.add_all([second, never])
        session.flush()
        second_id = second.id
    refresh_after_publish(factory, model=make_model("tiny"), version_id=second_id, promoted=False, settings=settings)
    with factory() as session:
        heldout = set(heldout_candidate_ids(session))
        scored = set(session.scalars(select(Score.candidate_id).where(Score.version_id == second_id)))
        assert heldout and scored == heldout  # held-out only: the board needs no more
        assert session.scalar(select(func.count()).select_from(AnnotatorFlag)) == 0  # flags follow promotions only
        # The first version "scores" every held-out candidate by its id: it prefers the higher id.
        session.add_all([Score(version_id=first, candidate_id=c, score=float(c)) for c in heldout])
        session.commit()
        board = version_board(session, selection=ALL_VOTES)
    assert [row.name for row in board.rows] == ["v0001", "v0002"] and board.left_out == ["v0003"]
    assert board.votes > 0 and all(0.0 <= row.accuracy <= 1.0 for row in board.rows)
