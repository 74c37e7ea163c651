"""Tasks, candidates, votes, the next pair to annotate, and dataset statistics.

Every function takes a `Session`, is keyword-only after it, and never commits: the caller owns the transaction.
Bad input raises `InvalidInput` (or `NotFound`) before anything is written.

Counters on `pairs` are kept by guarded SQL UPDATEs (`SET filled = filled + 1 WHERE ... AND filled < :k`), never
read-modify-written in Python, so concurrent transactions cannot lose an increment or overfill a pair. The
invariant is `pairs.filled == votes on the pair + open assignments of the pair`; `filled` can exceed the overlap
target only through votes that arrive without a reservation (imports, late votes after expiry), which are kept.
These UPDATEs bypass objects already loaded in the session: re-read a `Pair` or `Assignment` to see new values.

Next pair: the annotator's open, unexpired assignment if any (a reload shows the same pair, same layout);
otherwise expire stale assignments, read a short window of pairs in `ix_pairs_next` order (fewest `filled`,
highest `priority`, lowest id) that the annotator has not voted on, does not hold and did not skip (NOT EXISTS
on indexes, so the cost does not grow with the table), optionally re-rank it with a `PriorityHook`, and reserve
the first pair whose guarded UPDATE succeeds. A skipped pair is never offered to that annotator again.

Idempotency: `votes.client_submission_id` is unique; the insert is `INSERT … ON CONFLICT DO NOTHING` on both
backends, so a double submission racing in two transactions stores one vote and both calls return it.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from storage.annotation_queue import _set_status
from storage.caps import check_daily_cap
from storage.errors import InvalidInput, NotFound
from storage.models import Assignment, Candidate, Image, Pair, Task, Vote
from storage.settings import Settings
from storage.validation import (
    CATEGORY_MAX_CHARS,
    EXTERNAL_ID_MAX_CHARS,
    NAME_MAX_CHARS,
    ORIGIN_MAX_CHARS,
    _choice,
    _client_submission_id,
    _dimension_scores,
    _id,
    _name,
    _optional_text,
    _provenance,
    _require_active_user,
    _source,
    _text,
    _time_spent,
    json_object,
)

# --------------------------------------------------------------------------------------------- result types


@dataclass(frozen=True)
class VoteResult:
    vote: Vote
    created: bool  # False: the client_submission_id was already stored and this call changed nothing


# --------------------------------------------------------------------------------------------------- lookups


def get_task(session: Session, *, task_id: int) -> Task:
    """The task with this id, or `NotFound`."""
    task = session.get(Task, _id(task_id, kind="task"))
    if task is None:
        raise NotFound(f"task {task_id} does not exist; pick a task id from the task list.")
    return task


def get_candidate(session: Session, *, candidate_id: int) -> Candidate:
    """The candidate with this id, or `NotFound`."""
    candidate = session.get(Candidate, _id(candidate_id, kind="candidate"))
    if candidate is None:
        raise NotFound(f"candidate {candidate_id} does not exist; pick a candidate id of the task.")
    return candidate


def _require_image(session: Session, image_id: int) -> Image:
    image = session.get(Image, _id(image_id, kind="image"))
    if image is None:
        raise NotFound(f"image {image_id} does not exist; store the image first (storage.images.store_image).")
    return image


def _dialect_insert(session: Session, model: type) -> Any:
    """A dialect INSERT construct, for `on_conflict_do_nothing` (PostgreSQL and SQLite both have it)."""
    return _insert_for(session.get_bind().dialect.name)(model)


def _insert_for(dialect_name: str) -> Any:
    if dialect_name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    else:
        from sqlalchemy.dialects.sqlite import insert
    return insert


@cache
def _vote_insert_statement(dialect_name: str) -> Any:
    # Built once with the values bound at execution: embedding them costs more than the INSERT itself.
    return _insert_for(dialect_name)(Vote).on_conflict_do_nothing().returning(Vote)


# ------------------------------------------------------------------------------------- tasks and candidates


def create_task(
    session: Session,
    *,
    source_image_id: int,
    instruction: str,
    category: str | None = None,
    origin: str = "manual",
    external_id: str | None = None,
    provenance: str = "human",
    source: str | None = None,
    settings: Settings,
) -> Task:
    """Insert a task (source image + edit instruction)."""
    instruction = _text(
        instruction, field="instruction", max_chars=settings.instruction_max_chars, example="make the sky purple"
    )
    category = _optional_text(category, field="category", max_chars=CATEGORY_MAX_CHARS, example="color")
    origin = _name(origin, field="origin", max_chars=ORIGIN_MAX_CHARS, example="manual")
    external_id = _optional_text(external_id, field="external_id", max_chars=EXTERNAL_ID_MAX_CHARS, example="a1")
    _require_image(session, source_image_id)
    task = Task(
        source_image_id=source_image_id,
        instruction=instruction,
        origin=origin,
        provenance=_provenance(provenance),
        source=_source(source),
        category=category.strip() if category else None,
        external_id=external_id,
    )
    session.add(task)
    session.flush()
    return task


def add_candidate(
    session: Session, *, task_id: int, image_id: int, generator: str, extra: dict[str, Any] | None = None
) -> Candidate:
    """Add an edited image to a task and pair it with every other candidate; returns an existing duplicate."""
    generator = _name(generator, field="generator", max_chars=NAME_MAX_CHARS, example="instruct-pix2pix")
    extra = json_object(extra, field="extra")
    # Row lock on PostgreSQL (SQLite's BEGIN IMMEDIATE already serialises): two candidates added at once to
    # the same task must each see the other, or their pair would never be created.
    task = session.get(Task, _id(task_id, kind="task"), with_for_update=True)
    if task is None:
        raise NotFound(f"task {task_id} does not exist; create the task before adding candidates.")
    _require_image(session, image_id)
    others = list(task.candidates)
    for other in others:
        if other.image_id == image_id and other.generator == generator:
            return other
    candidate = Candidate(task=task, image_id=image_id, generator=generator, extra=extra)
    session.add(candidate)
    session.flush()
    for other in others:
        _ensure_pair(session, task_id=task.id, first=other.id, second=candidate.id)
    return candidate


def _ensure_pair(session: Session, *, task_id: int, first: int, second: int) -> int:
    """The id of the pair of two candidates, inserting it if missing (race-safe on both backends)."""
    low, high = min(first, second), max(first, second)
    insert = _dialect_insert(session, Pair).values(task_id=task_id, candidate_a_id=low, candidate_b_id=high)
    pair_id = session.scalar(insert.on_conflict_do_nothing().returning(Pair.id))
    if pair_id is None:
        pair_id = session.scalar(select(Pair.id).where(Pair.candidate_a_id == low, Pair.candidate_b_id == high))
    return pair_id


# ---------------------------------------------------------------------------------------------------- votes


def record_vote(
    session: Session,
    *,
    task_id: int,
    left_candidate_id: int,
    right_candidate_id: int,
    choice: str,
    rationale: str | None = None,
    annotator_id: int | None = None,
    client_submission_id: str,
    dimension_scores: dict[str, float] | None = None,
    time_spent_ms: int | None = None,
    origin: str = "annotate",
    provenance: str = "human",
    source: str | None = None,
    settings: Settings,
) -> VoteResult:
    """Store one vote; a repeated `client_submission_id` is a no-op that returns the first vote."""
    values = {
        "task_id": _id(task_id, kind="task"),
        "left_candidate_id": _id(left_candidate_id, kind="candidate"),
        "right_candidate_id": _id(right_candidate_id, kind="candidate"),
        "choice": _choice(choice),
        "rationale": _optional_text(
            rationale,
            field="rationale",
            max_chars=settings.rationale_max_chars,
            example="B kept the background but ignored 'make it wood'",
        ),
        "annotator_id": None if annotator_id is None else _id(annotator_id, kind="user"),
        "client_submission_id": _client_submission_id(client_submission_id),
        "dimension_scores": _dimension_scores(dimension_scores),
        "time_spent_ms": _time_spent(time_spent_ms),
        "origin": _name(origin, field="origin", max_chars=ORIGIN_MAX_CHARS, example="annotate"),
        "provenance": _provenance(provenance),
        "source": _source(source),
    }
    if left_candidate_id == right_candidate_id:
        raise InvalidInput(f"left and right are the same candidate ({left_candidate_id}); show two different ones.")
    values["pair_id"] = _vote_pair(session, values, settings)
    # No SELECT-then-INSERT race: the unique keys decide, and a conflict waits for the other transaction. A resent
    # submission is looked up only when its insert conflicts (a new vote, the usual case, costs no lookup).
    vote = session.scalar(_vote_insert_statement(session.get_bind().dialect.name), values)
    if vote is None:  # this submission, or this annotator's vote on the pair, is already stored
        first = _first_submission(session, values)
        if first is not None:
            return VoteResult(first, created=False)
        if values["annotator_id"] is not None:
            _refuse_second_vote(session, values)
        raise AssertionError("vote insert conflicted on no known unique key")
    _count_vote(session, pair_id=values["pair_id"], annotator_id=values["annotator_id"])
    return VoteResult(vote, created=True)


def _first_submission(session: Session, values: dict[str, Any]) -> Vote | None:
    vote = session.scalar(select(Vote).where(Vote.client_submission_id == values["client_submission_id"]))
    if vote is not None and (vote.annotator_id, vote.task_id) != (values["annotator_id"], values["task_id"]):
        raise InvalidInput(
            f"client_submission_id {values['client_submission_id']!r} was already used for "
            "another annotator's or task's vote; send a fresh id (a UUID) with each new vote."
        )
    return vote


def _vote_pair(session: Session, values: dict[str, Any], settings: Settings) -> int:
    """Check the task, candidates and annotator; return the pair id (inserted if it was missing)."""
    task_id, ids = values["task_id"], (values["left_candidate_id"], values["right_candidate_id"])
    low, high = sorted(ids)
    pair = session.execute(
        select(Pair.id, Pair.task_id).where(Pair.candidate_a_id == low, Pair.candidate_b_id == high)
    ).one_or_none()
    if pair is not None and pair.task_id == task_id:  # pairs are only made of two candidates of their task
        _require_voter(session, values, settings)
        return pair.id
    owner = dict(session.execute(select(Candidate.id, Candidate.task_id).where(Candidate.id.in_(ids))).all())
    for side, candidate_id in zip(("left", "right"), ids, strict=True):
        if candidate_id not in owner:
            raise NotFound(f"{side} candidate {candidate_id} does not exist; send candidate ids of the shown task.")
        if owner[candidate_id] != task_id:
            get_task(session, task_id=task_id)  # an unknown task is the clearer message
            raise InvalidInput(
                f"{side} candidate {candidate_id} belongs to task {owner[candidate_id]}, not task "
                f"{task_id}; send candidates of the task that was shown."
            )
    _require_voter(session, values, settings)
    return _ensure_pair(session, task_id=task_id, first=low, second=high)


def _require_voter(session: Session, values: dict[str, Any], settings: Settings) -> None:
    if values["annotator_id"] is not None:
        user = _require_active_user(session, values["annotator_id"])
        if values["provenance"] == "human":  # imported and simulated votes were cast elsewhere, on other days
            check_daily_cap(session, user=user, settings=settings,
                            resent=lambda: _first_submission(session, values) is not None)


def _refuse_second_vote(session: Session, values: dict[str, Any]) -> None:
    low, high = sorted((values["left_candidate_id"], values["right_candidate_id"]))
    earlier = session.scalar(
        select(Vote.id)
        .join(Pair, Pair.id == Vote.pair_id)
        .where(Pair.candidate_a_id == low, Pair.candidate_b_id == high, Vote.annotator_id == values["annotator_id"])
    )
    if earlier is not None:
        raise InvalidInput(f"this annotator already voted on this pair (vote {earlier}); ask for the next pair.")


def _count_vote(session: Session, *, pair_id: int, annotator_id: int | None) -> None:
    """vote_count += 1; filled += 1 unless the vote fills the annotator's own reservation of the pair."""
    released = 0
    if annotator_id is not None:
        released = _set_status(
            session,
            (Assignment.annotator_id == annotator_id, Assignment.status == "open", Assignment.pair_id == pair_id),
            "done",
        )
    session.execute(
        update(Pair)
        .where(Pair.id == pair_id)
        .values(vote_count=Pair.vote_count + 1, filled=Pair.filled + 1 - released)
        .execution_options(synchronize_session=False)
    )
