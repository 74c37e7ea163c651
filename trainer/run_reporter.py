"""Writing to a training run's row while it trains: throttled progress and a heartbeat from a background thread.

`update_run` is the one short transaction every write to the row goes through (also the pipeline's failure and
snapshot records); `RunReporter` is `train()`'s progress callback and raises `RunCancelled` once the row stops
being `running`.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from sqlalchemy import update
from sqlalchemy.orm import Session, sessionmaker

from storage.db import transaction
from storage.models import TrainingRun, utcnow
from trainer.train import ProgressEvent

log = logging.getLogger(__name__)

PROGRESS_INTERVAL_S = 2.0  # the row is written at most this often while training
HEARTBEAT_INTERVAL_S = 10.0  # …and its heartbeat at least this often, also while a slow step or the evaluation runs


class RunCancelled(RuntimeError):
    """The run's row stopped being `running` (cancelled from the app or taken over); training stops."""


def update_run(factory: sessionmaker[Session], run_id: int, *, running_only: bool = False, **values: Any) -> bool:
    """One short transaction; with `running_only`, only while the row is still `running`. True if it changed."""
    with transaction(factory) as session:
        query = update(TrainingRun).where(TrainingRun.id == run_id)
        if running_only:
            query = query.where(TrainingRun.status == "running")
        return session.execute(query.values(**values)).rowcount == 1


class RunReporter:
    """Writes training progress to the run's row (throttled) and a heartbeat from a background thread."""

    def __init__(
        self,
        factory: sessionmaker[Session],
        run_id: int,
        *,
        interval_s: float = PROGRESS_INTERVAL_S,
        heartbeat_s: float = HEARTBEAT_INTERVAL_S,
    ):
        self.factory, self.run_id = factory, run_id
        self.interval_s, self.heartbeat_s = interval_s, heartbeat_s
        self.history: dict[str, list[float]] = {}
        self._last_write = -float("inf")
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> RunReporter:
        self._thread = threading.Thread(target=self._beat, name=f"run-{self.run_id}-heartbeat", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def _beat(self) -> None:
        while not self._stop.wait(self.heartbeat_s):
            try:
                update_run(self.factory, self.run_id, running_only=True, heartbeat_at=utcnow())
            except Exception:  # noqa: BLE001 - a missed heartbeat must not kill training; the next one retries
                log.exception("heartbeat of run %s failed", self.run_id)

    def __call__(self, event: ProgressEvent) -> None:
        """The `train()` progress callback: record the curve, write the row every `interval_s` and at the end."""
        for key, value in (("step", event.step), *event.loss.items(), ("lr", event.lr)):
            self.history.setdefault(key, []).append(value)
        now = time.monotonic()
        if now - self._last_write < self.interval_s and event.step < event.total_steps:
            return
        self._last_write = now
        written = update_run(
            self.factory,
            self.run_id,
            running_only=True,
            progress=event.progress,
            step=event.step,
            total_steps=event.total_steps,
            eta_s=round(event.eta_s, 1),
            loss=event.loss,
            history=self.history,
            heartbeat_at=utcnow(),
        )
        if not written:
            raise RunCancelled(f"run {self.run_id} is no longer running (cancelled?); training stopped.")
