"""Leaderboard view: the board the worker cached, ranked by Bradley–Terry strength, with its age; nothing computed."""

from __future__ import annotations

import sqlite3
import threading
from unittest import mock

import pytest
from sqlalchemy import delete, func, select

import trainer.leaderboard_cache
from app.handlers.leaderboard import COLUMNS, NOT_YET, leaderboard_view
from storage.db import transaction
from storage.models import Candidate, LeaderboardCache
from storage.repository import record_vote
from tests.app.handler_support import add_users, as_user, make_deps
from trainer.leaderboard_cache import board_due, refresh_board
from trainer.model import JointRewardModel
from trainer.refresh import refresh_after_publish


def _without_boards(app_store) -> None:
    with transaction(app_store.factory) as session:
        session.execute(delete(LeaderboardCache))


def test_before_the_worker_computed_a_board_the_tab_says_so_and_computes_nothing(app_store):
    _without_boards(app_store)
    add_users(app_store, ann="annotator")
    with mock.patch("trainer.leaderboard.rank") as rank:
        view = leaderboard_view(make_deps(app_store), as_user("ann"))
    assert view.caption == NOT_YET and view.table.empty and list(view.table.columns) == COLUMNS
    rank.assert_not_called()


def test_the_board_is_cached_by_the_worker_and_recomputed_only_when_due(app_store):
    _without_boards(app_store)
    add_users(app_store, ann="annotator")
    deps = make_deps(app_store)
    board = refresh_board(app_store.factory, settings=app_store.settings)
    assert board is not None and refresh_board(app_store.factory, settings=app_store.settings) is None  # not due
    with mock.patch("trainer.leaderboard.rank") as rank:  # the view renders the cached rows: no fit, no bootstrap
        view = leaderboard_view(deps, as_user("ann"))
    rank.assert_not_called()
    table = view.table
    ranked = table.dropna(subset=["BT strength"])
    assert list(ranked["rank"]) == list(range(1, len(ranked) + 1)) and len(ranked) >= 2
    assert ranked["BT strength"].is_monotonic_decreasing
    assert (ranked["95% CI low"] <= ranked["BT strength"]).all()
    assert (ranked["BT strength"] <= ranked["95% CI high"]).all()
    assert app_store.version_name in view.caption and "votes (demo, human, import)" in view.caption
    assert "Computed by the worker just now" in view.caption
    with transaction(app_store.factory) as session:  # a new vote makes the board due
        pair = session.scalars(select(Candidate).order_by(Candidate.id).limit(2)).all()
        record_vote(session, task_id=pair[0].task_id, left_candidate_id=pair[0].id, right_candidate_id=pair[1].id,
                    choice="tie", client_submission_id="new-vote", provenance="demo", settings=app_store.settings)
    with app_store.factory() as session:
        assert board_due(session, settings=app_store.settings)
    assert refresh_board(app_store.factory, settings=app_store.settings) is not None


def test_a_promotion_leaves_a_board_with_every_candidates_mean_score(app_store, app_template):
    """After a promotion the worker scores every candidate and caches the board (`trainer.refresh`): the first view
    after it is a read, with a mean score for every generator."""
    _without_boards(app_store)
    refresh_after_publish(app_store.factory, model=JointRewardModel.load(app_template.version_dir),
                          version_id=app_store.version_id, promoted=True, settings=app_store.settings)
    add_users(app_store, ann="annotator")
    table = leaderboard_view(make_deps(app_store), as_user("ann")).table
    with app_store.factory() as session:
        assert table["candidates scored"].sum() == session.scalar(select(func.count()).select_from(Candidate))
    assert table["mean score"].notna().all()


def test_old_boards_are_deleted_beyond_the_few_kept(app_store):
    for _ in range(trainer.leaderboard_cache.KEEP_ROWS + 2):
        refresh_board(app_store.factory, settings=app_store.settings, n_bootstrap=10, force=True)
    with app_store.factory() as session:
        assert session.scalar(select(func.count()).select_from(LeaderboardCache)) == trainer.leaderboard_cache.KEEP_ROWS


def test_the_fit_holds_no_write_lock(app_store, monkeypatch):
    if app_store.backend != "sqlite":
        pytest.skip("the write lock is SQLite's")
    path = app_store.engine.url.database
    seen, real_rank = [], trainer.leaderboard_cache.rank

    def slow_rank(*args, **kwargs):
        def write() -> None:
            other = sqlite3.connect(path, timeout=1.0, isolation_level=None)
            try:
                other.execute("BEGIN IMMEDIATE")
                other.execute("UPDATE users SET active = active")
                other.execute("COMMIT")
                seen.append(True)
            except sqlite3.OperationalError:
                seen.append(False)
            finally:
                other.close()

        thread = threading.Thread(target=write)
        thread.start()
        thread.join()
        return real_rank(*args, **kwargs)

    monkeypatch.setattr(trainer.leaderboard_cache, "rank", slow_rank)
    refresh_board(app_store.factory, settings=app_store.settings, n_bootstrap=10, force=True)
    assert seen == [True]


def test_the_worker_schedules_the_board_at_start_and_every_refresh_interval(app_store):
    import dataclasses

    from apscheduler.schedulers.background import BackgroundScheduler

    from trainer import worker
    from trainer.worker.scheduler import LEADERBOARD_JOB, leaderboard_job

    _without_boards(app_store)
    settings = dataclasses.replace(app_store.settings, leaderboard_refresh_s=90.0)
    the_worker = worker.Worker(settings)
    handle = worker.WorkerHandle(the_worker, worker.build_scheduler(the_worker, BackgroundScheduler))
    try:
        job = handle.scheduler.get_job(LEADERBOARD_JOB, "local")
        assert str(job.trigger) == "interval[0:01:30]"
    finally:
        handle.stop()
    leaderboard_job(the_worker)  # what the job does: a board, computed because none was cached
    with app_store.factory() as session:
        assert session.scalar(select(func.count()).select_from(LeaderboardCache)) == 1
