"""Leaderboard tab: editing models ranked by the Bradley–Terry fit on human votes, beside their mean model score."""

from __future__ import annotations

import contextlib
from typing import NamedTuple

import gradio as gr
import pandas as pd
from sqlalchemy import select
from sqlalchemy.orm import Session

from app.auth import current_user
from app.deps import Deps
from app.handlers import user_errors
from app.leaderboard import LeaderboardRow, leaderboard
from app.render import text
from app.scoring import NoScorerYet
from storage.errors import InvalidInput
from storage.models import Candidate
from storage.provenance import VoteSelection, vote_selection
from trainer.registry import active_version

N_BOOTSTRAP = 200
SCORE_AT_MOST = 5000  # candidates scored per view; scores are cached per version, so later views are cheap
COLUMNS = ["rank", "editing model", "BT strength", "95% CI low", "95% CI high", "wins", "losses", "ties",
           "votes", "mean score", "candidates scored"]


class LeaderboardView(NamedTuple):
    table: pd.DataFrame  # COLUMNS, strongest first
    caption: str  # HTML, escaped


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


def _row(rank: int | None, row: LeaderboardRow) -> list[object]:
    return [rank, row.generator, _round(row.strength), _round(row.ci_low), _round(row.ci_high), row.wins,
            row.losses, row.ties, row.n_votes, _round(row.mean_score), row.n_scored]


def _score_candidates(deps: Deps) -> None:
    """Have the serving version score the candidates (cached ones cost nothing), so mean scores cover them."""
    if deps.scoring is None or deps.scoring.version is None:
        return
    # The ids are read in a session of their own: on SQLite an open transaction holds the write lock, and the
    # scoring service writes the scores it computes.
    with deps.factory() as session:
        ids = list(session.scalars(select(Candidate.id).order_by(Candidate.id).limit(SCORE_AT_MOST)))
    # On failure the table still shows the votes; mean scores cover what was scored before.
    with contextlib.suppress(NoScorerYet, InvalidInput, RuntimeError):
        deps.scoring.score_candidates(ids)


def _excluded(chosen: VoteSelection) -> str:
    count = len(chosen.excluded_annotators)
    return f"; {count} flagged annotator{'s' if count != 1 else ''} left out" if count else ""


def _version(deps: Deps, session: Session) -> tuple[int, str] | None:
    """The version whose scores are shown: the one serving, else the active one in the store."""
    serving = deps.scoring.version if deps.scoring is not None else None
    if serving is not None:
        return serving
    active = active_version(session)
    return None if active is None else (active.id, active.name)


def leaderboard_view(deps: Deps, request: gr.Request) -> LeaderboardView:
    """The leaderboard table and a caption naming the version behind the mean scores."""
    current_user(deps, request)
    _score_candidates(deps)
    with user_errors(), deps.factory() as session:
        version = _version(deps, session)
        chosen = vote_selection(session, settings=deps.settings)
        rows = leaderboard(session, version_id=version[0] if version else None, n_bootstrap=N_BOOTSTRAP,
                           selection=chosen)
    ranked = [_row(rank if row.strength is not None else None, row) for rank, row in enumerate(rows, start=1)]
    table = pd.DataFrame(ranked, columns=COLUMNS)
    scores = f"model version <b>{text(version[1])}</b>" if version else "no model version yet"
    caption = (
        f"<p>Strength: Bradley–Terry log-strength from {sum(r.n_votes for r in rows) // 2} votes "
        f"({text(', '.join(chosen.provenances))}{_excluded(chosen)}) between "
        f"different models (ties count ½ each way), 95% intervals from {N_BOOTSTRAP} task bootstraps. "
        f"Mean score: {scores}, over the candidates it has scored.</p>"
    )
    return LeaderboardView(table, caption)
