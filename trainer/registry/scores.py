"""The score cache: (version, candidate) → score, upserted in chunks on both backends."""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any, NamedTuple

from sqlalchemy import select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from storage.errors import InvalidInput, NotFound
from storage.models import Candidate, Score, utcnow
from trainer.registry.reading import get_version

_SCORE_CHUNK = 500
_OVERWRITTEN = ("score", "log_sigma", "dimensions", "created_at")  # what a new score of a (version, candidate) replaces


def _chunks(items: list[Any], size: int = _SCORE_CHUNK) -> Iterator[list[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _validate_scores(session: Session, scores: dict[int, float]) -> list[dict[str, Any]]:
    rows = []
    for candidate_id, score in scores.items():
        if isinstance(candidate_id, bool) or not isinstance(candidate_id, int):
            raise InvalidInput(f"Candidate ids must be integers, got {candidate_id!r}.")
        if isinstance(score, bool) or not isinstance(score, int | float) or not math.isfinite(score):
            raise InvalidInput(f"Score for candidate {candidate_id} must be a finite number, got {score!r}.")
        rows.append({"candidate_id": int(candidate_id), "score": float(score)})
    ids = [row["candidate_id"] for row in rows]
    known: set[int] = set()
    for chunk in _chunks(ids):
        known.update(session.scalars(select(Candidate.id).where(Candidate.id.in_(chunk))))
    missing = sorted(set(ids) - known)
    if missing:
        raise NotFound(f"No candidates with ids {missing[:10]}{' …' if len(missing) > 10 else ''}.")
    return rows


def record_scores(
    session: Session,
    *,
    version_id: int,
    scores: dict[int, float],
    sigmas: dict[int, float | None] | None = None,
    dimensions: dict[int, dict[str, float] | None] | None = None,
) -> None:
    """Insert or overwrite the scores of `version_id` for the given candidates, with the uncertainty head's σ and the
    dimension heads' scores where the model has them."""
    get_version(session, version_id=version_id)
    rows = _validate_scores(session, scores)
    for row in rows:
        sigma = (sigmas or {}).get(row["candidate_id"])
        row["log_sigma"] = math.log(sigma) if sigma is not None and sigma > 0 else None
        row["dimensions"] = (dimensions or {}).get(row["candidate_id"])
    dialect = postgresql if session.get_bind().dialect.name == "postgresql" else sqlite
    now = utcnow()
    for chunk in _chunks(rows):
        statement = dialect.insert(Score).values(
            [{**row, "version_id": version_id, "created_at": now} for row in chunk]
        )
        statement = statement.on_conflict_do_update(
            index_elements=[Score.version_id, Score.candidate_id],
            set_={name: getattr(statement.excluded, name) for name in _OVERWRITTEN},
        )
        session.execute(statement)


class StoredScore(NamedTuple):
    score: float
    sigma: float | None  # the uncertainty head's σ; None when the version has no such head
    dimensions: dict[str, float] | None


def stored_scores(session: Session, *, version_id: int, candidate_ids: list[int]) -> dict[int, StoredScore]:
    """The stored score, σ and dimension scores of `version_id` for those of `candidate_ids` that have one."""
    found: dict[int, StoredScore] = {}
    for chunk in _chunks(list(dict.fromkeys(candidate_ids))):
        query = select(Score.candidate_id, Score.score, Score.log_sigma, Score.dimensions).where(
            Score.version_id == version_id, Score.candidate_id.in_(chunk)
        )
        found.update(
            {cid: StoredScore(score, None if ls is None else math.exp(ls), dims) for cid, score, ls, dims in
             session.execute(query)}
        )
    return found


def cached_scores(session: Session, *, version_id: int, candidate_ids: list[int]) -> dict[int, float]:
    """The stored scores of `version_id` for those of `candidate_ids` that have one."""
    stored = stored_scores(session, version_id=version_id, candidate_ids=candidate_ids)
    return {candidate_id: row.score for candidate_id, row in stored.items()}
