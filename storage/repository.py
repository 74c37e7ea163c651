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

import json
import math
import random
import re
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from functools import cache
from pathlib import Path
from typing import Any, Protocol

from sqlalchemy import Select, bindparam, case, distinct, func, literal_column, select, update
from sqlalchemy.orm import Session, aliased

from storage.errors import InvalidInput, NotFound
from storage.images import blob_path
from storage.models import CHOICES, Assignment, Candidate, Image, Pair, Task, User, Vote, utcnow
from storage.settings import Settings

NAME_MAX_CHARS = 128  # candidates.generator
CATEGORY_MAX_CHARS = 64
ORIGIN_MAX_CHARS = 64
EXTERNAL_ID_MAX_CHARS = 255
CLIENT_SUBMISSION_ID_MAX_CHARS = 128
DIMENSION_SCORE_RANGE = (-100.0, 100.0)  # covers Likert 1-5, 0-10 and percentages
DIMENSION_MAX_KEYS = 32
TIME_SPENT_MAX_MS = 2**31 - 1  # the column is a 32-bit integer on PostgreSQL
NEXT_PAIR_WINDOW = 32  # candidate pairs read per attempt; the priority hook re-ranks this many
_RESERVE_ATTEMPTS = 5  # re-reads of the window when concurrent annotators took every pair in it
_MAX_ID = 2**63 - 1

# C0/C1 control characters except \t and \n, and lone surrogates (not encodable, PostgreSQL refuses them).
_CONTROL_CHARS = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\ud800-\udfff]")


# --------------------------------------------------------------------------------------------- result types


@dataclass(frozen=True)
class VoteResult:
    vote: Vote
    created: bool  # False: the client_submission_id was already stored and this call changed nothing


@dataclass(frozen=True)
class PairCandidate:
    """One row of the next-pair window, as a `PriorityHook` sees it."""

    pair_id: int
    task_id: int
    candidate_a_id: int
    candidate_b_id: int
    filled: int
    priority: float


class PriorityHook(Protocol):
    """Re-ranks the next-pair window (e.g. most model-uncertain first); returns pair ids, best first.

    The window holds the `NEXT_PAIR_WINDOW` pairs with the fewest `filled`, then highest `pairs.priority`,
    then lowest id. The hook's order replaces `priority` within one `filled` level: fewest-filled still goes
    first. Ids the hook leaves out are not offered in this call; unknown ids are ignored. For sampling over
    the whole pool rather than a window, write `pairs.priority` with `set_pair_priorities()` instead.
    """

    def __call__(self, session: Session, candidates: Sequence[PairCandidate]) -> Sequence[int]: ...


@dataclass(frozen=True)
class PairToShow:
    """A reserved pair in the left/right order the annotator sees it."""

    assignment_id: int
    pair_id: int
    task_id: int
    instruction: str
    category: str | None
    source_image_id: int
    left_candidate_id: int
    left_image_id: int
    left_generator: str
    right_candidate_id: int
    right_image_id: int
    right_generator: str
    expires_at: datetime
    votes_done: int  # the annotator's votes so far (progress)
    source_file: Path  # the three images' stored files (`storage.images.image_path`), read with the pair
    left_file: Path
    right_file: Path


@dataclass(frozen=True)
class DatasetStats:
    tasks: int
    candidates: int
    pairs: int
    votes: int
    votes_by_choice: dict[str, int]
    tie_rate: float  # (tie + both_bad) / votes
    rationale_coverage: float  # share of votes with a rationale
    annotators: int  # distinct annotators who voted
    votes_per_day: list[tuple[date, int]]  # UTC days, oldest first
    pairs_at_target: int  # pairs with vote_count >= overlap target


@dataclass(frozen=True)
class TrainingVote:
    vote_id: int
    task_id: int
    instruction: str
    source_image_id: int
    left_candidate_id: int
    left_image_id: int
    left_generator: str
    right_candidate_id: int
    right_image_id: int
    right_generator: str
    choice: str
    rationale: str | None
    annotator_id: int | None


# ------------------------------------------------------------------------------------------------ validation


def clean_text(value: str) -> str:
    """Drop NUL, other control characters and lone surrogates; keep \\n, \\t and all other Unicode."""
    return _CONTROL_CHARS.sub("", value.replace("\r\n", "\n").replace("\r", "\n"))


