"""storage.repository on SQLite and PostgreSQL: bad input first (nothing may change), then the happy paths."""

from __future__ import annotations

import dataclasses
import itertools
import random
from datetime import timedelta

import pytest
from sqlalchemy import func, select, update

from storage import annotation_queue, stats
from storage import repository as repo
from storage.errors import InvalidInput, NotFound
from storage.images import image_path
from storage.models import Assignment, Candidate, Image, Pair, Task, User, Vote, utcnow

TABLES = (Image, User, Task, Candidate, Pair, Vote, Assignment)


def snapshot(session) -> dict:
    """Everything a failed call must leave as it was."""
    counts = {model.__tablename__: session.scalar(select(func.count()).select_from(model)) for model in TABLES}
    pairs = session.execute(select(Pair.id, Pair.vote_count, Pair.filled).order_by(Pair.id)).all()
    statuses = session.execute(select(Assignment.id, Assignment.status).order_by(Assignment.id)).all()
    return {"counts": counts, "pairs": pairs, "assignments": statuses}


def assert_refused(session, error: type[Exception], match: str, call) -> None:
    before = snapshot(session)
    with pytest.raises(error, match=match):
        call()
    assert snapshot(session) == before


def pair_counts(session, pair_id: int) -> tuple[int, int]:
    return tuple(session.execute(select(Pair.vote_count, Pair.filled).where(Pair.id == pair_id)).one())


# ------------------------------------------------------------------------------------- tasks and candidates


def test_create_task_refuses_bad_input(session, settings, make_image):
    image = make_image()

    def create(**overrides):
        kwargs = dict(source_image_id=image.id, instruction="make it wood", settings=settings)
        return lambda: repo.create_task(session, **(kwargs | overrides))

    assert_refused(session, NotFound, "image 999999 does not exist", create(source_image_id=999999))
    assert_refused(session, NotFound, "does not exist", create(source_image_id=-1))
    assert_refused(session, InvalidInput, "must be an integer", create(source_image_id="1"))
    assert_refused(session, InvalidInput, "instruction is empty", create(instruction=""))
    assert_refused(session, InvalidInput, "instruction is empty", create(instruction=" \n\t "))
    assert_refused(session, InvalidInput, "instruction is empty", create(instruction="\x00\x01\x7f"))
    assert_refused(session, InvalidInput, "instruction must be text", create(instruction=None))
    too_long = "x" * (settings.instruction_max_chars + 1)
    assert_refused(session, InvalidInput, "at most 2000", create(instruction=too_long))
    assert_refused(session, InvalidInput, "category has 65", create(category="c" * 65))
    assert_refused(session, InvalidInput, "origin is empty", create(origin=" "))


def test_create_task_cleans_control_characters_and_keeps_unicode(session, settings, make_image):
    task = repo.create_task(
        session,
        source_image_id=make_image().id,
        instruction="turn\x00 it\x1b red 🍎\r\nkeep\tthe 背景",
        category="  color ",
        settings=settings,
    )
    assert task.instruction == "turn it red 🍎\nkeep\tthe 背景"
    assert task.category == "color"
    assert repo.get_task(session, task_id=task.id) is task


def test_lookups_raise_not_found(session):
    with pytest.raises(NotFound, match="task 12345"):
        repo.get_task(session, task_id=12345)
    with pytest.raises(NotFound, match="candidate 12345"):
        repo.get_candidate(session, candidate_id=12345)


def test_add_candidate_refuses_bad_input(session, make_task, make_image):
    task, _ = make_task(n=1)
    image = make_image()

    def add(**overrides):
        kwargs = dict(task_id=task.id, image_id=image.id, generator="flux-kontext")
        return lambda: repo.add_candidate(session, **(kwargs | overrides))

    assert_refused(session, NotFound, "task 999999 does not exist", add(task_id=999999))
    assert_refused(session, NotFound, "image 999999 does not exist", add(image_id=999999))
    assert_refused(session, InvalidInput, "generator is empty", add(generator="  "))
    assert_refused(session, InvalidInput, "at most 128", add(generator="g" * 129))
    assert_refused(session, InvalidInput, "JSON values", add(extra={"score": float("nan")}))
    assert_refused(session, InvalidInput, "must be a dict", add(extra=[1, 2]))


