"""The training-run queue in the store: enqueue, cancel, claim, heartbeat, stale-run recovery, retrain triggers.

Every function takes the session, never commits, and keeps its work small: the worker opens one short
transaction per call, so no session is held while a training process runs. Claiming is atomic on both
backends: PostgreSQL locks the oldest queued row with `FOR UPDATE SKIP LOCKED` (concurrent claimers take
different rows); on SQLite the engine's `BEGIN IMMEDIATE` serialises writers, and the claim is in any case a
guarded `UPDATE … WHERE status = 'queued'` whose row count says whether this caller won. A run is trained only by
its claimer: the worker's training process and `python -m trainer train --run-id N` both go through `claim_run`,
which refuses a run another worker holds. Enqueues made by the scheduler (threshold, schedule, first run) take a
queue lock first, so two workers checking at the same moment queue one run, not two, and back off after automatic
runs failed (`trainer.runs_backoff`). See docs/operations.md ("Worker").
"""

from __future__ import annotations

import os
import socket
import uuid
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import func, select, text, update
from sqlalchemy.orm import Session

from storage.demo import DEMO_ORIGIN
from storage.errors import InvalidInput, NotFound
from storage.models import Image, Task, TrainingRun, Vote, utcnow
from storage.provenance import ALL_VOTES, VoteSelection
from trainer.runs_backoff import AUTOMATIC_TRIGGERS, BACKOFF_BASE, automatic_hold

ACTIVE_STATUSES = ("queued", "running")
FINISHED_STATUSES = ("succeeded", "failed", "cancelled")
_QUEUE_LOCK_KEY = 0x4A524D51  # "JRMQ": PostgreSQL advisory lock serialising automatic enqueues
MAX_ERROR_CHARS = 8000


# --- reading ---------------------------------------------------------------------------------------------------


def get_run(session: Session, *, run_id: int) -> TrainingRun:
    """The run with this id, or `NotFound`."""
    run = session.get(TrainingRun, run_id)
    if run is None:
        raise NotFound(f"No training run with id {run_id}; `python -m trainer.worker runs` lists them.")
    return run


def list_runs(session: Session, *, limit: int = 20) -> list[TrainingRun]:
    """The newest runs first."""
    return list(session.scalars(select(TrainingRun).order_by(TrainingRun.id.desc()).limit(limit)))


def pending_run(session: Session) -> TrainingRun | None:
    """The oldest queued or running run, if any."""
    query = select(TrainingRun).where(TrainingRun.status.in_(ACTIVE_STATUSES)).order_by(TrainingRun.id).limit(1)
    return session.scalars(query).first()


def last_vote_watermark(session: Session) -> int:
    """The highest vote id the last succeeded run trained on (0 before the first one)."""
    query = (
        select(TrainingRun.vote_watermark)
        .where(TrainingRun.status == "succeeded", TrainingRun.vote_watermark.is_not(None))
        .order_by(TrainingRun.finished_at.desc(), TrainingRun.id.desc())
        .limit(1)
    )
    return session.scalar(query) or 0


def new_training_votes(session: Session, *, after_vote_id: int, selection: VoteSelection = ALL_VOTES) -> int:
    """Selected votes with id > `after_vote_id` on tasks of the train split (held-out tasks' votes do not count)."""
    from trainer.data import TRAIN, split_of, task_key  # lazy: the data module pulls in datasets and torch

    query = (
        select(Image.sha256, Task.instruction, func.count(Vote.id))
        .join(Task, Task.id == Vote.task_id)
        .join(Image, Image.id == Task.source_image_id)
        .where(Vote.id > after_vote_id, *selection.where())
        .group_by(Task.id, Image.sha256, Task.instruction)
    )
    return sum(n for sha, instruction, n in session.execute(query) if split_of(task_key(sha, instruction)) == TRAIN)


# --- on demand -------------------------------------------------------------------------------------------------


def enqueue_run(
    session: Session, *, params: dict[str, Any], requested_by_id: int | None = None, trigger: str = "manual"
) -> TrainingRun:
    """Queue a run with validated `params` (see `trainer.pipeline.parse_params`); the caller commits."""
    from trainer.pipeline import create_run  # lazy: the pipeline pulls in torch; listing runs must not

    return create_run(session, params=params, trigger=trigger, requested_by_id=requested_by_id)


def cancel_run(session: Session, *, run_id: int) -> TrainingRun:
    """Cancel a queued or running run; the worker supervising a running one stops its training process."""
    run = session.get(TrainingRun, run_id, with_for_update=True)
    if run is None:
        raise NotFound(f"No training run with id {run_id}; `python -m trainer.worker runs` lists them.")
    if run.status not in ACTIVE_STATUSES:
        raise InvalidInput(f"Run {run_id} is already {run.status}; only queued or running runs can be cancelled.")
    run.status, run.finished_at = "cancelled", utcnow()
    run.error = "cancelled on request" if run.started_at is None else "cancelled on request while training"
    session.flush()
    return run


