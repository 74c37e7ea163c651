"""Automatic runs back off after failures and pause after PAUSE_AFTER_FAILURES in a row, on SQLite and PostgreSQL.

Times are fixed: every failure ends at a known moment and every check passes its own `now`.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import func, select

from storage.db import transaction
from storage.models import TrainingRun
from tests.trainer.test_runs_queue import add_votes
from trainer import runs_backoff, runs_queue
from trainer.data import TRAIN
from trainer.runs_backoff import (
    BACKOFF_BASE,
    BACKOFF_CAP,
    PAUSE_AFTER_FAILURES,
    automatic_failures,
    automatic_hold,
    automatic_runs_alert,
    backoff_base,
    backoff_delay,
)
from trainer.worker import Worker
from trainer.worker.__main__ import main as worker_cli

T0 = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)  # when the newest failure ended
MINUTE = timedelta(minutes=1)
DISK_FULL = "OSError: [Errno 28] No space left on device\n\nTraceback (most recent call last): …"
PAUSED = (
    "automatic retrains paused after 5 failures in a row; last error: OSError: [Errno 28] No space left on device. "
    "Fix the cause and queue a run by hand (Research tab, or `python -m trainer.worker enqueue`): automatic retrains "
    "resume with it."
)


def add_run(session, *, status: str = "failed", trigger: str = "threshold", ended: datetime | None = T0, **values):
    run = TrainingRun(status=status, trigger=trigger, params={}, finished_at=ended, **values)
    session.add(run)
    session.flush()
    return run


def fail_in_a_row(session, count: int, *, last: datetime = T0, error: str = DISK_FULL) -> None:
    """`count` failed automatic runs, one every hour, the newest ending at `last` with `error`."""
    triggers = ("first_run", "threshold", "schedule")
    for i in range(count):
        ended = last - (count - 1 - i) * timedelta(hours=1)
        add_run(session, trigger=triggers[i % 3], ended=ended, error=error if i == count - 1 else "an older error")


def queued_runs(session) -> int:
    return session.scalar(select(func.count()).select_from(TrainingRun).where(TrainingRun.status == "queued"))


# --- the delays, as numbers ------------------------------------------------------------------------------------


def test_each_failure_doubles_the_wait_up_to_the_cap():
    assert [backoff_delay(n) for n in range(5)] == [timedelta(0), 10 * MINUTE, 20 * MINUTE, 40 * MINUTE, 80 * MINUTE]
    six_hours = timedelta(hours=6)
    assert [backoff_delay(n, base=six_hours) for n in (1, 2, 3, 4)] == [
        six_hours,
        2 * six_hours,
        BACKOFF_CAP,
        BACKOFF_CAP,
    ]
    assert backoff_delay(10_000) == BACKOFF_CAP  # no overflow
    assert backoff_delay(1, base=timedelta(days=3)) == BACKOFF_CAP


def test_the_base_is_the_threshold_checks_interval():
    assert backoff_base(30) == 30 * MINUTE and backoff_base(0.5) == timedelta(seconds=30)
    assert backoff_base(0) == BACKOFF_BASE == 10 * MINUTE  # the check is off: the default base


# --- back-off, read from the runs ------------------------------------------------------------------------------


def test_the_wait_is_computed_from_the_failures_in_a_row(session):
    assert automatic_hold(session, now=T0) is None  # no run yet
    fail_in_a_row(session, 1)
    hold = automatic_hold(session, now=T0 + 9 * MINUTE)
    assert (hold.failures, hold.until) == (1, T0 + 10 * MINUTE)
    assert hold.reason == (
        "automatic retrains back off after a failed run: the next one not before 2025-03-01 12:10:00 UTC; "
        "last error: OSError: [Errno 28] No space left on device"
    )
    assert automatic_hold(session, now=T0 + 10 * MINUTE) is None  # the wait is over
    fail_in_a_row(session, 2, last=T0 + 11 * MINUTE)  # 3 in a row now, the newest 11 minutes later
    hold = automatic_hold(session, now=T0 + 12 * MINUTE)
    assert (hold.failures, hold.until) == (3, T0 + 11 * MINUTE + 40 * MINUTE)
    assert hold.reason.startswith("automatic retrains back off after 3 failed runs in a row: the next one not before ")
    at_one_minute = automatic_hold(session, base=MINUTE, now=T0 + 12 * MINUTE)  # 1, 2, 4 minutes
    assert at_one_minute.until == T0 + 15 * MINUTE
    assert automatic_hold(session, base=MINUTE, now=T0 + 15 * MINUTE) is None


def test_automatic_enqueues_wait_for_the_back_off(session):
    add_votes(session, split=TRAIN, votes=6)
    fail_in_a_row(session, 2)  # wait 20 minutes
    early, late = T0 + 19 * MINUTE, T0 + 20 * MINUTE
    assert runs_queue.enqueue_if_threshold(session, min_votes=5, now=early) is None
    assert runs_queue.enqueue_if_idle(session, trigger="schedule", now=early) is None
    assert runs_queue.enqueue_if_idle(session, trigger="schedule", backoff=5 * MINUTE, now=early).trigger == "schedule"
    session.query(TrainingRun).filter_by(status="queued").delete()
    assert runs_queue.enqueue_if_threshold(session, min_votes=5, now=late).trigger == "threshold"


def test_cancelled_and_unfinished_automatic_runs_do_not_break_the_streak(session):
    fail_in_a_row(session, 3, last=T0 - timedelta(hours=2))
    add_run(session, status="cancelled", trigger="schedule")
    fail_in_a_row(session, 2)
    add_run(session, status="running", trigger="threshold", ended=None)
    failures = automatic_failures(session)
    assert (failures.count, failures.last_failed_at, failures.last_error) == (5, T0, DISK_FULL)


# --- the pause and its alert -----------------------------------------------------------------------------------


def test_automatic_runs_stop_after_five_failures_in_a_row_with_an_alert(session):
    fail_in_a_row(session, PAUSE_AFTER_FAILURES - 1)
    assert automatic_runs_alert(session) is None  # backing off is not an alert: it heals by itself
    add_run(session, ended=T0 + timedelta(hours=1), error=DISK_FULL)
    assert automatic_runs_alert(session) == PAUSED
    years_later = T0 + timedelta(days=1000)
    hold = automatic_hold(session, now=years_later)
    assert (hold.failures, hold.until, hold.reason) == (5, None, PAUSED)
    add_votes(session, split=TRAIN, votes=6)
    assert runs_queue.enqueue_if_threshold(session, min_votes=1, now=years_later) is None
    assert runs_queue.enqueue_if_idle(session, trigger="schedule", now=years_later) is None
    assert queued_runs(session) == 0


def test_an_alert_without_a_recorded_error_says_so(session):
    fail_in_a_row(session, 5, error="")
    assert "last error: (none recorded). Fix the cause" in automatic_runs_alert(session)


@pytest.mark.parametrize("trigger", ["threshold", "manual"])
def test_a_success_resets_the_count(session, trigger):
    fail_in_a_row(session, 5, last=T0 - timedelta(hours=1))
    add_run(session, status="succeeded", trigger=trigger)
    assert automatic_runs_alert(session) is None and automatic_hold(session, now=T0) is None
    fail_in_a_row(session, 1, last=T0 + MINUTE)
    assert automatic_failures(session).count == 1  # counted afresh from the success
    assert automatic_hold(session, now=T0 + 2 * MINUTE).until == T0 + 11 * MINUTE


def test_a_run_queued_by_hand_is_allowed_while_paused_and_resumes_automatic_runs(session):
    fail_in_a_row(session, 5)
    manual = runs_queue.enqueue_run(session, params={"max_steps": 1})  # never held back
    assert (manual.status, manual.trigger) == ("queued", "manual")
    assert automatic_runs_alert(session) is None  # a person is looking at it
    manual.status, manual.finished_at, manual.error = "failed", T0 + MINUTE, "still no space"
    session.flush()
    assert automatic_hold(session, now=T0 + 2 * MINUTE) is None  # its failure is not an automatic one
    assert runs_queue.enqueue_if_idle(session, trigger="schedule", now=T0 + 2 * MINUTE).trigger == "schedule"


# --- the worker ------------------------------------------------------------------------------------------------


def test_the_worker_logs_the_pause_and_queues_nothing(engine, factory, settings, caplog):
    with transaction(factory) as session:
        add_votes(session, split=TRAIN, votes=3)
        fail_in_a_row(session, 5)
    worker = Worker(settings, engine=engine)
    with caplog.at_level(logging.INFO, logger="trainer.worker"):
        worker.check_schedule()
        worker.check_threshold()
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings == [f"schedule check skipped: {PAUSED}", f"threshold check skipped: {PAUSED}"]
    with factory() as session:
        assert queued_runs(session) == 0


def test_the_worker_backs_off_from_its_check_interval(engine, factory, settings, caplog):
    with transaction(factory) as session:
        fail_in_a_row(session, 1, last=datetime.now(UTC))
    worker = Worker(settings, engine=engine)  # JRM_RETRAIN_CHECK_MINUTES: 10
    assert worker.backoff == 10 * MINUTE
    with caplog.at_level(logging.INFO, logger="trainer.worker"):
        worker.check_schedule()
    assert any("schedule check skipped: automatic retrains back off" in r.getMessage() for r in caplog.records)
    with factory() as session:
        assert queued_runs(session) == 0
    assert runs_backoff.PAUSE_AFTER_FAILURES == 5  # the alert's text above names it


def test_the_runs_listing_ends_with_the_alert(factory, db_url, capsys):
    with transaction(factory) as session:
        fail_in_a_row(session, 5)
    assert worker_cli(["runs", "--database", db_url]) == 0
    assert capsys.readouterr().out.endswith(f"\nwarning: {PAUSED}\n")


def test_a_threshold_check_with_too_few_votes_takes_no_write_lock(engine, factory, settings):
    from sqlalchemy import event

    from storage.db import READ_ONLY_OPTION

    with transaction(factory) as session:
        add_votes(session, split=TRAIN, votes=3)
    worker = Worker(replace(settings, retrain_min_votes=50), engine=engine)
    begun = []
    event.listen(engine, "begin", lambda conn: begun.append(bool(conn.get_execution_options().get(READ_ONLY_OPTION))))
    worker.check_threshold()
    assert begun and all(begun)  # only read-only transactions: the queue's write lock is taken only when due
    with factory() as session:
        assert queued_runs(session) == 0