def test_add_candidate_pairs_with_every_other_candidate(session, make_task, make_image):
    task, candidates = make_task(n=4)
    pairs = session.execute(select(Pair.candidate_a_id, Pair.candidate_b_id).where(Pair.task_id == task.id)).all()
    ids = sorted(c.id for c in candidates)
    assert sorted(pairs) == list(itertools.combinations(ids, 2))
    again = repo.add_candidate(session, task_id=task.id, image_id=candidates[1].image_id, generator="model-1")
    assert again.id == candidates[1].id
    assert session.scalar(select(func.count()).select_from(Pair)) == 6
    extra = repo.add_candidate(session, task_id=task.id, image_id=make_image().id, generator="m", extra={"s": 0.5})
    assert extra.extra == {"s": 0.5}
    assert session.scalar(select(func.count()).select_from(Pair)) == 10


# ---------------------------------------------------------------------------------------------------- votes


def test_record_vote_refuses_bad_input(session, settings, make_task, make_user, vote):
    task, (a, b, c) = make_task(n=3)
    other_task, (x, _) = make_task(n=2)
    user = make_user()
    cases = [
        (NotFound, "task 999999 does not exist", dict(task_id=999999)),
        (NotFound, "candidate 999999 does not exist", dict(left_candidate_id=999999)),
        (NotFound, "candidate 999999 does not exist", dict(right_candidate_id=999999)),
        (InvalidInput, f"belongs to task {other_task.id}", dict(right_candidate_id=x.id)),
        (InvalidInput, "same candidate", dict(right_candidate_id=a.id)),
        (InvalidInput, "must be an integer", dict(left_candidate_id=str(a.id))),
        (InvalidInput, "origin is empty", dict(origin="")),
        (InvalidInput, "choice must be one of", dict(choice="better")),
        (InvalidInput, "choice must be one of", dict(choice=None)),
        (InvalidInput, "rationale has 4001", dict(rationale="r" * (settings.rationale_max_chars + 1))),
        (InvalidInput, "rationale must be text", dict(rationale=42)),
        (InvalidInput, "client_submission_id", dict(client_submission_id="")),
        (InvalidInput, "client_submission_id", dict(client_submission_id="x" * 129)),
        (InvalidInput, "client_submission_id", dict(client_submission_id="abc\x00")),
        (InvalidInput, "client_submission_id", dict(client_submission_id=None)),
        (InvalidInput, "must be a dict", dict(dimension_scores=[4])),
        (InvalidInput, "finite number", dict(dimension_scores={"faithfulness": "4"})),
        (InvalidInput, "finite number", dict(dimension_scores={"faithfulness": True})),
        (InvalidInput, "finite number", dict(dimension_scores={"faithfulness": float("inf")})),
        (InvalidInput, "outside", dict(dimension_scores={"faithfulness": 1e9})),
        (InvalidInput, "name is empty", dict(dimension_scores={"": 3})),
        (InvalidInput, "time_spent_ms", dict(time_spent_ms=-1)),
        (InvalidInput, "time_spent_ms", dict(time_spent_ms=2**40)),
        (InvalidInput, "time_spent_ms", dict(time_spent_ms=1.5)),
        (NotFound, "user 999999 does not exist", dict(annotator_id=999999)),
        (InvalidInput, "deactivated", dict(annotator_id=make_user(active=False).id)),
    ]
    for error, match, overrides in cases:
        assert_refused(session, error, match, lambda o=overrides: vote(task, a, b, **({"annotator_id": user.id} | o)))
    assert session.scalar(select(func.count()).select_from(Vote)) == 0


