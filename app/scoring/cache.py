"""Candidate scores cached per (version, candidate): in memory for the serving version, and in the `scores` table."""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable

from sqlalchemy.orm import Session, sessionmaker

from app.scoring.versions import ScoredItem
from trainer.registry import cached_scores, record_scores

log = logging.getLogger(__name__)


class CandidateScoreCache:
    """Known scores of stored candidates; memory holds the serving version's only (`reset` on each swap)."""

    def __init__(self, factory: sessionmaker[Session]):
        self._factory = factory
        self._memory: dict[int, dict[int, float]] = {}  # version id → candidate id → score (serving version only)
        self._lock = threading.Lock()

    def reset(self, version_id: int) -> None:
        """Keep memory for `version_id` only; older versions' scores stay in the scores table."""
        with self._lock:
            self._memory = {version_id: {}}

    def lookup(self, version_id: int, ids: list[int]) -> dict[int, float]:
        """Hits from memory, then from the scores table (which also fills memory)."""
        memory = self._memory.get(version_id, {})
        scores = {i: memory[i] for i in ids if i in memory}
        rest = [i for i in ids if i not in scores]
        if rest:
            with self._factory() as session:
                stored = cached_scores(session, version_id=version_id, candidate_ids=rest)
            scores.update(stored)
            self._remember_in_memory(version_id, stored)
        return scores

    def store(self, results: Iterable[ScoredItem]) -> None:
        """Keep computed scores in memory (serving version) and in the scores table (their own version)."""
        by_version: dict[int, dict[int, float]] = {}
        for item in results:
            by_version.setdefault(item.version_id, {})[item.candidate_id] = item.score
        for version_id, scores in by_version.items():
            self._remember_in_memory(version_id, scores)
            try:
                with self._factory() as session, session.begin():
                    record_scores(session, version_id=version_id, scores=scores)
            except Exception:  # noqa: BLE001 - the cache is an optimisation; the scores are still returned
                log.warning("Could not store %d scores of version %s", len(scores), version_id, exc_info=True)

    def _remember_in_memory(self, version_id: int, scores: dict[int, float]) -> None:
        with self._lock:
            memory = self._memory.get(version_id)  # None once that version stopped serving
            if memory is not None:
                memory.update(scores)
