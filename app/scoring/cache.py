"""Candidate scores cached per (version, candidate): in memory for the serving version, and in the `scores` table.

Both keep what the forward gave (`ModelScore`: the score, σ and dimension scores); `registry.stored_scores` reads all
three back, so a hit from the table is the same as a hit from memory."""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable

from sqlalchemy.orm import Session, sessionmaker

from app.scoring.versions import ModelScore, ScoredItem
from trainer.registry import record_scores
from trainer.registry.scores import stored_scores

log = logging.getLogger(__name__)


class CandidateScoreCache:
    """Known scores of stored candidates; memory holds the serving version's only (`reset` on each swap)."""

    def __init__(self, factory: sessionmaker[Session]):
        self._factory = factory
        self._memory: dict[int, dict[int, ModelScore]] = {}  # version id → candidate id → score (serving version only)
        self._lock = threading.Lock()

    def reset(self, version_id: int) -> None:
        """Keep memory for `version_id` only; older versions' scores stay in the scores table."""
        with self._lock:
            self._memory = {version_id: {}}

    def lookup(self, version_id: int, ids: list[int]) -> dict[int, ModelScore]:
        """Hits from memory, then from the scores table (which also fills memory)."""
        memory = self._memory.get(version_id, {})
        scores = {i: memory[i] for i in ids if i in memory}
        rest = [i for i in ids if i not in scores]
        if rest:
            with self._factory() as session:
                stored = stored_scores(session, version_id=version_id, candidate_ids=rest)
            found = {i: ModelScore(*row) for i, row in stored.items()}
            scores.update(found)
            self._remember_in_memory(version_id, found)
        return scores

    def store(self, results: Iterable[ScoredItem]) -> None:
        """Keep computed scores in memory (serving version) and in the scores table (their own version)."""
        by_version: dict[int, dict[int, ModelScore]] = {}
        for item in results:
            by_version.setdefault(item.version_id, {})[item.candidate_id] = ModelScore(
                item.score, item.sigma, item.dimensions
            )
        for version_id, scores in by_version.items():
            self._remember_in_memory(version_id, scores)
            try:
                with self._factory() as session, session.begin():
                    record_scores(
                        session,
                        version_id=version_id,
                        scores={i: s.score for i, s in scores.items()},
                        sigmas={i: s.sigma for i, s in scores.items()},
                        dimensions={i: s.dimensions for i, s in scores.items()},
                    )
            except Exception:  # noqa: BLE001 - the cache is an optimisation; the scores are still returned
                log.warning("Could not store %d scores of version %s", len(scores), version_id, exc_info=True)

    def _remember_in_memory(self, version_id: int, scores: dict[int, ModelScore]) -> None:
        with self._lock:
            memory = self._memory.get(version_id)  # None once that version stopped serving
            if memory is not None:
                memory.update(scores)