def test_one_vote_per_annotator_and_pair(session, make_task, make_user, vote):
    task, (a, b, _) = make_task(n=3)
    user = make_user()
    first = vote(task, a, b, annotator_id=user.id)
    assert first.created
    assert_refused(session, InvalidInput, "already voted on this pair", lambda: vote(task, a, b, annotator_id=user.id))
    # The pair is unordered: showing it the other way round is still the same pair.
    assert_refused(session, InvalidInput, "already voted on this pair", lambda: vote(task, b, a, annotator_id=user.id))
    other = make_user()
    reused = first.vote.client_submission_id
    assert_refused(
        session, InvalidInput, "fresh id", lambda: vote(task, a, b, annotator_id=other.id, client_submission_id=reused)
    )


def test_record_vote_counts_and_is_idempotent(session, make_task, make_user, vote):
    task, (a, b, _) = make_task(n=3)
    user = make_user()
    result = vote(
        task,
        b,
        a,
        annotator_id=user.id,
        choice="tie",
        client_submission_id="sub-1",
        dimension_scores={"faithfulness": 4, "quality": 3.5},
        time_spent_ms=5300,
    )
    assert result.created
    stored = result.vote
    assert (stored.left_candidate_id, stored.right_candidate_id, stored.choice) == (b.id, a.id, "tie")
    assert stored.dimension_scores == {"faithfulness": 4, "quality": 3.5}
    assert pair_counts(session, stored.pair_id) == (1, 1)
    before = snapshot(session)
    again = vote(task, b, a, annotator_id=user.id, choice="tie", client_submission_id="sub-1")
    assert (again.created, again.vote.id) == (False, stored.id)
    assert snapshot(session) == before


TEXTS = [
    "<script>alert(1)</script>",
    "'; DROP TABLE votes; --",
    "Robert'); DELETE FROM pairs WHERE ('1'='1",
    "👍🏽 👨‍👩‍👧 🏳️‍🌈",
    "هذا أفضل لأن الخلفية بقيت",
    "עברית ו-English mixed \u200f",
    "背景保持不变，但颜色错了",
    "e\u0301 a\u0308 ñ Z̤͔ͧ̑̓ä͖̭̈̇lͮ̒ͫǧ̗͚̚o̙̔ͮ̇͐̇",
    "line one\nline two\ttabbed",
    "%s %(name)s {0} \\x00 \\n $1 ? :param",
]


@pytest.mark.parametrize("text", TEXTS)
def test_text_round_trips_verbatim(session, factory, make_task, vote, text):
    task, (a, b, _) = make_task(n=3, instruction=text)
    result = vote(task, a, b, rationale=text)
    session.commit()
    with factory() as fresh:
        assert fresh.get(Vote, result.vote.id).rationale == text
        assert fresh.get(Task, task.id).instruction == text


def test_rationale_control_characters_are_stripped(session, make_task, vote):
    task, (a, b, c) = make_task(n=3)
    assert vote(task, a, b, rationale="a\x00b\x07c\nd\te\x1b[31m\x7f\x85").vote.rationale == "abc\nd\te[31m"
    assert vote(task, a, c, rationale="one\r\ntwo\rthree").vote.rationale == "one\ntwo\nthree"
    assert vote(task, b, c, rationale=" \n\x00 ").vote.rationale is None


# ------------------------------------------------------------------------------------------------ next pair


def test_next_pair_refuses_unknown_or_inactive_annotator(session, settings, make_task, make_user):
    make_task(n=2)
    assert_refused(
        session, NotFound, "user 999999", lambda: annotation_queue.next_pair(session, annotator_id=999999, settings=settings)
    )
    inactive = make_user(active=False)
    assert_refused(
        session,
        InvalidInput,
        "deactivated",
        lambda: annotation_queue.next_pair(session, annotator_id=inactive.id, settings=settings),
    )


