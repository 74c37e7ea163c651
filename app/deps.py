"""What the handlers need, built once by `python -m app` and bound into the UI's events."""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from typing import TYPE_CHECKING, Any

from sqlalchemy.orm import Session, sessionmaker

from app.in_flight import InFlight
from storage.db import engine_of, session_factory
from storage.settings import Settings

if TYPE_CHECKING:
    from app.scoring import ScoringService


@dataclass(frozen=True)
class Deps:
    """The session factory, the settings, the scoring service, the in-process worker (when started) and the votes
    being stored now (a vote sent twice at once is stored by the first request; the second shares its outcome)."""

    factory: sessionmaker[Session]
    settings: Settings
    scoring: ScoringService | None = None  # None: no scores are served (handler tests, or the service failed)
    worker: Any | None = None  # trainer.worker.start_background_worker's handle; None with --no-worker
    votes_in_flight: InFlight = field(default_factory=InFlight, compare=False)

    @cached_property
    def reader(self) -> sessionmaker[Session]:
        """Read-only sessions for statistics, leaderboards and exports: on SQLite they never hold the write lock."""
        return session_factory(engine_of(self.factory), read_only=True)
