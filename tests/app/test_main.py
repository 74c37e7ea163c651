"""`python -m app` start-up: the bind guard, first-run seeding, and the log-in check before serving."""

from __future__ import annotations

import time

import pytest

from app.__main__ import check_exposure, has_login, main, prepare_store, should_seed_demo, start_scoring
from app.network import is_loopback
from storage.db import transaction
from storage.settings import load_settings
from storage.stats import dataset_stats
from storage.users import create_user


@pytest.mark.parametrize(("host", "loopback"), [("127.0.0.1", True), ("127.8.0.1", True), ("::1", True),
                                                ("localhost", True), ("0.0.0.0", False), ("192.168.1.4", False),
                                                ("example.org", False)])
def test_only_loopback_addresses_count_as_private(host, loopback):
    assert is_loopback(host) is loopback


def test_a_public_bind_without_log_in_is_refused_with_a_clear_message(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("JRM_DATA_DIR", str(tmp_path))
    monkeypatch.delenv("JRM_AUTH", raising=False)
    settings = load_settings(environ={}, data_dir=tmp_path, host="0.0.0.0")
    assert "Refusing to serve on 0.0.0.0 without authentication" in check_exposure(settings)
    assert check_exposure(load_settings(environ={}, data_dir=tmp_path, host="0.0.0.0", auth=True)) is None
    assert main(["--host", "0.0.0.0", "--port", "7999"]) == 2
    assert "--auth" in capsys.readouterr().err
    assert not (tmp_path / "jrm.db").exists()  # refused before touching the store


def test_first_start_seeds_the_demo_once_and_auth_needs_a_user_who_can_log_in(tmp_path):
    settings = load_settings(environ={}, data_dir=tmp_path, demo_tasks=2)
    factory = prepare_store(settings)
    with factory() as session:
        first = dataset_stats(session)
    assert first.tasks == 2 and first.votes > 0
    prepare_store(settings)  # a second start adds nothing
    with factory() as session:
        assert dataset_stats(session).tasks == 2
    assert not has_login(factory)  # simulated annotators have no password
    with transaction(factory) as session:
        create_user(session, name="alice", role="admin", password="pw")
    assert has_login(factory)


@pytest.mark.parametrize(
    ("overrides", "seeds"),
    [
        ({}, True),  # local mode: no log-in, a SQLite file
        ({"auth": True}, False),  # a store with log-in is a team's
        ({"database_url": "postgresql+psycopg://u@db/jrm"}, False),  # so is PostgreSQL
        ({"database_url": "postgresql+psycopg://u@db/jrm", "seed_demo": "yes"}, True),  # unless asked
        ({"seed_demo": "no"}, False),
    ],
)
def test_the_demo_is_seeded_only_in_local_mode_or_when_asked(tmp_path, overrides, seeds):
    assert should_seed_demo(load_settings(environ={}, data_dir=tmp_path, **overrides)) is seeds


def test_a_store_with_log_in_starts_empty(tmp_path):
    factory = prepare_store(load_settings(environ={}, data_dir=tmp_path, demo_tasks=2, auth=True))
    with factory() as session:
        assert dataset_stats(session).tasks == 0


def test_a_bad_seed_demo_value_is_one_line_and_exit_2(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("JRM_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("JRM_SEED_DEMO", "sometimes")
    assert main([]) == 2
    assert "JRM_SEED_DEMO='sometimes' is not one of auto, yes, no" in capsys.readouterr().err
    assert not (tmp_path / "jrm.db").exists()


def test_the_scorer_of_python_m_app_settles_the_heap_after_each_model_swap(app_store, monkeypatch):
    settled = []
    monkeypatch.setattr("app.__main__.settle", lambda: settled.append(True))
    service = start_scoring(app_store.factory, app_store.settings)
    try:
        deadline = time.monotonic() + 60
        while service.version is None:
            assert time.monotonic() < deadline, "the active version was never loaded"
            time.sleep(0.02)
    finally:
        service.stop()  # joins the poller, which calls the hook right after the swap
    assert settled == [True]