def test_next_pair_reserves_and_returns_the_same_pair_on_reload(session, settings, make_task, make_user):
    assert annotation_queue.next_pair(session, annotator_id=make_user().id, settings=settings) is None  # nothing to do yet
    task, candidates = make_task(n=2)
    user = make_user()
    shown = annotation_queue.next_pair(session, annotator_id=user.id, settings=settings, rng=random.Random(0))
    assert shown is not None and shown.task_id == task.id
    assert shown.instruction == task.instruction and shown.source_image_id == task.source_image_id
    by_id = {c.id: c for c in candidates}
    assert {shown.left_candidate_id, shown.right_candidate_id} == set(by_id)
    assert shown.left_image_id == by_id[shown.left_candidate_id].image_id
    assert shown.right_generator == by_id[shown.right_candidate_id].generator
    assert shown.expires_at > utcnow() and shown.votes_done == 0
    assert pair_counts(session, shown.pair_id) == (0, 1)
    reload = annotation_queue.next_pair(session, annotator_id=user.id, settings=settings, rng=random.Random(1))
    assert reload == shown
    assert pair_counts(session, shown.pair_id) == (0, 1)


def test_left_right_order_is_randomised(session, settings, make_task, make_user):
    task, candidates = make_task(n=2)
    file_of = {c.id: image_path(settings, session.get(Image, c.image_id)) for c in candidates}
    lefts = set()
    for seed in range(12):
        user = make_user()
        shown = annotation_queue.next_pair(session, annotator_id=user.id, settings=settings, rng=random.Random(seed))
        lefts.add(shown.left_candidate_id)
        # The stored files come with the pair, on the side each candidate is shown.
        assert shown.source_file == image_path(settings, session.get(Image, task.source_image_id))
        assert (shown.left_file, shown.right_file) == (file_of[shown.left_candidate_id],
                                                        file_of[shown.right_candidate_id])
        annotation_queue.skip_assignment(session, assignment_id=shown.assignment_id, annotator_id=user.id)
    assert len(lefts) == 2


def test_next_pair_never_repeats_a_voted_pair(session, settings, make_task, make_user, vote):
    make_task(n=4)
    make_task(n=3)
    user = make_user()
    seen = []
    while (shown := annotation_queue.next_pair(session, annotator_id=user.id, settings=settings)) is not None:
        seen.append(shown.pair_id)
        assert shown.votes_done == len(seen) - 1
        vote(
            session.get(Task, shown.task_id),
            session.get(Candidate, shown.left_candidate_id),
            session.get(Candidate, shown.right_candidate_id),
            annotator_id=user.id,
        )
    assert len(seen) == len(set(seen)) == 6 + 3


def test_next_pair_fills_each_pair_to_the_overlap_target(session, settings, make_task, make_user, vote):
    make_task(n=3)
    k = settings.overlap_target
    for _ in range(8):
        user = make_user()
        while (shown := annotation_queue.next_pair(session, annotator_id=user.id, settings=settings)) is not None:
            vote(
                session.get(Task, shown.task_id),
                session.get(Candidate, shown.left_candidate_id),
                session.get(Candidate, shown.right_candidate_id),
                annotator_id=user.id,
            )
    rows = session.execute(select(Pair.vote_count, Pair.filled)).all()
    assert rows == [(k, k)] * 3
    assert session.scalar(select(func.count()).select_from(Assignment).where(Assignment.status == "done")) == 3 * k
    assert stats.dataset_stats(session, settings=settings).pairs_at_target == 3


