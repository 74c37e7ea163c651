"""Leaderboard tab: editing models ranked by the Bradley–Terry fit on the selected votes, beside their mean model
score, as the worker last computed them (`trainer.leaderboard_cache`)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import NamedTuple

import gradio as gr
import pandas as pd

from app.auth import current_user
from app.deps import Deps
from app.handlers import user_errors
from app.render import duration, text
from storage.models import ModelVersion, utcnow
from storage.provenance import describe_selection
from trainer.leaderboard import LeaderboardRow
from trainer.leaderboard_cache import board_rows, latest_board

NOT_YET = ("<p>The worker has not computed the leaderboard yet; it does within a minute of the first votes (start "
           "the worker, or the app without --no-worker).</p>")
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


def _age(moment: datetime) -> str:
    seconds = max(0.0, (utcnow() - (moment if moment.tzinfo else moment.replace(tzinfo=UTC))).total_seconds())
    return "just now" if seconds < 60 else f"{duration(seconds)} ago"


def leaderboard_view(deps: Deps, request: gr.Request) -> LeaderboardView:
    """The leaderboard as the worker last computed it (`trainer.leaderboard_cache`), with its age.

    Nothing is fitted, resampled or scored here: the view is one read of the newest cached board.
    """
    current_user(deps, request)
    with user_errors(), deps.reader() as session:
        board = latest_board(session)
        version = session.get(ModelVersion, board.version_id) if board and board.version_id else None
    if board is None:
        return LeaderboardView(pd.DataFrame([], columns=COLUMNS), NOT_YET)
    rows = board_rows(board)
    ranked = [_row(rank if row.strength is not None else None, row) for rank, row in enumerate(rows, start=1)]
    scores = f"model version <b>{text(version.name)}</b>" if version else "no model version yet"
    caption = (
        f"<p>Strength: Bradley–Terry log-strength from {board.votes} votes "
        f"({text(describe_selection(board.selection))}) between "
        f"different models (ties count ½ each way), 95% intervals from {board.n_bootstrap} task bootstraps. "
        f"Mean score: {scores}, over the candidates it has scored. Computed by the worker {_age(board.computed_at)} "
        f"(in {board.seconds:.1f} s); it recomputes within {duration(deps.settings.leaderboard_refresh_s)} of new "
        "votes or a promotion.</p>"
    )
    return LeaderboardView(pd.DataFrame(ranked, columns=COLUMNS), caption)