def _text(value: object, *, field: str, max_chars: int, example: str) -> str:
    if not isinstance(value, str):
        raise InvalidInput(f"{field} must be text, got {type(value).__name__}; send a string such as {example!r}.")
    cleaned = clean_text(value)
    if not cleaned.strip():
        raise InvalidInput(f"{field} is empty (after removing control characters); write e.g. {example!r}.")
    if len(cleaned) > max_chars:
        raise InvalidInput(f"{field} has {len(cleaned)} characters; shorten it to at most {max_chars}.")
    return cleaned


def _optional_text(value: object, *, field: str, max_chars: int, example: str) -> str | None:
    if value is None or (isinstance(value, str) and not clean_text(value).strip()):
        return None
    return _text(value, field=field, max_chars=max_chars, example=example)


def _name(value: object, *, field: str, max_chars: int, example: str) -> str:
    # Names (generators, categories, origins) are identifiers: surrounding whitespace is never meant.
    return _text(value, field=field, max_chars=max_chars, example=example).strip()


def _id(value: object, *, kind: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidInput(f"{kind} id must be an integer, got {value!r}.")
    if not 1 <= value <= _MAX_ID:
        raise NotFound(f"{kind} {value} does not exist; ids are positive integers.")
    return value


def json_object(value: object, *, field: str, optional: bool = True) -> dict[str, Any] | None:
    """`value` if it is a JSON object without NaN (PostgreSQL's JSON refuses NaN); None passes when optional."""
    if value is None and optional:
        return None
    if not isinstance(value, dict):
        allowed = "a dict (a JSON object) or None" if optional else "a dict (a JSON object)"
        raise InvalidInput(f"{field} must be {allowed}, got {type(value).__name__}.")
    try:
        json.dumps(value, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise InvalidInput(f"{field} must hold only JSON values (no NaN, sets or objects): {exc}.") from None
    return value


def _dimension_scores(value: object) -> dict[str, float] | None:
    if value is None or value == {}:
        return None
    if not isinstance(value, dict) or len(value) > DIMENSION_MAX_KEYS:
        raise InvalidInput(
            f"dimension_scores must be a dict of up to {DIMENSION_MAX_KEYS} name → number entries, "
            'e.g. {"faithfulness": 4}.'
        )
    low, high = DIMENSION_SCORE_RANGE
    scores = {}
    for key, score in value.items():
        name = _name(key, field="a dimension_scores name", max_chars=64, example="faithfulness")
        if isinstance(score, bool) or not isinstance(score, int | float) or not math.isfinite(score):
            raise InvalidInput(f"dimension_scores[{name!r}] must be a finite number, got {score!r}.")
        if not low <= score <= high:
            raise InvalidInput(f"dimension_scores[{name!r}]={score} is outside [{low:g}, {high:g}].")
        scores[name] = score
    return scores


def _time_spent(value: object) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= TIME_SPENT_MAX_MS:
        raise InvalidInput(
            f"time_spent_ms must be a whole number of milliseconds in [0, {TIME_SPENT_MAX_MS}], got {value!r}."
        )
    return value


def _client_submission_id(value: object) -> str:
    ok = isinstance(value, str) and value.strip() and len(value) <= CLIENT_SUBMISSION_ID_MAX_CHARS
    if not ok or clean_text(value) != value:
        raise InvalidInput(
            f"client_submission_id must be a non-empty printable string of at most "
            f"{CLIENT_SUBMISSION_ID_MAX_CHARS} characters (e.g. a UUID), got {value!r:.80}."
        )
    return value


def _choice(value: object) -> str:
    if value not in CHOICES:
        raise InvalidInput(f"choice must be one of {', '.join(CHOICES)}; got {value!r:.40}.")
    return value  # type: ignore[return-value]


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


def _require_active_user(session: Session, user_id: int) -> User:
    user = session.get(User, _id(user_id, kind="user"))
    if user is None:
        raise NotFound(f"user {user_id} does not exist; create the annotator first.")
    if not user.active:
        raise InvalidInput(f"user {user.name!r} is deactivated; an admin must reactivate them before they vote.")
    return user


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


def set_pair_priorities(session: Session, *, priorities: Mapping[int, float]) -> int:
    """Write `pairs.priority` (higher is offered first within a `filled` level); returns rows updated."""
    rows = []
    for pair_id, value in priorities.items():
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            raise InvalidInput(f"priority of pair {pair_id} must be a finite number, got {value!r}.")
        rows.append({"id": _id(pair_id, kind="pair"), "priority": float(value)})
    if not rows:
        return 0
    known = set(session.scalars(select(Pair.id).where(Pair.id.in_([r["id"] for r in rows]))))
    missing = sorted({r["id"] for r in rows} - known)
    if missing:
        raise NotFound(f"pairs {missing[:10]} do not exist; pass ids from the pairs table.")
    session.execute(update(Pair), rows)
    return len(rows)


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
    }
    if left_candidate_id == right_candidate_id:
        raise InvalidInput(f"left and right are the same candidate ({left_candidate_id}); show two different ones.")
    values["pair_id"] = _vote_pair(session, values)
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


def _vote_pair(session: Session, values: dict[str, Any]) -> int:
    """Check the task, candidates and annotator; return the pair id (inserted if it was missing)."""
    task_id, ids = values["task_id"], (values["left_candidate_id"], values["right_candidate_id"])
    low, high = sorted(ids)
    pair = session.execute(
        select(Pair.id, Pair.task_id).where(Pair.candidate_a_id == low, Pair.candidate_b_id == high)
    ).one_or_none()
    if pair is not None and pair.task_id == task_id:  # pairs are only made of two candidates of their task
        _require_voter(session, values)
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
    _require_voter(session, values)
    return _ensure_pair(session, task_id=task_id, first=low, second=high)


def _require_voter(session: Session, values: dict[str, Any]) -> None:
    if values["annotator_id"] is not None:
        _require_active_user(session, values["annotator_id"])


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


def _set_status(session: Session, where: tuple, status: str) -> int:
    """Guarded assignment status change; returns how many rows moved (0 when another transaction won)."""
    result = session.execute(
        update(Assignment).where(*where).values(status=status).execution_options(synchronize_session=False)
    )
    return result.rowcount


def _release_slots(session: Session, pair_id: int, count: int) -> None:
    # CASE keeps `filled` at >= 0 even if a counter ever drifted (portable, unlike GREATEST/MAX).
    session.execute(
        update(Pair)
        .where(Pair.id == pair_id)
        .values(filled=case((Pair.filled >= count, Pair.filled - count), else_=0))
        .execution_options(synchronize_session=False)
    )


# ------------------------------------------------------------------------------------------------ next pair


def next_pair(
    session: Session,
    *,
    annotator_id: int,
    settings: Settings,
    priority: PriorityHook | None = None,
    rng: random.Random | None = None,
) -> PairToShow | None:
    """Reserve the next pair for this annotator (or return the one they already hold); None when none is left."""
    _require_active_user(session, annotator_id)
    now = utcnow()
    assignment = session.scalar(
        select(Assignment)
        .where(Assignment.annotator_id == annotator_id, Assignment.status == "open", Assignment.expires_at > now)
        .order_by(Assignment.id.desc())
        .limit(1)
    )
    if assignment is None:
        _expire_stale_assignments(session, now)
        assignment = _reserve_pair(session, annotator_id, settings, priority, rng or random.Random(), now)
        if assignment is None:
            return None
    return _pair_to_show(session, assignment, settings)


def _expire_stale_assignments(session: Session, now: datetime) -> None:
    # One guarded UPDATE: of two concurrent sweeps, only the one that moves a row releases its slot.
    expired = session.scalars(
        update(Assignment)
        .where(Assignment.status == "open", Assignment.expires_at < now)
        .values(status="expired")
        .returning(Assignment.pair_id)
        .execution_options(synchronize_session=False)
    ).all()
    for pair_id, count in sorted(Counter(expired).items()):  # sorted: a fixed lock order across sweeps
        _release_slots(session, pair_id, count)


def _reserve_pair(
    session: Session,
    annotator_id: int,
    settings: Settings,
    priority: PriorityHook | None,
    rng: random.Random,
    now: datetime,
) -> Assignment | None:
    k = settings.overlap_target
    for _ in range(_RESERVE_ATTEMPTS):
        ranked = _ranked(session, _pair_window(session, annotator_id, k), priority)
        if not ranked:
            return None
        for pair_id in ranked:
            taken = session.execute(
                update(Pair)
                .where(Pair.id == pair_id, Pair.filled < k)
                .values(filled=Pair.filled + 1)
                .execution_options(synchronize_session=False)
            ).rowcount
            if taken:
                assignment = Assignment(
                    pair_id=pair_id,
                    annotator_id=annotator_id,
                    status="open",
                    expires_at=now + timedelta(seconds=settings.assignment_ttl_s),
                    swapped=rng.random() < 0.5,
                )
                session.add(assignment)
                session.flush()
                return assignment
    return None  # every pair read was taken by concurrent annotators each time; the caller may ask again


def _pair_window(session: Session, annotator_id: int, k: int) -> list[PairCandidate]:
    """Up to NEXT_PAIR_WINDOW open pairs this annotator has not voted on, holds, or skipped (index order)."""
    rows = session.execute(_pair_window_statement(), {"annotator_id": annotator_id, "k": k}).all()
    return [PairCandidate(*row) for row in rows]


# The next-pair statements are built once: constructing them costs several times more than running them.
@cache
def _pair_window_statement() -> Select:
    annotator_id = bindparam("annotator_id")
    voted = select(Vote.id).where(Vote.pair_id == Pair.id, Vote.annotator_id == annotator_id)
    held_or_skipped = select(Assignment.id).where(
        Assignment.annotator_id == annotator_id,
        Assignment.status.in_(("open", "skipped")),
        Assignment.pair_id == Pair.id,
    )
    return (
        select(Pair.id, Pair.task_id, Pair.candidate_a_id, Pair.candidate_b_id, Pair.filled, Pair.priority)
        .where(Pair.filled < bindparam("k"), ~voted.exists(), ~held_or_skipped.exists())
        .order_by(Pair.filled, Pair.priority.desc(), Pair.id)
        .limit(NEXT_PAIR_WINDOW)
    )


def _ranked(session: Session, window: list[PairCandidate], priority: PriorityHook | None) -> list[int]:
    if priority is None or not window:
        return [c.pair_id for c in window]
    filled = {c.pair_id: c.filled for c in window}
    chosen = [pair_id for pair_id in dict.fromkeys(priority(session, window)) if pair_id in filled]
    rank = {pair_id: position for position, pair_id in enumerate(chosen)}
    return sorted(chosen, key=lambda pair_id: (filled[pair_id], rank[pair_id]))


def _pair_to_show(session: Session, assignment: Assignment, settings: Settings) -> PairToShow:
    row = session.execute(
        _pair_view_statement(), {"pair_id": assignment.pair_id, "annotator_id": assignment.annotator_id}
    ).one()
    source_file, a_file, b_file = (blob_path(settings, *row[i : i + 2]) for i in (11, 13, 15))
    a, b = (*row[4:7], a_file), (*row[7:10], b_file)  # candidate id, image id, generator, stored file
    left, right = (b, a) if assignment.swapped else (a, b)
    return PairToShow(
        assignment_id=assignment.id,
        pair_id=assignment.pair_id,
        task_id=row[0],
        instruction=row[1],
        category=row[2],
        source_image_id=row[3],
        left_candidate_id=left[0],
        left_image_id=left[1],
        left_generator=left[2],
        right_candidate_id=right[0],
        right_image_id=right[1],
        right_generator=right[2],
        expires_at=_aware(assignment.expires_at),
        votes_done=row[10],
        source_file=source_file,
        left_file=left[3],
        right_file=right[3],
    )


@cache
def _pair_view_statement() -> Select:
    a, b = aliased(Candidate), aliased(Candidate)
    source_image, a_image, b_image = aliased(Image), aliased(Image), aliased(Image)
    votes_done = select(func.count()).where(Vote.annotator_id == bindparam("annotator_id")).scalar_subquery()
    return (
        select(
            Pair.task_id,
            Task.instruction,
            Task.category,
            Task.source_image_id,
            a.id,
            a.image_id,
            a.generator,
            b.id,
            b.image_id,
            b.generator,
            votes_done,
            source_image.sha256,
            source_image.format,
            a_image.sha256,
            a_image.format,
            b_image.sha256,
            b_image.format,
        )
        .join(Task, Task.id == Pair.task_id)
        .join(a, a.id == Pair.candidate_a_id)
        .join(b, b.id == Pair.candidate_b_id)
        .join(source_image, source_image.id == Task.source_image_id)
        .join(a_image, a_image.id == a.image_id)
        .join(b_image, b_image.id == b.image_id)
        .where(Pair.id == bindparam("pair_id"))
    )


def _aware(moment: datetime) -> datetime:
    # SQLite hands back naive datetimes; everything is stored in UTC.
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def skip_assignment(session: Session, *, assignment_id: int, annotator_id: int) -> None:
    """Give the pair back and never offer it to this annotator again; skipping twice is a no-op."""
    assignment = session.get(Assignment, _id(assignment_id, kind="assignment"))
    if assignment is None:
        raise NotFound(f"assignment {assignment_id} does not exist; ask for the next pair.")
    if assignment.annotator_id != annotator_id:
        raise InvalidInput(f"assignment {assignment_id} belongs to another annotator; skip only your own pair.")
    by_id = (Assignment.id == assignment.id,)
    if _set_status(session, (*by_id, Assignment.status == "open"), "skipped"):
        _release_slots(session, assignment.pair_id, 1)
    elif not _set_status(session, (*by_id, Assignment.status == "expired"), "skipped"):
        status = session.scalar(select(Assignment.status).where(*by_id))
        if status == "done":
            raise InvalidInput(f"assignment {assignment_id} was already voted on; there is nothing to skip.")
    session.refresh(assignment)


# ------------------------------------------------------------------------------------ statistics and export


def dataset_stats(session: Session, *, settings: Settings | None = None) -> DatasetStats:
    """Counts for the research tab: sizes, choice mix, tie rate, rationale coverage, votes per day."""
    k = (settings or Settings()).overlap_target
    by_choice = dict.fromkeys(CHOICES, 0)
    by_choice.update(session.execute(select(Vote.choice, func.count()).group_by(Vote.choice)).all())
    votes = sum(by_choice.values())
    with_rationale = session.scalar(select(func.count()).where(Vote.rationale.is_not(None)))
    day = _utc_day(session, Vote.created_at)
    per_day = session.execute(select(day, func.count()).group_by(day).order_by(day)).all()
    return DatasetStats(
        tasks=session.scalar(select(func.count()).select_from(Task)),
        candidates=session.scalar(select(func.count()).select_from(Candidate)),
        pairs=session.scalar(select(func.count()).select_from(Pair)),
        votes=votes,
        votes_by_choice=by_choice,
        tie_rate=(by_choice["tie"] + by_choice["both_bad"]) / votes if votes else 0.0,
        rationale_coverage=with_rationale / votes if votes else 0.0,
        annotators=session.scalar(select(func.count(distinct(Vote.annotator_id)))),
        votes_per_day=[(d if isinstance(d, date) else date.fromisoformat(d), n) for d, n in per_day],
        pairs_at_target=session.scalar(select(func.count()).where(Pair.vote_count >= k)),
    )


def _utc_day(session: Session, column: Any) -> Any:
    if session.get_bind().dialect.name == "postgresql":
        # A literal, not a bound parameter: PostgreSQL must see the same expression in SELECT and GROUP BY.
        return func.date(func.timezone(literal_column("'UTC'"), column))
    return func.date(column)  # SQLite stores the UTC wall time as text


def training_votes(session: Session, *, after_vote_id: int = 0, limit: int | None = None) -> list[TrainingVote]:
    """Votes with everything the trainer needs, ordered by id, after a watermark (for snapshots)."""
    left, right = aliased(Candidate), aliased(Candidate)
    stmt = (
        select(
            Vote.id,
            Vote.task_id,
            Task.instruction,
            Task.source_image_id,
            left.id,
            left.image_id,
            left.generator,
            right.id,
            right.image_id,
            right.generator,
            Vote.choice,
            Vote.rationale,
            Vote.annotator_id,
        )
        .join(Task, Task.id == Vote.task_id)
        .join(left, left.id == Vote.left_candidate_id)
        .join(right, right.id == Vote.right_candidate_id)
        .where(Vote.id > after_vote_id)
        .order_by(Vote.id)
        .limit(limit)
    )
    return [TrainingVote(*row) for row in session.execute(stmt)]
