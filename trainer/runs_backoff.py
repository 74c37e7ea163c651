"""Back-off of automatic runs (threshold, schedule, first run) after they failed, read from `training_runs`.

Nothing is stored for it: the consecutive failures are the newest runs' status and trigger, and the wait is computed
from the newest failure's `finished_at`. `trainer.runs_queue`'s automatic enqueues consult `automatic_hold` under the
queue lock; the worker logs the hold, and the app shows `automatic_runs_alert` while automatic runs are paused.
Functions take the session and never commit. See docs/operations.md ("Worker").
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import NamedTuple

from sqlalchemy import or_, select
from sqlalchemy.orm import Session

from storage.models import TrainingRun, utcnow

AUTOMATIC_TRIGGERS = ("threshold", "schedule", "first_run")  # queued by the worker, not by a person

# Back-off of automatic runs. A run that fails for a lasting reason (a missing backbone, a full disk, a store the
# defaults cannot train on) fails again the same way, and the threshold check would queue it anew every
# JRM_RETRAIN_CHECK_MINUTES for ever: a runs list of identical failures and a GPU kept busy for nothing. So each
# failure in a row doubles the wait before the next automatic run, starting from the check's own interval (this
# base when the check is off), never more than the cap so a passing cause (the store was down) is retried at
# least daily; after PAUSE_AFTER_FAILURES in a row the cause is not passing, and automatic runs stop until a
# person queues a run by hand or a run succeeds. Runs queued by hand are never held back.
BACKOFF_BASE = timedelta(minutes=10)
BACKOFF_CAP = timedelta(hours=24)
PAUSE_AFTER_FAILURES = 5  # at the 10-minute base: waits of 10, 20, 40 and 80 minutes between the 5 tries


class AutomaticFailures(NamedTuple):
    """The automatic runs that failed in a row (newest first) since the last success or run queued by hand."""

    count: int  # at most PAUSE_AFTER_FAILURES: enough to decide
    last_failed_at: datetime | None  # the newest failure's end (UTC)
    last_error: str | None


class AutomaticHold(NamedTuple):
    """Why automatic runs wait: until `until` (the back-off), or, with `until` None, until a person acts."""

    failures: int
    until: datetime | None
    reason: str


def automatic_failures(session: Session) -> AutomaticFailures:
    """Count the failed automatic runs in a row, newest first; a succeeded run or any run a person queued ends it."""
    # Cancelled, queued and running automatic runs say nothing about whether training works: skipped. A run a person
    # queued (manual, cli), in any state, ends the streak: someone is looking at it now.
    counted = or_(TrainingRun.trigger.not_in(AUTOMATIC_TRIGGERS), TrainingRun.status.in_(("succeeded", "failed")))
    columns = (
        TrainingRun.trigger,
        TrainingRun.status,
        TrainingRun.error,
        TrainingRun.finished_at,
        TrainingRun.created_at,
    )
    query = select(*columns).where(counted).order_by(TrainingRun.id.desc()).limit(PAUSE_AFTER_FAILURES)
    rows = session.execute(query).all()
    streak = 0
    while streak < len(rows) and rows[streak].trigger in AUTOMATIC_TRIGGERS and rows[streak].status == "failed":
        streak += 1
    if streak == 0:
        return AutomaticFailures(0, None, None)
    newest = rows[0]
    return AutomaticFailures(streak, _as_utc(newest.finished_at or newest.created_at), newest.error)


def backoff_base(check_minutes: float) -> timedelta:
    """The back-off's first wait: the threshold check's interval (`JRM_RETRAIN_CHECK_MINUTES`), else BACKOFF_BASE."""
    return timedelta(minutes=check_minutes) if check_minutes > 0 else BACKOFF_BASE


def backoff_delay(failures: int, *, base: timedelta = BACKOFF_BASE) -> timedelta:
    """The wait after `failures` automatic failures in a row: base · 2^(failures − 1), at most BACKOFF_CAP."""
    if failures <= 0:
        return timedelta(0)
    delay = min(base, BACKOFF_CAP)
    for _ in range(failures - 1):  # doubled step by step: no overflow however many failures
        delay = min(delay * 2, BACKOFF_CAP)
    return delay


def automatic_hold(
    session: Session, *, base: timedelta = BACKOFF_BASE, now: datetime | None = None
) -> AutomaticHold | None:
    """Why no automatic run may be queued at `now` (backing off, or paused), or None when one may."""
    failures = automatic_failures(session)
    if failures.count >= PAUSE_AFTER_FAILURES:
        return AutomaticHold(failures.count, None, _paused_alert(failures))
    if failures.count == 0:
        return None
    until = failures.last_failed_at + backoff_delay(failures.count, base=base)
    if (now or utcnow()) >= until:
        return None
    runs = "a failed run" if failures.count == 1 else f"{failures.count} failed runs in a row"
    reason = (
        f"automatic retrains back off after {runs}: the next one not before "
        f"{until:%Y-%m-%d %H:%M:%S} UTC; last error: {_first_line(failures.last_error)}"
    )
    return AutomaticHold(failures.count, until, reason)


def automatic_runs_alert(session: Session) -> str | None:
    """The alert to show while automatic runs are paused after PAUSE_AFTER_FAILURES failures in a row, else None."""
    failures = automatic_failures(session)
    return _paused_alert(failures) if failures.count >= PAUSE_AFTER_FAILURES else None


def _paused_alert(failures: AutomaticFailures) -> str:
    return (
        f"automatic retrains paused after {failures.count} failures in a row; last error: "
        f"{_first_line(failures.last_error).rstrip('.')}. Fix the cause and queue a run by hand (Research tab, or "
        "`python -m trainer.worker enqueue`): automatic retrains resume with it."
    )


def _first_line(error: str | None, *, max_chars: int = 300) -> str:
    line = (error or "").strip().split("\n", 1)[0].strip()
    if not line:
        return "(none recorded)"
    return line if len(line) <= max_chars else line[: max_chars - 1] + "…"


def _as_utc(moment: datetime) -> datetime:
    return moment.astimezone(UTC) if moment.tzinfo else moment.replace(tzinfo=UTC)  # SQLite hands back naive UTC
