"""Per-annotator daily vote caps: the store's `JRM_DAILY_VOTE_CAP`, or a user's own (`storage users cap`)."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, time

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from storage.errors import InvalidInput
from storage.models import User, Vote
from storage.settings import Settings


class DailyCapReached(InvalidInput):
    """The annotator has cast today's allowed votes; nothing was stored."""


def daily_cap(user: User, settings: Settings) -> int | None:
    """The votes `user` may cast per UTC day, or None when uncapped."""
    return user.daily_vote_cap or settings.daily_vote_cap or None


def votes_today(session: Session, *, annotator_id: int, now: datetime | None = None) -> int:
    """Votes `annotator_id` cast since the start of the current UTC day."""
    midnight = datetime.combine((now or datetime.now(UTC)).astimezone(UTC).date(), time(0), tzinfo=UTC)
    query = select(func.count()).where(Vote.annotator_id == annotator_id, Vote.created_at >= midnight)
    return session.scalar(query)


def check_daily_cap(
    session: Session, *, user: User, settings: Settings, resent: Callable[[], bool] = lambda: False
) -> None:
    """`DailyCapReached` when `user` may not vote again today; `resent()` (asked only at the cap) says the vote is
    already stored, which a resend may repeat. Free when no cap applies (no query)."""
    cap = daily_cap(user, settings)
    if cap is not None and votes_today(session, annotator_id=user.id) >= cap and not resent():
        raise DailyCapReached(
            f"{user.name} has cast today's {cap} votes, the daily cap; thank you! Voting opens again at 00:00 UTC."
        )
