"""Shared fixtures: settings in a temp folder, and a migrated store on SQLite and on PostgreSQL.

PostgreSQL tests run when JRM_TEST_POSTGRES_URL names a reachable server (CI sets it) and skip
otherwise. Each test gets its own PostgreSQL schema (dropped afterwards), or its own SQLite file.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from storage.db import create_scratch_schema, make_engine, session_factory, upgrade
from storage.settings import Settings, load_settings, postgres_required_in_tests, postgres_test_url

BACKENDS = ["sqlite", "postgresql"]


@pytest.fixture
def settings(tmp_path) -> Settings:
    return load_settings(environ={}, data_dir=tmp_path / "data")


def _postgres_url_or_skip() -> str:
    url = postgres_test_url()
    if not url:
        if postgres_required_in_tests():
            pytest.fail("JRM_TEST_REQUIRE_POSTGRES is set but JRM_TEST_POSTGRES_URL is not")
        pytest.skip("PostgreSQL tests need JRM_TEST_POSTGRES_URL (CI sets it)")
    probe = make_engine(url)
    try:
        with probe.connect():
            pass
    except Exception as exc:  # noqa: BLE001 - any connection failure means "no server here"
        if postgres_required_in_tests():
            pytest.fail(f"PostgreSQL at {url} is not reachable: {exc}")
        pytest.skip(f"PostgreSQL at {url} is not reachable: {exc.__class__.__name__}")
    finally:
        probe.dispose()
    return url


def make_test_engine(backend: str, settings: Settings) -> tuple[Engine, callable]:
    """A fresh, migrated store on `backend` and the function that tears it down."""
    if backend == "sqlite":
        engine = make_engine(settings.resolved_database_url)
        upgrade(engine)
        return engine, engine.dispose
    base_url = _postgres_url_or_skip()
    url, drop_schema = create_scratch_schema(base_url, prefix="t")
    engine = make_engine(url)
    upgrade(engine)

    def teardown() -> None:
        engine.dispose()
        drop_schema()

    return engine, teardown


@pytest.fixture(params=BACKENDS)
def engine(request, settings) -> Iterator[Engine]:
    engine, teardown = make_test_engine(request.param, settings)
    yield engine
    teardown()


@pytest.fixture
def db_url(engine) -> str:
    """The URL of the test store, for code that opens its own engine (CLI, subprocesses)."""
    return engine.url.render_as_string(hide_password=False)


@pytest.fixture
def factory(engine) -> sessionmaker[Session]:
    return session_factory(engine)


@pytest.fixture
def session(factory) -> Iterator[Session]:
    with factory() as session:
        yield session