def test_next_pair_prefers_fewest_votes_then_priority_then_id(session, settings, make_task, make_user, vote):
    _, (a, b, c) = make_task(n=3)  # pairs (a,b), (a,c), (b,c) in id order
    task = session.get(Task, a.task_id)
    vote(task, a, b, annotator_id=make_user().id)
    first = annotation_queue.next_pair(session, annotator_id=make_user().id, settings=settings)
    assert (first.left_candidate_id, first.right_candidate_id) in {(a.id, c.id), (c.id, a.id)}  # lowest id at 0
    pair_bc = session.scalar(select(Pair.id).where(Pair.candidate_a_id == b.id, Pair.candidate_b_id == c.id))
    pair_ab = session.scalar(select(Pair.id).where(Pair.candidate_a_id == a.id, Pair.candidate_b_id == b.id))
    assert annotation_queue.set_pair_priorities(session, priorities={pair_bc: 0.1, pair_ab: 9.0}) == 2
    # filled: (a,b) 1 by the vote, (a,c) 1 by the reservation, (b,c) 0: the least filled wins over priority.
    assert annotation_queue.next_pair(session, annotator_id=make_user().id, settings=settings).pair_id == pair_bc
    # All at filled == 1 now: the highest priority goes first.
    assert annotation_queue.next_pair(session, annotator_id=make_user().id, settings=settings).pair_id == pair_ab
    with pytest.raises(NotFound, match="do not exist"):
        annotation_queue.set_pair_priorities(session, priorities={999999: 1.0})
    with pytest.raises(InvalidInput, match="finite number"):
        annotation_queue.set_pair_priorities(session, priorities={pair_ab: float("nan")})


def test_priority_hook_reorders_within_the_lowest_fill_level(session, settings, make_task, make_user, vote):
    make_task(n=4)  # 6 pairs
    pair_ids = list(session.scalars(select(Pair.id).order_by(Pair.id)))
    seen_windows = []

    def last_first(_session, candidates):
        seen_windows.append([c.pair_id for c in candidates])
        return [c.pair_id for c in reversed(candidates)] + [424242]  # unknown ids are ignored

    shown = annotation_queue.next_pair(session, annotator_id=make_user().id, settings=settings, priority=last_first)
    assert shown.pair_id == pair_ids[-1] and seen_windows[-1] == pair_ids
    # The hook cannot lift a pair over a less-filled one: after this reservation pair_ids[-1] has filled 1.
    shown = annotation_queue.next_pair(session, annotator_id=make_user().id, settings=settings, priority=last_first)
    assert shown.pair_id == pair_ids[-2]
    only_first = annotation_queue.next_pair(
        session, annotator_id=make_user().id, settings=settings, priority=lambda _s, cands: [cands[0].pair_id]
    )
    assert only_first.pair_id == pair_ids[0]
    assert annotation_queue.next_pair(session, annotator_id=make_user().id, settings=settings, priority=lambda _s, _c: []) is None


def test_expired_assignments_release_their_slots(session, settings, make_task, make_user, vote):
    task, (a, b) = make_task(n=2)
    first, second, third = make_user(), make_user(), make_user()
    held = [annotation_queue.next_pair(session, annotator_id=u.id, settings=settings) for u in (first, second)]
    assert annotation_queue.next_pair(session, annotator_id=third.id, settings=settings) is None  # k == 2 slots are held
    session.execute(
        update(Assignment)
        .where(Assignment.id == held[0].assignment_id)
        .values(expires_at=utcnow() - timedelta(seconds=1))
    )
    offered = annotation_queue.next_pair(session, annotator_id=third.id, settings=settings)
    assert offered is not None and offered.pair_id == held[0].pair_id
    statuses = dict(session.execute(select(Assignment.annotator_id, Assignment.status)).all())
    assert statuses == {first.id: "expired", second.id: "open", third.id: "open"}
    assert pair_counts(session, offered.pair_id) == (0, 2)
    # A late vote on the expired reservation is kept and takes a slot of its own.
    vote(task, a, b, annotator_id=first.id)
    assert pair_counts(session, offered.pair_id) == (1, 3)


