"""Dataset statistics and the votes the trainer reads."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any

from sqlalchemy import distinct, func, literal_column, select
from sqlalchemy.orm import Session, aliased

from storage.models import CHOICES, Candidate, Pair, Task, Vote
from storage.provenance import ALL_VOTES, VoteSelection
from storage.settings import Settings


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
    dimension_scores: dict[str, float] | None


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


def training_votes(
    session: Session, *, after_vote_id: int = 0, limit: int | None = None, selection: VoteSelection = ALL_VOTES
) -> list[TrainingVote]:
    """The selected votes with everything the trainer needs, ordered by id, after a watermark (for snapshots)."""
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
            Vote.dimension_scores,
        )
        .join(Task, Task.id == Vote.task_id)
        .join(left, left.id == Vote.left_candidate_id)
        .join(right, right.id == Vote.right_candidate_id)
        .where(Vote.id > after_vote_id, *selection.where())
        .order_by(Vote.id)
        .limit(limit)
    )
    return [TrainingVote(*row) for row in session.execute(stmt)]


HOURLY_SPAN = timedelta(days=2)  # votes spanning less than this are counted per hour, so one day of data reads well


def votes_over_time(session: Session) -> tuple[str, list[tuple[str, str, int]]]:
    """("hour" | "day", [(UTC bucket as text, provenance, votes)]) oldest first; hourly when the votes span < 2 days."""
    first, last = session.execute(select(func.min(Vote.created_at), func.max(Vote.created_at))).one()
    if first is None:
        return "day", []
    hourly = _aware(last) - _aware(first) < HOURLY_SPAN
    bucket = _utc_hour(session, Vote.created_at) if hourly else _utc_day(session, Vote.created_at)
    rows = session.execute(
        select(bucket, Vote.provenance, func.count()).group_by(bucket, Vote.provenance).order_by(bucket)
    ).all()
    return ("hour" if hourly else "day"), [(_bucket_text(b, hourly), p, n) for b, p, n in rows]


def _aware(moment: datetime) -> datetime:
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)  # SQLite hands back naive UTC


def _utc_hour(session: Session, column: Any) -> Any:
    if session.get_bind().dialect.name == "postgresql":
        return func.date_trunc(literal_column("'hour'"), func.timezone(literal_column("'UTC'"), column))
    return func.strftime("%Y-%m-%d %H:00", column)


def _bucket_text(bucket: Any, hourly: bool) -> str:
    if isinstance(bucket, datetime):
        return bucket.strftime("%Y-%m-%d %H:00" if hourly else "%Y-%m-%d")
    return bucket.isoformat() if isinstance(bucket, date) else str(bucket)
