"""The annotation queue: the next pair for an annotator, reservations (assignments), skips and priorities.

Next pair: the annotator's open, unexpired assignment if any (a reload shows the same pair, same layout);
otherwise expire stale assignments, read a short window of pairs in `ix_pairs_next` order (fewest `filled`,
highest `priority`, lowest id) that the annotator has not voted on, does not hold and did not skip (NOT EXISTS
on indexes, so the cost does not grow with the table), optionally re-rank it with a `PriorityHook`, and reserve
the first pair whose guarded UPDATE succeeds. A skipped pair is never offered to that annotator again.
"""

from __future__ import annotations

import math
import random
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import cache
from pathlib import Path
from typing import Protocol

from sqlalchemy import Select, bindparam, case, func, select, update
from sqlalchemy.orm import Session, aliased

from storage.caps import check_daily_cap
from storage.errors import InvalidInput, NotFound
from storage.images import blob_path
from storage.models import Assignment, Candidate, Image, Pair, Task, Vote, utcnow
from storage.settings import Settings
from storage.validation import _id, _require_active_user

NEXT_PAIR_WINDOW = 32  # candidate pairs read per attempt; the priority hook re-ranks this many
_RESERVE_ATTEMPTS = 5  # re-reads of the window when concurrent annotators took every pair in it


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
    """Reserve the next pair for this annotator (or return the one they already hold); None when none is left.

    `DailyCapReached` when the annotator has cast today's allowed votes."""
    check_daily_cap(session, user=_require_active_user(session, annotator_id), settings=settings)
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
        ranked = _ranked(session, _pair_window(session, annotator_id, k, settings.sampling), priority)
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


def _pair_window(session: Session, annotator_id: int, k: int, sampling: str = "coverage") -> list[PairCandidate]:
    """Up to NEXT_PAIR_WINDOW open pairs this annotator has not voted on, holds, or skipped, in the sampling's
    order: "coverage" (fewest filled first, then priority) or "active" (priority alone, below the target)."""
    rows = session.execute(_pair_window_statement(sampling), {"annotator_id": annotator_id, "k": k}).all()
    return [PairCandidate(*row) for row in rows]


# Each order has an index that serves it (ix_pairs_next, ix_pairs_priority), so the query stops after a few rows.
_WINDOW_ORDER = {
    "coverage": (Pair.filled, Pair.priority.desc(), Pair.id),
    "active": (Pair.priority.desc(), Pair.id),
}


# The next-pair statements are built once: constructing them costs several times more than running them.
@cache
def _pair_window_statement(sampling: str) -> Select:
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
        .order_by(*_WINDOW_ORDER[sampling])
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