def test_skip_releases_the_slot_and_hides_the_pair_from_that_annotator(session, settings, make_task, make_user):
    make_task(n=2)
    user, other = make_user(), make_user()
    shown = annotation_queue.next_pair(session, annotator_id=user.id, settings=settings)
    assert_refused(
        session,
        NotFound,
        "assignment 999999",
        lambda: annotation_queue.skip_assignment(session, assignment_id=999999, annotator_id=user.id),
    )
    assert_refused(
        session,
        InvalidInput,
        "another annotator",
        lambda: annotation_queue.skip_assignment(session, assignment_id=shown.assignment_id, annotator_id=other.id),
    )
    annotation_queue.skip_assignment(session, assignment_id=shown.assignment_id, annotator_id=user.id)
    assert pair_counts(session, shown.pair_id) == (0, 0)
    before = snapshot(session)
    annotation_queue.skip_assignment(session, assignment_id=shown.assignment_id, annotator_id=user.id)  # twice: no-op
    assert snapshot(session) == before
    assert annotation_queue.next_pair(session, annotator_id=user.id, settings=settings) is None
    assert annotation_queue.next_pair(session, annotator_id=other.id, settings=settings).pair_id == shown.pair_id


def test_skipping_a_voted_assignment_is_refused(session, settings, make_task, make_user, vote):
    make_task(n=2)
    user = make_user()
    shown = annotation_queue.next_pair(session, annotator_id=user.id, settings=settings)
    vote(
        session.get(Task, shown.task_id),
        session.get(Candidate, shown.left_candidate_id),
        session.get(Candidate, shown.right_candidate_id),
        annotator_id=user.id,
    )
    assert pair_counts(session, shown.pair_id) == (1, 1)  # the reserved slot became the vote
    assert_refused(
        session,
        InvalidInput,
        "already voted",
        lambda: annotation_queue.skip_assignment(session, assignment_id=shown.assignment_id, annotator_id=user.id),
    )


# ------------------------------------------------------------------------------------ statistics and export


def test_dataset_stats(session, settings, make_task, make_user, vote):
    empty = stats.dataset_stats(session, settings=settings)
    assert (empty.votes, empty.tie_rate, empty.rationale_coverage, empty.votes_per_day) == (0, 0.0, 0.0, [])
    task, (a, b, c) = make_task(n=3)
    users = [make_user() for _ in range(3)]
    vote(task, a, b, annotator_id=users[0].id, choice="left", rationale="A keeps the dog")
    vote(task, a, b, annotator_id=users[1].id, choice="tie")
    vote(task, a, c, annotator_id=users[0].id, choice="both_bad", rationale="both ignore 'wood'")
    vote(task, b, c, choice="right")  # anonymous (imported)
    counts = stats.dataset_stats(session, settings=settings)
    assert (counts.tasks, counts.candidates, counts.pairs, counts.votes) == (1, 3, 3, 4)
    assert counts.votes_by_choice == {"left": 1, "right": 1, "tie": 1, "both_bad": 1}
    assert counts.tie_rate == 0.5 and counts.rationale_coverage == 0.5
    assert counts.annotators == 2 and counts.pairs_at_target == 1
    assert counts.votes_per_day == [(utcnow().date(), 4)]


def test_training_votes_in_id_order_after_a_watermark(session, make_task, make_user, vote):
    task, (a, b, c) = make_task(n=3)
    first = vote(task, b, a, choice="right", rationale="A is sharper").vote
    second = vote(task, a, c, choice="tie", annotator_id=make_user().id).vote
    rows = stats.training_votes(session)
    assert [r.vote_id for r in rows] == [first.id, second.id]
    assert dataclasses.asdict(rows[0]) == dict(
        vote_id=first.id,
        task_id=task.id,
        instruction=task.instruction,
        source_image_id=task.source_image_id,
        left_candidate_id=b.id,
        left_image_id=b.image_id,
        left_generator=b.generator,
        right_candidate_id=a.id,
        right_image_id=a.image_id,
        right_generator=a.generator,
        choice="right",
        rationale="A is sharper",
        annotator_id=None,
        dimension_scores=None,
    )
    assert [r.vote_id for r in stats.training_votes(session, after_vote_id=first.id)] == [second.id]
    assert stats.training_votes(session, after_vote_id=second.id) == []
