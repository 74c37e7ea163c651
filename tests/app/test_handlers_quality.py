"""Research tab, quality: the version board, the annotator check, clearing a flag; researchers only."""

from __future__ import annotations

import gradio as gr
import pytest
from sqlalchemy import select

from app.handlers import quality
from storage.db import transaction
from storage.models import AnnotatorFlag, User
from tests.app.handler_support import add_users, as_user, make_deps


@pytest.fixture
def deps(app_store):
    add_users(app_store, res="researcher", ann="annotator")
    return make_deps(app_store)


def test_annotators_are_refused_every_quality_handler(deps):
    calls = (
        lambda: quality.accuracy_view(deps, as_user("ann")),
        lambda: quality.quality_view(deps, as_user("ann")),
        lambda: quality.clear_annotator_flag(deps, "ann", "fine", as_user("ann")),
    )
    for call in calls:
        with pytest.raises(gr.Error, match="researcher"):
            call()


def test_the_board_lists_versions_and_the_check_lists_the_demo_annotators(deps):
    board = quality.accuracy_view(deps, as_user("res"))
    assert list(board.accuracy.columns) == ["version", "accuracy"] and "strict held-out votes" in board.caption
    view = quality.quality_view(deps, as_user("res"))
    assert "Krippendorff" in view.summary and list(view.annotators.columns) == quality.ANNOTATOR_COLUMNS
    assert len(view.annotators) > 0  # the demo's simulated annotators (a demo-only store counts demo votes)


def test_clearing_needs_a_flagged_name_and_a_reason(deps, app_store):
    with pytest.raises(gr.Error, match="Name the flagged annotator"):
        quality.clear_annotator_flag(deps, " ", "x", as_user("res"))
    with pytest.raises(gr.Error, match="is not flagged"):
        quality.clear_annotator_flag(deps, "ann", "looked fine", as_user("res"))
    with transaction(app_store.factory) as session:
        ann = session.scalar(select(User).where(User.name == "ann"))
        session.add(AnnotatorFlag(annotator_id=ann.id, flagged=True, reasons={"codes": ["too_fast"], "text": []}))
    with pytest.raises(gr.Error, match="reason is empty"):
        quality.clear_annotator_flag(deps, "ann", "", as_user("res"))
    assert "train again" in quality.clear_annotator_flag(deps, "ann", "checked by hand", as_user("res"))
    with app_store.factory() as session:
        flag = session.scalar(select(AnnotatorFlag))
        assert flag.cleared_reason == "checked by hand" and flag.cleared_by_id is not None