# --- claiming and supervising (the worker) ---------------------------------------------------------------------


def new_worker_id(kind: str = "worker") -> str:
    """A claimer's id for `training_runs.worker_id`: "<kind>:<host>:<pid>:<random>" (unique per process and call)."""
    return f"{kind}:{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"


def _claim_queued(session: Session, *, run_id: int, worker_id: str) -> bool:
    """The guarded UPDATE: mark the run running for `worker_id` if it is still queued; whether this caller won."""
    now = utcnow()
    claim = (
        update(TrainingRun)
        .where(TrainingRun.id == run_id, TrainingRun.status == "queued")
        .values(status="running", worker_id=worker_id, started_at=now, heartbeat_at=now, error=None)
    )
    return session.execute(claim).rowcount == 1


def claim_next_run(session: Session, *, worker_id: str) -> TrainingRun | None:
    """Mark the oldest queued run running for `worker_id` and return it; None when nothing is queued (or lost)."""
    oldest = (
        select(TrainingRun.id)
        .where(TrainingRun.status == "queued")
        .order_by(TrainingRun.created_at, TrainingRun.id)
        .limit(1)
        .with_for_update(skip_locked=True)  # PostgreSQL; SQLite renders nothing and relies on BEGIN IMMEDIATE
    )
    run_id = session.scalar(oldest)
    if run_id is None or not _claim_queued(session, run_id=run_id, worker_id=worker_id):
        return None  # nothing queued, or another claimer won this row between the read and the write
    return session.get(TrainingRun, run_id, populate_existing=True)


def claim_run(session: Session, *, run_id: int, worker_id: str) -> TrainingRun:
    """Claim run `run_id` for `worker_id` when queued, or return it when `worker_id` already holds it (the worker
    claimed it for its training process); `InvalidInput` when it runs under another claimer or has finished."""
    if not _claim_queued(session, run_id=run_id, worker_id=worker_id):
        run = session.get(TrainingRun, run_id, populate_existing=True)
        if run is None:
            raise NotFound(f"No training run with id {run_id}; `python -m trainer.worker runs` lists them.")
        if run.status != "running" or run.worker_id != worker_id:
            raise InvalidInput(_not_claimable(run))
    return session.get(TrainingRun, run_id, populate_existing=True)


def _not_claimable(run: TrainingRun) -> str:
    """Why `claim_run` refused `run`, and what to do instead."""
    if run.status == "running":
        holder = f"worker {run.worker_id}" if run.worker_id else "a trainer that recorded no worker id"
        return (
            f"run {run.id} is running on {holder}; two trainers must not share its snapshot. Wait for it to "
            f"end, or cancel it (`python -m trainer.worker cancel {run.id}`) and queue a new run."
        )
    return f"run {run.id} is {run.status}; only queued runs can be trained. Queue a new run instead."


def beat(session: Session, *, run_id: int, worker_id: str) -> bool:
    """Write the heartbeat of a run this worker holds; False when it stopped being ours and running (cancelled)."""
    owned = update(TrainingRun).where(
        TrainingRun.id == run_id, TrainingRun.status == "running", TrainingRun.worker_id == worker_id
    )
    return session.execute(owned.values(heartbeat_at=utcnow())).rowcount == 1


def held_status(session: Session, *, run_id: int, worker_id: str) -> str | None:
    """The run's status, "taken" when another worker holds it, None when the row is gone."""
    row = session.execute(select(TrainingRun.status, TrainingRun.worker_id).where(TrainingRun.id == run_id)).first()
    if row is None:
        return None
    return row.status if row.worker_id == worker_id else "taken"


def set_log_path(session: Session, *, run_id: int, log_path: str) -> None:
    """Record where the run's training log is written."""
    session.execute(update(TrainingRun).where(TrainingRun.id == run_id).values(log_path=log_path))


def fail_run(session: Session, *, run_id: int, error: str, only_if_running: bool = True) -> bool:
    """Mark the run failed with `error`; with `only_if_running`, only while it is running. True if it changed."""
    query = update(TrainingRun).where(TrainingRun.id == run_id)
    if only_if_running:
        query = query.where(TrainingRun.status == "running")
    values = {
        "status": "failed",
        "error": error[-MAX_ERROR_CHARS:],
        "finished_at": func.coalesce(TrainingRun.finished_at, utcnow()),
    }
    return session.execute(query.values(**values)).rowcount == 1


