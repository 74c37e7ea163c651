"""Escaping and small HTML pieces: every string that reaches the page as HTML goes through `html.escape` here.

Instructions, rationales, generator and user names come from uploads, imports and annotators; the app renders
them only as escaped text inside HTML it writes itself (never as Markdown, whose links and raw HTML would be
live). `gr.Error` messages are rendered as HTML by Gradio too, so they are escaped as well.
"""

from __future__ import annotations

import html
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import gradio as gr


@dataclass(frozen=True)
class Raw:
    """HTML the app wrote itself (a progress bar); `html_table` puts it in a cell unescaped."""

    html: str


def text(value: object) -> str:
    """`value` as HTML text: escaped, with line breaks kept."""
    return html.escape("" if value is None else str(value)).replace("\n", "<br>")


def error(message: str) -> gr.Error:
    """A `gr.Error` whose message shows as text (Gradio renders error messages as HTML)."""
    return gr.Error(html.escape(message, quote=False))  # element content: quotes need no escaping, and read better


def html_table(headers: Sequence[str], rows: Iterable[Sequence[object]], *, elem_class: str = "jrm-table") -> str:
    """A table whose cells are escaped text, except `Raw` cells."""
    head = "".join(f"<th>{text(h)}</th>" for h in headers)
    body = "".join(
        "<tr>" + "".join(f"<td>{c.html if isinstance(c, Raw) else text(c)}</td>" for c in row) + "</tr>"
        for row in rows
    )
    return f'<table class="{elem_class}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def progress_bar(fraction: float) -> Raw:
    """A labelled progress bar for `fraction` in [0, 1]."""
    percent = max(0.0, min(1.0, fraction)) * 100
    return Raw(
        f'<div class="jrm-progress" role="progressbar" aria-valuenow="{percent:.0f}" aria-valuemin="0" '
        f'aria-valuemax="100"><div class="jrm-progress-fill" style="width:{percent:.1f}%"></div>'
        f'<span class="jrm-progress-label">{percent:.0f}%</span></div>'
    )


def duration(seconds: float | None) -> str:
    """`75` → `1m 15s`; None → `–`."""
    if seconds is None:
        return "–"
    seconds = max(0, round(seconds))
    minutes, secs = divmod(seconds, 60)
    hours, minutes = divmod(minutes, 60)
    if hours:
        return f"{hours}h {minutes:02d}m"
    return f"{minutes}m {secs:02d}s" if minutes else f"{secs}s"
