"""Leaderboard view: generators ranked by Bradley–Terry strength, beside their mean score under the served version."""

from __future__ import annotations

from sqlalchemy import func, select

from app.handlers.leaderboard import COLUMNS, leaderboard_view
from storage.models import Candidate
from tests.app.handler_support import add_users, as_user, make_deps


def test_leaderboard_ranks_generators_and_names_the_scoring_version(app_store, scoring_service):
    add_users(app_store, ann="annotator")
    deps = make_deps(app_store, scoring=scoring_service)
    view = leaderboard_view(deps, as_user("ann"))
    table = view.table
    assert list(table.columns) == COLUMNS and len(table) >= 2
    ranked = table.dropna(subset=["BT strength"])
    assert list(ranked["rank"]) == list(range(1, len(ranked) + 1))
    assert ranked["BT strength"].is_monotonic_decreasing
    assert (ranked["95% CI low"] <= ranked["BT strength"]).all()
    assert (ranked["BT strength"] <= ranked["95% CI high"]).all()
    with app_store.factory() as session:  # the view had the served version score every candidate
        assert table["candidates scored"].sum() == session.scalar(select(func.count()).select_from(Candidate))
    assert table["mean score"].notna().all()
    assert app_store.version_name in view.caption and "votes (demo, human, import)" in view.caption  # a demo-only store counts its demo votes


def test_leaderboard_without_a_scorer_uses_the_active_version_of_the_store(app_store):
    add_users(app_store, ann="annotator")
    view = leaderboard_view(make_deps(app_store), as_user("ann"))
    assert app_store.version_name in view.caption