def recover_stale_runs(
    session: Session, *, stale_after_s: float, alive_worker_id: str | None = None, now: datetime | None = None
) -> list[TrainingRun]:
    """Fail the running runs whose heartbeat is older than `stale_after_s`, but `alive_worker_id`'s; returns them."""
    # The caller's own runs are left alone: it knows it is alive, and its heartbeat can lag while it waits for a lock
    # or starts a training process.
    cutoff = (now or utcnow()) - timedelta(seconds=stale_after_s)
    last_sign_of_life = func.coalesce(TrainingRun.heartbeat_at, TrainingRun.started_at)
    query = select(TrainingRun).where(TrainingRun.status == "running", last_sign_of_life < cutoff)
    if alive_worker_id is not None:
        query = query.where(func.coalesce(TrainingRun.worker_id, "") != alive_worker_id)
    stale = session.scalars(query.with_for_update(skip_locked=True)).all()
    for run in stale:
        last = run.heartbeat_at or run.started_at
        run.error = (
            f"worker heartbeat expired at {last.isoformat(timespec='seconds')} (worker {run.worker_id}); "
            "the worker or its training process died. Queue a new run to train again."
        )
        # No worker holds it any more: should the lost worker come back, it sees that and stops its child at once.
        run.status, run.finished_at, run.worker_id = "failed", utcnow(), None
    session.flush()
    return list(stale)


# --- automatic enqueues (threshold, schedule, first run) -------------------------------------------------------


def _load_split() -> None:
    """Import `trainer.data` before the first SQL: it takes seconds, and on SQLite a transaction holds the lock."""
    import trainer.data  # noqa: F401


def _queue_default_run(session: Session, *, trigger: str, params: dict | None = None) -> TrainingRun:
    """Queue a run with the default parameters (always valid: no need to load the pipeline to check them)."""
    run = TrainingRun(status="queued", trigger=trigger, params=params or {})
    session.add(run)
    session.flush()
    return run


def _lock_queue(session: Session) -> None:
    """Serialise automatic enqueues across workers (SQLite: the engine's BEGIN IMMEDIATE already does)."""
    if session.get_bind().dialect.name == "postgresql":
        session.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _QUEUE_LOCK_KEY})


def _held(session: Session, *, trigger: str, base: timedelta, now: datetime | None) -> bool:
    """Whether a run of `trigger` must wait: one is queued or running, or automatic runs back off (or are paused)."""
    if pending_run(session) is not None:
        return True
    return trigger in AUTOMATIC_TRIGGERS and automatic_hold(session, base=base, now=now) is not None


def enqueue_if_idle(
    session: Session, *, trigger: str, backoff: timedelta = BACKOFF_BASE, now: datetime | None = None
) -> TrainingRun | None:
    """Queue a run with the default parameters unless one is queued or running, or automatic runs wait (then None)."""
    _lock_queue(session)
    if _held(session, trigger=trigger, base=backoff, now=now):
        return None
    return _queue_default_run(session, trigger=trigger)


def enqueue_if_threshold(
    session: Session,
    *,
    min_votes: int,
    selection: VoteSelection = ALL_VOTES,
    backoff: timedelta = BACKOFF_BASE,
    now: datetime | None = None,
) -> TrainingRun | None:
    """Queue a "threshold" run when >= `min_votes` new selected training votes arrived since the last succeeded run
    (and automatic runs do not back off after failures: `automatic_hold`)."""
    _load_split()
    _lock_queue(session)
    if _held(session, trigger="threshold", base=backoff, now=now):
        return None
    if new_training_votes(session, after_vote_id=last_vote_watermark(session), selection=selection) < min_votes:
        return None
    return _queue_default_run(session, trigger="threshold")


def first_run_due(session: Session) -> bool:
    """A fresh install: demo data in the store, no active version, and no run ever."""
    from trainer.registry import active_version

    if session.scalar(select(TrainingRun.id).limit(1)) is not None or active_version(session) is not None:
        return False
    return session.scalar(select(Task.id).where(Task.origin == DEMO_ORIGIN).limit(1)) is not None


def first_run_params(max_steps: int) -> dict:
    """The first run's parameters: the defaults, capped at `max_steps` optimizer steps (0: no cap)."""
    return {"max_steps": max_steps} if max_steps > 0 else {}


def enqueue_first_run(session: Session, *, max_steps: int = 0) -> TrainingRun | None:
    """On a fresh install (`first_run_due`) queue the "first_run" run: the defaults, capped at `max_steps` steps.

    The cap (`JRM_FIRST_RUN_MAX_STEPS`) exists so a fresh install has a scorer within minutes; the threshold and
    scheduled runs that follow train with the full defaults.
    """
    _lock_queue(session)
    if not first_run_due(session):
        return None
    return _queue_default_run(session, trigger="first_run", params=first_run_params(max_steps))
