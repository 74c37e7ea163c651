"""Page load: who is logged in, and which tabs and timers their role gets (the handlers check roles again)."""

from __future__ import annotations

from typing import Any, NamedTuple

import gradio as gr

from app.auth import current_user
from app.deps import Deps
from app.render import text
from trainer.runs_backoff import automatic_runs_alert


class SessionView(NamedTuple):
    who: str  # HTML, escaped: who is signed in, and a warning when the active model version failed to load
    research_tab: Any  # gr.Tab update: visible for researchers and admins
    admin_tab: Any  # gr.Tab update: visible for admins
    runs_timer: Any  # gr.Timer update: the live runs table ticks only for those who can see it


def start_session(deps: Deps, request: gr.Request) -> SessionView:
    """The caller's name and role, and the tabs and timers that role can use."""
    user = current_user(deps, request)
    mode = "" if deps.settings.auth else " (local mode, no log-in)"
    logout = ' · <a href="/logout">log out</a>' if deps.settings.auth else ""
    who = f'<div class="jrm-who">Signed in as <b>{text(user.name)}</b> ({text(user.role)}){text(mode)}{logout}</div>'
    who += scorer_alert(deps, detail=user.is_researcher) + (retrain_alert(deps) if user.is_researcher else "")
    return SessionView(
        who,
        gr.Tab(visible=user.is_researcher),
        gr.Tab(visible=user.is_admin),
        gr.Timer(active=user.is_researcher),
    )


def scorer_alert(deps: Deps, *, detail: bool) -> str:
    """HTML warning when the active version failed to load (from the scoring service's memory); "" when all is well.
    `detail` adds the load error, which may name server paths: researchers and admins only."""
    problem = None if deps.scoring is None else deps.scoring.status().problem(detail=detail)
    return "" if problem is None else f'<div class="jrm-alert" role="alert">{text(problem)}</div>'


def retrain_alert(deps: Deps) -> str:
    """HTML warning when automatic retrains are paused after repeated failures (`trainer.runs_backoff`); "" else."""
    with deps.reader() as session:
        alert = automatic_runs_alert(session)
    return "" if alert is None else f'<div class="jrm-alert" role="alert">{text(alert)}</div>'
