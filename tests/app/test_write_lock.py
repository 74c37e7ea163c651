"""Slow work never holds SQLite's write lock: while it runs, another connection commits within a 1 s busy timeout."""

from __future__ import annotations

import asyncio
import sqlite3

import pytest
from sqlalchemy import event

import storage.users
from app.auth import LOCAL_USER, local_user, login_checker
from storage.db import READ_ONLY_OPTION, make_engine, session_factory, transaction, upgrade
from storage.users import create_user


@pytest.fixture
def store(settings):
    engine = make_engine(settings.resolved_database_url)
    upgrade(engine)
    yield session_factory(engine), settings.data_dir / "jrm.db"
    engine.dispose()


def commits_meanwhile(path) -> bool:
    """Whether a write from another connection commits within 1 s (False: something holds the write lock)."""
    other = sqlite3.connect(path, timeout=1.0, isolation_level=None)
    try:
        other.execute("BEGIN IMMEDIATE")
        other.execute("UPDATE users SET active = active")
        other.execute("COMMIT")
        return True
    except sqlite3.OperationalError as exc:
        assert "locked" in str(exc)
        return False
    finally:
        other.close()


def test_a_password_check_holds_no_write_lock(store, monkeypatch):
    factory, path = store
    with transaction(factory) as session:
        create_user(session, name="alice", role="annotator", password="correct horse")
    seen, verify = [], storage.users.verify_password

    def slow_verify(password, encoded):
        seen.append(commits_meanwhile(path))  # the slow part: scrypt
        return verify(password, encoded)

    monkeypatch.setattr(storage.users, "verify_password", slow_verify)
    assert asyncio.run(login_checker(factory)("alice", "correct horse")) is True
    assert seen == [True]


def test_local_mode_reads_its_user_without_a_write_transaction(store):
    factory, _ = store
    assert local_user(factory).name == LOCAL_USER  # the first call creates the local admin
    begun = []
    event.listen(factory.kw["bind"], "begin", lambda conn: begun.append(conn.get_execution_options()))
    local_user(factory)  # every later call: one read-only transaction (a plain BEGIN, no write lock)
    assert begun and all(options.get(READ_ONLY_OPTION) for options in begun)


def test_promote_and_rollback_hash_the_checkpoint_with_no_write_lock(app_store, shifted_model_dir, monkeypatch):
    import app.handlers.research as research
    from tests.app.conftest import publish_model_dir
    from tests.app.handler_support import add_users, as_user, make_deps

    if app_store.backend != "sqlite":
        pytest.skip("the write lock is SQLite's")
    add_users(app_store, res="researcher")
    deps = make_deps(app_store)
    _, second = publish_model_dir(app_store.factory, app_store.settings, shifted_model_dir, promote=False)
    seen, verify = [], research.verify_version_files

    def slow_verify(path):
        seen.append(commits_meanwhile(app_store.engine.url.database))
        return verify(path)

    monkeypatch.setattr(research, "verify_version_files", slow_verify)
    assert f"{second} is now active" in research.promote(deps, second, "looks better", as_user("res")).status
    assert "is active again" in research.roll_back(deps, as_user("res")).status
    assert seen == [True, True]
