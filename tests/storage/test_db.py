import threading

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import sessionmaker

from storage.db import engine_of, session_factory, transaction
from storage.models import User


def test_read_only_session_does_not_block_writers(engine):
    """A long read (an export) must not hold SQLite's write lock while annotators vote."""
    reader = session_factory(engine, read_only=True)
    writer = session_factory(engine)
    done = threading.Event()
    with reader() as session, session.begin():
        assert session.scalar(select(func.count(User.id))) == 0

        def write() -> None:
            with transaction(writer) as w:
                w.add(User(name="voter", role="annotator"))
            done.set()

        thread = threading.Thread(target=write)
        thread.start()
        assert done.wait(timeout=10), "a writer waited on an open read-only transaction"
        thread.join()
    with reader() as session:
        assert session.scalar(select(func.count(User.id))) == 1


def test_engine_of_names_the_engine_behind_a_factory_and_refuses_an_unbound_one(engine):
    assert engine_of(session_factory(engine)) is engine
    assert engine_of(session_factory(engine, read_only=True)).url == engine.url  # the read-only view of it
    with pytest.raises(TypeError, match="not bound to an engine"):
        engine_of(sessionmaker())
