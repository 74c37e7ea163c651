"""The leaderboard, computed by the worker and cached in the store (`leaderboard_cache`).

The Bradley–Terry fit and its task bootstrap (`trainer.leaderboard`) take seconds on a large store, so no request
runs them: the worker recomputes the board when it is due — new votes since the cached one, another active version,
or another vote selection — on its `leaderboard` job (every `JRM_LEADERBOARD_REFRESH_S`) and right after a
promotion. The inputs are read in a read-only session, the fit runs with no session open, and the row is written in
a transaction of its own. The Leaderboard tab renders the newest row and shows its age.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass

from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session, sessionmaker

from storage.db import engine_of, session_factory, transaction
from storage.models import LeaderboardCache, Vote
from storage.provenance import VoteSelection, vote_selection
from storage.settings import Settings
from trainer.leaderboard import LeaderboardRow, rank, read_inputs
from trainer.registry import active_version

N_BOOTSTRAP = 200
KEEP_ROWS = 5  # older boards are deleted; a few are kept to show how the board moved


@dataclass(frozen=True)
class BoardKey:
    """What a cached board was computed from; a board is due when the store's key differs."""

    vote_watermark: int
    version_id: int | None
    selection: VoteSelection


def current_key(session: Session, *, settings: Settings) -> BoardKey:
    """The key of the board the store would give now."""
    active = active_version(session)
    watermark = session.scalar(select(func.max(Vote.id))) or 0
    return BoardKey(watermark, active.id if active else None, vote_selection(session, settings=settings))


def latest_board(session: Session) -> LeaderboardCache | None:
    """The newest cached board, or None before the worker computed one."""
    return session.scalar(select(LeaderboardCache).order_by(LeaderboardCache.id.desc()).limit(1))


def _key_of(board: LeaderboardCache) -> BoardKey:
    return BoardKey(board.vote_watermark, board.version_id, VoteSelection.from_json(board.selection))


def board_due(session: Session, *, settings: Settings) -> bool:
    """True when there is no board, or votes, the active version or the selection changed since it was computed."""
    board = latest_board(session)
    return board is None or _key_of(board) != current_key(session, settings=settings)


def board_rows(board: LeaderboardCache) -> list[LeaderboardRow]:
    return [LeaderboardRow(**row) for row in board.rows]


def refresh_board(
    factory: sessionmaker[Session], *, settings: Settings, n_bootstrap: int = N_BOOTSTRAP, force: bool = False
) -> LeaderboardCache | None:
    """Recompute and store the board when it is due (or `force`); the new row, or None when nothing changed."""
    with session_factory(engine_of(factory), read_only=True)() as session:
        if not force and not board_due(session, settings=settings):
            return None
        key = current_key(session, settings=settings)
        inputs = read_inputs(session, version_id=key.version_id, selection=key.selection)
    started = time.monotonic()
    rows = rank(inputs, n_bootstrap=n_bootstrap)  # seconds on a large store; no session is open
    board = LeaderboardCache(
        version_id=key.version_id,
        vote_watermark=key.vote_watermark,
        votes=sum(row.n_votes for row in rows) // 2,
        selection=key.selection.to_json(),
        n_bootstrap=n_bootstrap,
        seconds=time.monotonic() - started,
        rows=[dataclasses.asdict(row) for row in rows],
    )
    with transaction(factory) as session:
        session.add(board)
        session.flush()
        newest_first = select(LeaderboardCache.id).order_by(LeaderboardCache.id.desc())
        stale = list(session.scalars(newest_first.offset(KEEP_ROWS)))
        if stale:
            session.execute(delete(LeaderboardCache).where(LeaderboardCache.id.in_(stale)))
    return board
