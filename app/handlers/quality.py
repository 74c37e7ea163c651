"""Research tab, model and data quality (researchers and admins): every version on the same held-out votes,
annotator agreement and quality checks, and clearing a flag.

The accuracy board is a read of the score cache. The quality check reads every selected vote but resamples
nothing; it runs when the researcher asks (a button), in a read-only session, and shows the verdict beside the
stored flags — the ones training obeys, written by the worker after each promotion.
"""

from __future__ import annotations

from typing import NamedTuple

import gradio as gr
import pandas as pd

from app.auth import require_researcher
from app.deps import Deps
from app.handlers import user_errors
from app.render import html_table, text
from storage import audit
from storage.db import transaction
from storage.provenance import VoteSelection, vote_selection
from trainer.registry import active_version
from trainer.version_board import version_board

ANNOTATOR_COLUMNS = ["annotator", "votes", "left rate", "left-rate p", "median s", "peer agreement",
                     "model agreement", "gold accuracy", "flagged now", "excluded from training", "reasons"]


class AccuracyView(NamedTuple):
    accuracy: pd.DataFrame  # version, accuracy (held-out, same votes), oldest first
    caption: str  # HTML


class QualityView(NamedTuple):
    summary: str  # HTML
    annotators: pd.DataFrame  # ANNOTATOR_COLUMNS


def _provenances(selection: VoteSelection) -> str:
    return ", ".join(selection.provenances)


def accuracy_view(deps: Deps, request: gr.Request) -> AccuracyView:
    """Accuracy of every version on the same held-out votes (version on x)."""
    require_researcher(deps, request)
    with deps.reader() as session:
        chosen = vote_selection(session, settings=deps.settings)
        board = version_board(session, selection=chosen)
    accuracy = pd.DataFrame([(r.name, round(r.accuracy, 4)) for r in board.rows], columns=["version", "accuracy"])
    left_out = f"; not scored on them: {text(', '.join(board.left_out))}" if board.left_out else ""
    accuracy_caption = (
        f"<p>Held-out accuracy of every version on the same {board.votes} strict held-out votes "
        f"({text(_provenances(chosen))}) that all of them scored{left_out}.</p>"
    )
    return AccuracyView(accuracy, accuracy_caption)


def _percent(rate: object) -> str:
    value = getattr(rate, "rate", rate)
    return "—" if value is None else f"{value:.0%}"


def _number(value: float | None, digits: int = 3) -> str:
    return "—" if value is None else f"{value:.{digits}g}"


def quality_view(deps: Deps, request: gr.Request) -> QualityView:
    """Agreement (Krippendorff's α, Cohen's κ per pair) and each annotator's checks against the active version."""
    require_researcher(deps, request)
    with deps.reader() as session:
        everyone = vote_selection(session, settings=deps.settings, exclude_flagged=False)
        active = active_version(session)
        report = audit.quality_report(session, selection=everyone, version_id=active.id if active else None)
        stored = {row["name"]: row for row in audit.flag_rows(session)}
    rows = [
        [a.name, a.votes, _percent(a.left_rate), _number(a.left_rate_p), _number(a.median_seconds),
         _percent(a.peer_agreement), _percent(a.model_agreement), _percent(a.gold_accuracy),
         "yes" if a.flagged else "", "yes" if stored.get(a.name, {}).get("excluded") else "",
         "; ".join(a.reasons) or "—"]
        for a in report.annotators
    ]
    kappas = [k for k in report.pairwise_kappa if k.kappa is not None]
    kappa_rows = [(f"{k.a} – {k.b}", k.n, f"{k.kappa:.2f}") for k in sorted(kappas, key=lambda k: -k.n)[:10]]
    summary = (
        f"<p>Krippendorff's α (nominal: A, B, tie, both bad) over pairs with ≥ 2 votes "
        f"({text(_provenances(everyone))}): <b>{_number(report.krippendorff_alpha)}</b>. Model agreement: "
        f"{text(active.name) if active else 'no active version'}"
        f"{f', {_percent(report.model_agreement)} overall' if report.model_agreement else ''}. "
        "Flags are stored by the worker after each promotion; “excluded” is what training obeys.</p>"
        + (html_table(["annotator pair", "shared pairs", "Cohen's κ"], kappa_rows) if kappa_rows else "")
    )
    return QualityView(summary, pd.DataFrame(rows, columns=ANNOTATOR_COLUMNS))


def clear_annotator_flag(deps: Deps, name: str | None, reason: str | None, request: gr.Request) -> str:
    """Clear `name`'s flag with a reason: their votes train again (the reason is kept with the flag)."""
    researcher = require_researcher(deps, request)
    if not name or not name.strip():
        raise gr.Error("Name the flagged annotator whose flag you clear.")
    with user_errors(), transaction(deps.factory) as session:
        audit.clear_flag(session, annotator=name.strip(), cleared_by_id=researcher.id, reason=reason or "")
    return f"<p>Cleared the flag on {text(name.strip())}: their votes train again from the next run.</p>"
