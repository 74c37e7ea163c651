"""Concurrent writers on SQLite and PostgreSQL: no lost or duplicated votes, no pair filled past its target.

Every thread has its own Session from `factory` (its own connection) and its own annotator; a Barrier starts
them together so their transactions overlap.
"""

from __future__ import annotations

import random
import threading
import uuid
from collections.abc import Callable

from sqlalchemy import func, select

from storage import annotation_queue
from storage import repository as repo
from storage.db import transaction
from storage.models import Assignment, Image, Pair, User, Vote

THREADS = 16


def run_threads(count: int, work: Callable[[int, threading.Barrier], None]) -> None:
    """Run `work(index, barrier)` in `count` threads; re-raise the first error any of them hit."""
    barrier = threading.Barrier(count)
    errors: list[BaseException] = []

    def guarded(index: int) -> None:
        try:
            work(index, barrier)
        except BaseException as exc:  # noqa: BLE001 - handed to the main thread below
            errors.append(exc)
            barrier.abort()

    threads = [threading.Thread(target=guarded, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=300)
    assert not any(thread.is_alive() for thread in threads), "a worker thread hung"
    if errors:
        raise errors[0]


def seed(factory, settings, *, tasks: int, candidates_per_task: int, annotators: int) -> list[int]:
    """Tasks with candidates (all pairs created) and annotators; returns the annotator ids."""
    with transaction(factory) as session:
        for t in range(tasks):
            source = Image(sha256=uuid.uuid4().hex * 2, width=8, height=8, format="png", byte_size=10)
            session.add(source)
            session.flush()
            task = repo.create_task(session, source_image_id=source.id, instruction=f"edit {t}", settings=settings)
            for c in range(candidates_per_task):
                image = Image(sha256=uuid.uuid4().hex * 2, width=8, height=8, format="png", byte_size=10)
                session.add(image)
                session.flush()
                repo.add_candidate(session, task_id=task.id, image_id=image.id, generator=f"g{c}")
        users = [User(name=f"u{i}-{uuid.uuid4().hex[:6]}", role="annotator") for i in range(annotators)]
        session.add_all(users)
        session.flush()
        return [user.id for user in users]


def test_concurrent_votes_with_resubmissions(factory, settings):
    votes_per_thread = 50
    annotators = seed(factory, settings, tasks=10, candidates_per_task=4, annotators=THREADS)  # 60 pairs
    with factory() as session:
        pairs = session.execute(select(Pair.task_id, Pair.candidate_a_id, Pair.candidate_b_id)).all()
    submitted: list[list[str]] = [[] for _ in range(THREADS)]

    def work(index: int, barrier: threading.Barrier) -> None:
        rng = random.Random(index)
        mine = rng.sample(pairs, len(pairs))
        payloads: list[dict] = []
        barrier.wait()
        for n in range(votes_per_thread):
            if payloads and rng.random() < 0.10:  # a deliberate resubmission of an earlier vote, same payload
                payload, expect_created = rng.choice(payloads), False
            else:
                task_id, a, b = mine.pop()
                payload = dict(
                    task_id=task_id,
                    left_candidate_id=b,
                    right_candidate_id=a,
                    choice="right",
                    rationale=f"thread {index} vote {n} ✓",
                    annotator_id=annotators[index],
                    client_submission_id=f"{index}-{n}-{uuid.uuid4().hex}",
                )
                payloads.append(payload)
                expect_created = True
            with transaction(factory) as session:
                result = repo.record_vote(session, settings=settings, **payload)
            assert result.created is expect_created
            submitted[index].append(payload["client_submission_id"])

    run_threads(THREADS, work)
    unique = {csid for ids in submitted for csid in ids}
    assert sum(map(len, submitted)) == THREADS * votes_per_thread
    assert len(unique) < THREADS * votes_per_thread  # some resubmissions did happen
    with factory() as session:
        stored = session.scalars(select(Vote.client_submission_id)).all()
        assert len(stored) == len(set(stored)) and set(stored) == unique
        # No lost update: every pair's counters equal the votes actually stored on it.
        per_pair = dict(session.execute(select(Vote.pair_id, func.count()).group_by(Vote.pair_id)).all())
        counters = session.execute(select(Pair.id, Pair.vote_count, Pair.filled)).all()
        assert all(count == filled == per_pair.get(pair_id, 0) for pair_id, count, filled in counters)


def test_one_submission_raced_from_many_threads_is_stored_once(factory, settings):
    (annotator,) = seed(factory, settings, tasks=1, candidates_per_task=2, annotators=1)
    with factory() as session:
        task_id, a, b = session.execute(select(Pair.task_id, Pair.candidate_a_id, Pair.candidate_b_id)).one()
    payload = dict(
        task_id=task_id,
        left_candidate_id=a,
        right_candidate_id=b,
        choice="tie",
        annotator_id=annotator,
        client_submission_id="double-click",
    )
    outcomes: list[tuple[bool, int]] = []

    def work(_index: int, barrier: threading.Barrier) -> None:
        with transaction(factory) as session:
            barrier.wait()
            result = repo.record_vote(session, settings=settings, **payload)
            outcomes.append((result.created, result.vote.id))

    run_threads(THREADS, work)
    assert sorted(created for created, _ in outcomes) == [False] * (THREADS - 1) + [True]
    assert len({vote_id for _, vote_id in outcomes}) == 1
    with factory() as session:
        assert session.scalar(select(func.count()).select_from(Vote)) == 1
        assert session.execute(select(Pair.vote_count, Pair.filled)).one() == (1, 1)


def test_concurrent_next_pair_never_overfills_a_pair(factory, settings):
    k = settings.overlap_target
    annotators = seed(factory, settings, tasks=1, candidates_per_task=3, annotators=THREADS)  # 3 pairs
    held: list[int] = []

    def reserve_once(index: int, barrier: threading.Barrier) -> None:
        with transaction(factory) as session:
            barrier.wait()
            shown = annotation_queue.next_pair(session, annotator_id=annotators[index], settings=settings)
            if shown is not None:
                held.append(shown.pair_id)

    run_threads(THREADS, reserve_once)
    assert len(held) == 3 * k  # every slot taken, none twice
    assert_within_target(factory, k)


def test_concurrent_annotators_fill_every_pair_exactly_to_target(factory, settings):
    k = settings.overlap_target
    annotators = seed(factory, settings, tasks=1, candidates_per_task=3, annotators=THREADS)  # 3 pairs

    def annotate_until_done(index: int, barrier: threading.Barrier) -> None:
        barrier.wait()
        while True:
            with transaction(factory) as session:
                shown = annotation_queue.next_pair(session, annotator_id=annotators[index], settings=settings)
            if shown is None:
                return
            with transaction(factory) as session:
                repo.record_vote(
                    session,
                    task_id=shown.task_id,
                    left_candidate_id=shown.left_candidate_id,
                    right_candidate_id=shown.right_candidate_id,
                    choice="left",
                    annotator_id=annotators[index],
                    client_submission_id=uuid.uuid4().hex,
                    settings=settings,
                )
            assert_within_target(factory, k)

    run_threads(THREADS, annotate_until_done)
    with factory() as session:
        assert session.execute(select(Pair.vote_count, Pair.filled)).all() == [(k, k)] * 3
        assert session.scalar(select(func.count()).select_from(Assignment).where(Assignment.status == "open")) == 0


def assert_within_target(factory, k: int) -> None:
    """filled <= k, and open assignments + votes <= k, for every pair."""
    open_ = select(func.count()).where(Assignment.pair_id == Pair.id, Assignment.status == "open").scalar_subquery()
    votes = select(func.count()).where(Vote.pair_id == Pair.id).scalar_subquery()
    with factory() as session:
        # One statement, so PostgreSQL reads all three from one snapshot while other threads keep writing.
        for pair_id, filled, held, voted in session.execute(select(Pair.id, Pair.filled, open_, votes)).all():
            assert filled <= k and held + voted <= k, (pair_id, filled, held, voted)
