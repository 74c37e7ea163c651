"""Page load: who is logged in, and which tabs and timers their role gets (the handlers check roles again)."""

from __future__ import annotations

from typing import Any, NamedTuple

import gradio as gr

from app.auth import current_user
from app.deps import Deps
from app.render import text


class SessionView(NamedTuple):
    who: str  # HTML, escaped
    research_tab: Any  # gr.Tab update: visible for researchers and admins
    admin_tab: Any  # gr.Tab update: visible for admins
    runs_timer: Any  # gr.Timer update: the live runs table ticks only for those who can see it


def start_session(deps: Deps, request: gr.Request) -> SessionView:
    """The caller's name and role, and the tabs and timers that role can use."""
    user = current_user(deps, request)
    mode = "" if deps.settings.auth else " (local mode, no log-in)"
    logout = ' · <a href="/logout">log out</a>' if deps.settings.auth else ""
    who = f'<div class="jrm-who">Signed in as <b>{text(user.name)}</b> ({text(user.role)}){text(mode)}{logout}</div>'
    return SessionView(
        who,
        gr.Tab(visible=user.is_researcher),
        gr.Tab(visible=user.is_admin),
        gr.Timer(active=user.is_researcher),
    )
