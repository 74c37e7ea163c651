"""The APScheduler 3 scheduler: the worker's jobs, the store-backed job store, start and stop."""

from __future__ import annotations

import contextlib
import logging
import signal
from dataclasses import dataclass

from apscheduler.executors.pool import ThreadPoolExecutor
from apscheduler.jobstores.base import JobLookupError
from apscheduler.jobstores.memory import MemoryJobStore
from apscheduler.jobstores.sqlalchemy import SQLAlchemyJobStore
from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.schedulers.base import BaseScheduler
from apscheduler.schedulers.blocking import BlockingScheduler
from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.interval import IntervalTrigger
from sqlalchemy import text

from storage.db import make_engine, session_factory
from storage.models import utcnow
from storage.settings import Settings
from trainer.worker.process import Command, training_command
from trainer.worker.supervisor import CANCEL_POLL_S, Worker

log = logging.getLogger("trainer.worker")

CONSUMER_JOB, HOUSEKEEPING_JOB = "consume-queue", "housekeeping"
THRESHOLD_JOB, SCHEDULE_JOB = "retrain-threshold", "retrain-schedule"
GC_JOB, LEADERBOARD_JOB = "gc", "leaderboard"
JOBS_TABLE = "apscheduler_jobs"
_JOBS_TABLE_LOCK_KEY = 0x4A524D53  # "JRMS": PostgreSQL advisory lock around creating the job table

# The store-backed jobs are pickled as a function reference plus arguments, so they cannot name a Worker object:
# they carry the store's key and find this process's worker for that store here (no settings, no password, in
# the job table).
_workers: dict[str, Worker] = {}


def threshold_job(store_key: str) -> None:
    """The `retrain-threshold` job."""
    _worker_for(store_key, THRESHOLD_JOB).check_threshold()


def schedule_job(store_key: str) -> None:
    """The `retrain-schedule` job."""
    _worker_for(store_key, SCHEDULE_JOB).check_schedule()


def _worker_for(store_key: str, job_id: str) -> Worker:
    """This process's worker for the job's store, else its only worker (another process spelled the URL otherwise)."""
    worker = _workers.get(store_key)
    if worker is None and len(_workers) == 1:
        [worker] = _workers.values()
    if worker is None:
        raise RuntimeError(f"job {job_id} fired in a process with no worker for its store ({store_key}).")
    return worker


def _job_store(worker: Worker) -> SQLAlchemyJobStore:
    """The store-backed job store on its own engine, its table created once under a lock (workers start together)."""
    store = SQLAlchemyJobStore(engine=make_engine(worker.settings.resolved_database_url), tablename=JOBS_TABLE)
    with store.engine.begin() as connection:
        if connection.dialect.name == "postgresql":
            connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _JOBS_TABLE_LOCK_KEY})
        store.jobs_t.create(connection, checkfirst=True)
    return store


def collect_garbage_job(worker: Worker) -> None:
    """The daily `gc` job: every retention rule (`trainer.retention`), its summary logged."""
    from trainer.retention import collect_garbage

    report = collect_garbage(session_factory(worker.engine), worker.settings)
    log.info("%s", "\n".join(report.lines()))


def leaderboard_job(worker: Worker) -> None:
    """The `leaderboard` job: recompute the cached board when votes, the active version or the selection changed."""
    from trainer.leaderboard_cache import refresh_board

    board = refresh_board(worker.factory, settings=worker.settings)
    if board is not None:
        log.info("leaderboard recomputed: %s votes, %.1f s", board.votes, board.seconds)


def _drop_job(store: SQLAlchemyJobStore, job_id: str) -> None:
    with contextlib.suppress(JobLookupError):
        store.remove_job(job_id)


