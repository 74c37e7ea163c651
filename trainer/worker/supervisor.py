"""`Worker`: claims queued runs, runs each in a training process, heartbeats, stops it on cancel, records the end."""

from __future__ import annotations

import hashlib
import logging
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path

from sqlalchemy import Engine
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session, sessionmaker

from storage.db import make_engine, session_factory, transaction, upgrade
from storage.models import TrainingRun, utcnow
from storage.provenance import vote_selection
from storage.settings import Settings
from trainer import runs_queue
from trainer.runs_backoff import automatic_hold, automatic_runs_alert, backoff_base
from trainer.worker.process import (
    Command,
    child_environment,
    describe_exit,
    exited,
    log_tail,
    run_log_path,
    signal_group,
    stop_process_group,
    training_command,
    with_parent_death,
)

log = logging.getLogger("trainer.worker")

CANCEL_POLL_S = 1.0  # how often the supervisor looks at the run's row while the child trains
EXIT_GRACE_S = 30.0  # a child that recorded its result gets this long to exit by itself


class Worker:
    """Claims queued runs and supervises their training processes; the scheduler's jobs call its methods."""

    def __init__(self, settings: Settings, *, engine: Engine | None = None, command: Command = training_command):
        self.settings = settings
        self.engine = engine or make_engine(settings.resolved_database_url)
        self.factory: sessionmaker[Session] = session_factory(self.engine)
        self.reader: sessionmaker[Session] = session_factory(self.engine, read_only=True)  # no SQLite write lock
        self.command = command
        self.worker_id = runs_queue.new_worker_id("worker")
        self.backoff = backoff_base(settings.retrain_check_minutes)  # the first wait after a failed automatic run
        self.store_key = hashlib.sha256(settings.resolved_database_url.encode()).hexdigest()[:16]
        self.stopping = threading.Event()
        self.busy = threading.Lock()  # held while claiming and executing a run
        self.on_enqueue: Callable[[], None] = lambda: None  # the scheduler wakes the consumer

    def prepare(self) -> None:
        """Start-up: schema to head, leftover registry temp folders removed, stale runs failed, first run queued."""
        from trainer.registry import sweep_incomplete

        upgrade(self.engine)
        for path in sweep_incomplete(self.settings):
            log.warning("removed an incomplete model version folder %s", path)
        self.housekeeping()
        with self.reader() as session:
            alert = automatic_runs_alert(session)
        if alert is not None:
            log.warning("%s", alert)

    # jobs ---------------------------------------------------------------------------------------------------

    def housekeeping(self) -> None:
        """Fail runs whose heartbeat expired; queue the first run on a fresh install."""
        with transaction(self.factory) as session:
            stale = runs_queue.recover_stale_runs(
                session, stale_after_s=self.settings.stale_after_s, alive_worker_id=self.worker_id
            )
            for run in stale:
                log.warning("run %s failed: %s", run.id, run.error)
        with self.reader() as session:  # checked first without the pipeline's slow import or the write lock
            due = runs_queue.first_run_due(session)
        if due:
            max_steps = self.settings.first_run_max_steps
            self._enqueue("first_run", lambda session: runs_queue.enqueue_first_run(session, max_steps=max_steps))

    def check_threshold(self) -> None:
        """Queue a "threshold" run when enough new training votes arrived (unless automatic runs are held)."""
        min_votes, settings, backoff = self.settings.retrain_min_votes, self.settings, self.backoff
        if self._automatic_runs_held("threshold"):
            return
        with self.reader() as session:  # counted first with no write lock; the queue's transaction counts again
            selection = vote_selection(session, settings=settings)
            due = runs_queue.new_training_votes(
                session, after_vote_id=runs_queue.last_vote_watermark(session), selection=selection
            ) >= min_votes
        if not due:
            return

        def enqueue(session: Session) -> TrainingRun | None:
            selection = vote_selection(session, settings=settings)
            return runs_queue.enqueue_if_threshold(session, min_votes=min_votes, selection=selection, backoff=backoff)

        self._enqueue("threshold", enqueue)

    def check_schedule(self) -> None:
        """Queue a "schedule" run (unless one is already queued or running, or automatic runs are held)."""
        if self._automatic_runs_held("schedule"):
            return
        backoff = self.backoff
        self._enqueue(
            "schedule", lambda session: runs_queue.enqueue_if_idle(session, trigger="schedule", backoff=backoff)
        )

    def _automatic_runs_held(self, check: str) -> bool:
        """Log and skip a check while automatic runs back off after failures or are paused (read without a lock)."""
        with self.reader() as session:
            hold = automatic_hold(session, base=self.backoff)
        if hold is None:
            return False  # the enqueue checks again, under the queue lock
        level = logging.WARNING if hold.until is None else logging.INFO  # paused: a person has to act
        log.log(level, "%s check skipped: %s", check, hold.reason)
        return True

    def _enqueue(self, what: str, enqueue: Callable[[Session], TrainingRun | None]) -> None:
        with transaction(self.factory) as session:
            run = enqueue(session)
            run_id = run.id if run is not None else None
        if run_id is not None:
            log.info("queued run %s (%s)", run_id, what)
            self.on_enqueue()

    def tick(self) -> int | None:
        """Claim one queued run and train it to the end; the run's id, or None when nothing was queued."""
        with self.busy:
            if self.stopping.is_set():
                return None
            with transaction(self.factory) as session:
                run = runs_queue.claim_next_run(session, worker_id=self.worker_id)
                run_id = run.id if run is not None else None
            if run_id is not None:
                log.info("claimed run %s", run_id)
                self.execute(run_id)
            return run_id

    # one run ------------------------------------------------------------------------------------------------

    def execute(self, run_id: int) -> None:
        """Run the claimed run's training process, supervise it, and record how it ended."""
        log_path = self._log_path(run_id)
        try:
            child = self._spawn(run_id, log_path)
        except OSError as exc:
            self._record_end(run_id, returncode=None, log_path=log_path, stopped=f"could not start training: {exc}")
            return
        stopped = self._supervise(child, run_id)
        self._record_end(run_id, returncode=child.returncode, log_path=log_path, stopped=stopped)

    def _log_path(self, run_id: int) -> Path:
        path = run_log_path(self.settings, run_id)
        path.parent.mkdir(parents=True, exist_ok=True)
        with transaction(self.factory) as session:
            runs_queue.set_log_path(session, run_id=run_id, log_path=str(path.resolve()))
        return path

    def _spawn(self, run_id: int, log_path: Path) -> subprocess.Popen:
        command = self.command(self.settings, run_id, self.worker_id)
        with log_path.open("ab") as out:
            header = f"=== {utcnow().isoformat(timespec='seconds')} worker {self.worker_id}: {' '.join(command)}\n"
            out.write(header.encode())
            out.flush()
            # Its own session: a Ctrl-C in the worker's terminal reaches the worker, which stops the child itself,
            # and killing the group also ends anything the child started (accelerate's ranks, data loaders).
            return subprocess.Popen(
                with_parent_death(command),
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=child_environment(self.settings),
                start_new_session=True,
            )

    def _supervise(self, child: subprocess.Popen, run_id: int) -> str | None:
        """Heartbeat until the child exits; stop it on cancel or shutdown. Returns why it was stopped, if so."""
        last_beat = time.monotonic()
        while not exited(child, timeout=min(CANCEL_POLL_S, self.settings.heartbeat_s)):
            if self.stopping.is_set():
                stop_process_group(child)
                return "the worker was stopped while the run was training; queue a new run to train again."
            due = time.monotonic() - last_beat >= self.settings.heartbeat_s
            status = self._row_status(run_id, beat=due)
            if status in ("succeeded", "failed"):  # the child recorded how it ended and is exiting: let it
                if not exited(child, timeout=EXIT_GRACE_S):
                    stop_process_group(child)
                return None
            if status != "running":  # cancelled, taken over, or gone
                stop_process_group(child)
                return None
            if due:
                last_beat = time.monotonic()
        signal_group(child, signal.SIGKILL)  # whatever the child left behind in its group
        return None

    def _row_status(self, run_id: int, *, beat: bool) -> str | None:
        """Write the heartbeat (when due) and return the run's status as this worker sees it."""
        try:
            if beat:
                with transaction(self.factory) as session:
                    if runs_queue.beat(session, run_id=run_id, worker_id=self.worker_id):
                        return "running"
            with self.reader() as session:
                return runs_queue.held_status(session, run_id=run_id, worker_id=self.worker_id)
        except OperationalError as exc:  # the store is briefly unreachable: keep training, try again
            log.warning("heartbeat of run %s failed: %s", run_id, exc.orig)
            return "running"

    def _record_end(self, run_id: int, *, returncode: int | None, log_path: Path, stopped: str | None) -> None:
        """Fail the run if the child did not record a result; never mark it succeeded (only the child does)."""
        with transaction(self.factory) as session:
            run = session.get(TrainingRun, run_id, populate_existing=True, with_for_update=True)
            error = _end_error(run, returncode=returncode, log_path=log_path, stopped=stopped)
            if error is not None:
                runs_queue.fail_run(session, run_id=run_id, error=error, only_if_running=run.status == "running")
            status = run.status
        log.info(
            "run %s ended: %s%s",
            run_id,
            status,
            "" if returncode is None else f" (training process {describe_exit(returncode)})",
        )


def _end_error(run: TrainingRun, *, returncode: int | None, log_path: Path, stopped: str | None) -> str | None:
    """The error to record for a run whose process ended, or None when the row already says how it ended."""
    if run.status == "running":
        if stopped:
            return stopped
        how = "exited without recording a result" if returncode == 0 else describe_exit(returncode)
        return f"The training process {how}. Last lines of {log_path}:\n{log_tail(log_path)}"
    if run.status == "failed" and returncode not in (None, 0) and f"{log_path}" not in (run.error or ""):
        return f"{run.error}\n\n(The training process {describe_exit(returncode)}; full log: {log_path})"
    return None