def build_scheduler(worker: Worker, scheduler_class: type[BaseScheduler]) -> BaseScheduler:
    """A scheduler with the worker's jobs (disabled retrain jobs are removed from the store)."""
    settings, store = worker.settings, _job_store(worker)
    scheduler = scheduler_class(
        jobstores={"default": store, "local": MemoryJobStore()},
        executors={"default": ThreadPoolExecutor(4)},
        job_defaults={"coalesce": True, "max_instances": 1, "misfire_grace_time": 3600},
    )
    poll, housekeeping_s = settings.queue_poll_s, max(settings.stale_after_s / 4, CANCEL_POLL_S)
    scheduler.add_job(worker.tick, IntervalTrigger(seconds=poll), id=CONSUMER_JOB, name=CONSUMER_JOB,
                      jobstore="local", next_run_time=utcnow())
    scheduler.add_job(worker.housekeeping, IntervalTrigger(seconds=housekeeping_s), id=HOUSEKEEPING_JOB,
                      name=HOUSEKEEPING_JOB, jobstore="local")
    key = {"kwargs": {"store_key": worker.store_key}, "replace_existing": True}
    if settings.retrain_check_minutes > 0:
        trigger = IntervalTrigger(minutes=settings.retrain_check_minutes)
        scheduler.add_job(threshold_job, trigger, id=THRESHOLD_JOB, name=THRESHOLD_JOB, **key)
    else:
        _drop_job(store, THRESHOLD_JOB)
    if settings.retrain_cron.strip():
        scheduler.add_job(schedule_job, CronTrigger.from_crontab(settings.retrain_cron), id=SCHEDULE_JOB,
                          name=SCHEDULE_JOB, **key)
    else:
        _drop_job(store, SCHEDULE_JOB)
    # Per process (the board's key makes a second worker's run a no-op); max_instances 1: a slow fit is not stacked.
    scheduler.add_job(leaderboard_job, IntervalTrigger(seconds=settings.leaderboard_refresh_s), args=[worker],
                      id=LEADERBOARD_JOB, name=LEADERBOARD_JOB, jobstore="local", max_instances=1, coalesce=True,
                      next_run_time=utcnow())  # at start too: a fresh worker brings a stale board up to date
    if settings.gc_hour >= 0:  # per process, like the housekeeping: a second worker's run finds little left
        scheduler.add_job(collect_garbage_job, CronTrigger(hour=settings.gc_hour, minute=0), args=[worker], id=GC_JOB,
                          name=GC_JOB, jobstore="local")
    worker.on_enqueue = lambda: _wake(scheduler)
    _workers[worker.store_key] = worker
    logging.getLogger("apscheduler.scheduler").addFilter(_quiet_busy_consumer)
    return scheduler


def _wake(scheduler: BaseScheduler) -> None:
    """Run the consumer now (a run was just queued) instead of at its next poll."""
    with contextlib.suppress(JobLookupError):
        scheduler.modify_job(CONSUMER_JOB, jobstore="local", next_run_time=utcnow())


def _quiet_busy_consumer(record: logging.LogRecord) -> bool:
    """Drop "skipped: maximum number of running instances" for the consumer: it is busy training, by design."""
    return not ("maximum number of running instances" in record.msg and CONSUMER_JOB in str(record.args))


@dataclass
class WorkerHandle:
    """A started worker and its scheduler; `stop()` ends both."""

    worker: Worker
    scheduler: BaseScheduler

    def stop(self, *, wait: bool = True) -> None:
        """Stop the scheduler; a training run in progress is stopped and recorded as failed."""
        self.worker.stopping.set()
        if self.scheduler.running:
            self.scheduler.shutdown(wait=False)
        if wait:
            with self.worker.busy:  # the run in progress (if any) is stopped and recorded
                pass
        if _workers.get(self.worker.store_key) is self.worker:
            del _workers[self.worker.store_key]
        self.worker.engine.dispose()


def _started(settings: Settings, scheduler_class: type[BaseScheduler], command: Command) -> WorkerHandle:
    worker = Worker(settings, command=command)
    worker.prepare()
    return WorkerHandle(worker, build_scheduler(worker, scheduler_class))


def start_background_worker(settings: Settings, *, command: Command = training_command) -> WorkerHandle:
    """Start the worker's scheduler in background threads of this process (the app's one-command start)."""
    handle = _started(settings, BackgroundScheduler, command)
    handle.scheduler.start()
    log.info("worker %s started in the background", handle.worker.worker_id)
    return handle


def run_worker(settings: Settings, *, command: Command = training_command) -> None:
    """Run the worker in the foreground until SIGINT or SIGTERM (a run in progress is stopped and failed)."""
    handle = _started(settings, BlockingScheduler, command)

    def on_signal(signum: int, _frame: object) -> None:
        log.info("worker %s stopping (%s)", handle.worker.worker_id, signal.Signals(signum).name)
        handle.worker.stopping.set()
        handle.scheduler.shutdown(wait=False)

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, on_signal)
    log.info("worker %s started on %s", handle.worker.worker_id, handle.worker.engine.url.render_as_string())
    handle.scheduler.start()  # blocks until a signal shuts it down
    handle.stop()  # waits for the consumer to record how the run in progress ended
